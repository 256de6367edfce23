"""Multi-view evaluation: average each video's view probabilities, then top-1 / top-5 / mean per-class.

`evaluate()` serves the live DeepSpeed engine inside training (every rank runs it) and plain exported
weights in one process: `python -m pipeline.train.evaluate --config RUN/config.yaml --weights
RUN/export/model.pt` (no DeepSpeed involved).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from pipeline.config import ConfigError
from pipeline.data.batch import Batch
from pipeline.data.loader import build_eval_loader
from pipeline.errors import RunError, report
from pipeline.models.exported import load_exported
from pipeline.train.config import load_train_config


@dataclass
class EvalResult:
    """Video-level accuracies in percent, over `num_videos` videos seen as `num_views` views, and the
    (K, K) confusion counts of their top-1 predictions (true class, predicted class) for the pictures."""

    top1: float
    top5: float
    mean_class_top1: float
    num_videos: int
    num_views: int
    confusion: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def scalars(self, mean_class: bool) -> dict[str, float]:
        """TensorBoard scalars (`val/...`)."""
        out = {"val/top1": self.top1, "val/top5": self.top5}
        if mean_class:
            out["val/mean_class_top1"] = self.mean_class_top1
        return out


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    across_ranks: bool = False,
) -> EvalResult:
    """Run `forward` over evaluation batches; with `across_ranks` every rank's videos are merged.

    The loader gives every rank the same number of full batches (ZeRO-3 gathers parameters
    collectively in forward); rows with view -1 are padding. A video's views may come in different
    batches; its prediction is the mean of their softmax probabilities. With `across_ranks` (a
    collective) every rank returns the same result.
    """
    per_video: dict[str, tuple[torch.Tensor, int, int]] = {}
    for batch in batches:
        logits = forward(batch.inputs.to(device=device, dtype=dtype, non_blocking=True))
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        rows = zip(batch.key, batch.label.tolist(), batch.view.tolist(), probs, strict=True)
        for key, label, view, prob in rows:
            if view < 0:
                continue
            total, _, views = per_video.get(key, (torch.zeros_like(prob), label, 0))
            per_video[key] = (total + prob, label, views + 1)
    parts = [per_video]
    if across_ranks:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, per_video)
    merged: dict[str, tuple[torch.Tensor, int, int]] = {}
    for part in parts:
        for key, (total, label, views) in part.items():
            if key in merged:  # the loader puts a video's views on one rank; merge anyway if not
                previous = merged[key]
                total, views = total + previous[0], views + previous[2]
            merged[key] = (total, label, views)
    return video_accuracy(merged)


def video_accuracy(per_video: dict[str, tuple[torch.Tensor, int, int]]) -> EvalResult:
    """Accuracies of summed view probabilities per video (key -> (prob sum, label, views))."""
    if not per_video:
        raise RuntimeError("evaluation saw no videos")
    scores = torch.stack([total for total, _, _ in per_video.values()])
    labels = torch.tensor([label for _, label, _ in per_video.values()])
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(dim=1)
    per_class = [hit1[labels == c].float().mean() for c in labels.unique()]
    confusion = torch.zeros(scores.shape[1], scores.shape[1], dtype=torch.long)
    confusion.index_put_((labels, top[:, 0]), torch.ones_like(labels), accumulate=True)
    return EvalResult(
        top1=100.0 * hit1.float().mean().item(),
        top5=100.0 * hit5.float().mean().item(),
        mean_class_top1=100.0 * torch.stack(per_class).mean().item(),
        num_videos=len(per_video),
        num_views=sum(views for _, _, views in per_video.values()),
        confusion=confusion,
    )


def evaluate_exported(config_path: str, weights: str, overrides: list[str]) -> EvalResult:
    """Evaluate exported weights in this process on the config's validation shards, without DeepSpeed."""
    cfg = load_train_config(config_path, overrides, world_size=1)
    try:
        model = load_exported(weights)
    except ConfigError as err:
        raise ConfigError(f"--weights: {err}") from None
    loader = build_eval_loader(cfg.data, rank=0, world_size=1)
    return evaluate(model, loader, torch.device("cpu"))


def main(argv: list[str] | None = None) -> int:
    """CLI: print the evaluation of exported weights as one JSON line (exit 2 on a bad config)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="the run's config.yaml")
    parser.add_argument("--weights", required=True, help="exported model.pt (model.json next to it)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.workers=0")
    args = parser.parse_args(argv)
    try:
        result = evaluate_exported(args.config, args.weights, args.overrides)
    except RunError as err:
        return report(err)
    print(json.dumps({k: v for k, v in asdict(result).items() if k != "confusion"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
