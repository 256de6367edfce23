"""StructViT model zoo: StructSA, StructViT / UniFormer (image + video), ViT with SPT / LSA."""

from pipeline.models import structvit, vit  # noqa: F401  (importing registers the variants)
from pipeline.models.inflate import load_pretrained
from pipeline.models.registry import create_model, list_models

__all__ = ["create_model", "list_models", "load_pretrained"]
