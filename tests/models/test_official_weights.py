"""Official UniFormer checkpoints: key-for-key layout, both file layouts, and the official forward.

The official layouts are written here from Sense-X/UniFormer's model code (image_classification/
models/uniformer.py, the token-labeling uniformer_large_ls, video_classification/slowfast/models/
uniformer.py), not derived from our model: `official_shapes` lists every tensor an official
checkpoint holds, and `official_forward` evaluates the official network literally from a state
dict. Checkpoints are synthetic (random tensors in the official names and shapes) and wrapped
as the official files are: `{'model': sd}` (ImageNet, DeiT style) and PySlowFast's
`{'model_state': sd, 'epoch', 'optimizer_state', 'cfg'}` (Kinetics / SSv2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import create_model, load_pretrained
from pipeline.models.inflate import read_weights

TINY = {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128), "head_dim": 16}
SIZES = {  # the official uniformer_small / _base / _large_ls (head_dim 64 throughout)
    "s": ((3, 4, 8, 3), (64, 128, 320, 512), False),
    "b": ((5, 8, 20, 7), (64, 128, 320, 512), False),
    "l": ((5, 10, 24, 7), (128, 192, 448, 640), True),
}


def official_shapes(
    depths: Sequence[int],
    dims: Sequence[int],
    *,
    video: bool,
    layer_scale: bool = False,
    token_head: bool = False,
    num_classes: int = 1000,
    in_chans: int = 3,
) -> dict[str, tuple[int, ...]]:
    """Every tensor of an official UniFormer state dict and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def norm(prefix: str, dim: int, batch: bool) -> None:
        shapes.update({f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)})
        if batch:
            shapes.update({f"{prefix}.running_mean": (dim,), f"{prefix}.running_var": (dim,)})
            shapes[f"{prefix}.num_batches_tracked"] = ()

    for stage in range(4):
        c_in, c = (in_chans if stage == 0 else dims[stage - 1]), dims[stage]
        if stage == 0:  # video stem conv_3xnxn: (3, 4, 4) kernel; image: 4 x 4
            stem = (c, c_in, 3, 4, 4) if video else (c, c_in, 4, 4)
        else:  # conv_1xnxn (1, 2, 2) for video, 2 x 2 for images
            stem = (c, c_in, 1, 2, 2) if video else (c, c_in, 2, 2)
        shapes[f"patch_embed{stage + 1}.proj.weight"] = stem
        shapes[f"patch_embed{stage + 1}.proj.bias"] = (c,)
        norm(f"patch_embed{stage + 1}.norm", c, batch=False)
        for block in range(depths[stage]):
            p = f"blocks{stage + 1}.{block}"
            shapes[f"{p}.pos_embed.weight"] = (c, 1, *((3, 3, 3) if video else (3, 3)))
            shapes[f"{p}.pos_embed.bias"] = (c,)
            ones = (1, 1, 1) if video else (1, 1)
            if stage < 2:  # CBlock
                norm(f"{p}.norm1", c, batch=True)
                norm(f"{p}.norm2", c, batch=True)
                shapes.update({f"{p}.conv1.weight": (c, c, *ones), f"{p}.conv1.bias": (c,)})
                shapes.update({f"{p}.conv2.weight": (c, c, *ones), f"{p}.conv2.bias": (c,)})
                five = (5, 5, 5) if video else (5, 5)
                shapes.update({f"{p}.attn.weight": (c, 1, *five), f"{p}.attn.bias": (c,)})
                shapes.update({f"{p}.mlp.fc1.weight": (4 * c, c, *ones), f"{p}.mlp.fc1.bias": (4 * c,)})
                shapes.update({f"{p}.mlp.fc2.weight": (c, 4 * c, *ones), f"{p}.mlp.fc2.bias": (c,)})
                gamma = (1, c, *ones)
            else:  # SABlock
                norm(f"{p}.norm1", c, batch=False)
                norm(f"{p}.norm2", c, batch=False)
                shapes.update({f"{p}.attn.qkv.weight": (3 * c, c), f"{p}.attn.qkv.bias": (3 * c,)})
                shapes.update({f"{p}.attn.proj.weight": (c, c), f"{p}.attn.proj.bias": (c,)})
                shapes.update({f"{p}.mlp.fc1.weight": (4 * c, c), f"{p}.mlp.fc1.bias": (4 * c,)})
                shapes.update({f"{p}.mlp.fc2.weight": (c, 4 * c), f"{p}.mlp.fc2.bias": (c,)})
                gamma = (c,)
            if layer_scale:
                shapes[f"{p}.gamma_1"] = shapes[f"{p}.gamma_2"] = gamma
    norm("norm", dims[3], batch=True)
    shapes.update({"head.weight": (num_classes, dims[3]), "head.bias": (num_classes,)})
    if token_head:
        shapes.update({"aux_head.weight": (num_classes, dims[3]), "aux_head.bias": (num_classes,)})
    return shapes


def random_official_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout (positive running variances, non-trivial gains)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 16
            state[key] = torch.randn(shape, generator=generator, dtype=torch.float64) / math.sqrt(fan_in)
    return state


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor, depths: Sequence[int], head_dim: int):
    """The official UniFormer forward in eval mode, written literally from its code, on a state dict."""
    video = x.ndim == 5
    conv = F.conv3d if video else F.conv2d
    s = state

    def layer_norm(t: torch.Tensor, prefix: str, eps: float) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], s[f"{prefix}.weight"], s[f"{prefix}.bias"], eps)

    def batch_norm(t: torch.Tensor, prefix: str) -> torch.Tensor:
        stats = (
            s[f"{prefix}.running_mean"],
            s[f"{prefix}.running_var"],
            s[f"{prefix}.weight"],
            s[f"{prefix}.bias"],
        )
        return F.batch_norm(t, *stats, training=False, eps=1e-5)

    def gain(prefix: str, which: str) -> torch.Tensor | float:
        return s.get(f"{prefix}.gamma_{which}", 1.0)

    for stage in range(4):
        weight = s[f"patch_embed{stage + 1}.proj.weight"]
        if video and stage == 0:  # conv_3xnxn: stride (2, 4, 4), padding (1, 0, 0)
            x = conv(x, weight, s["patch_embed1.proj.bias"], stride=(2, 4, 4), padding=(1, 0, 0))
        else:
            x = conv(x, weight, s[f"patch_embed{stage + 1}.proj.bias"], stride=weight.shape[2:])
        x = layer_norm(x.movedim(1, -1), f"patch_embed{stage + 1}.norm", 1e-5).movedim(-1, 1)
        channels = x.shape[1]
        for block in range(depths[stage]):
            p = f"blocks{stage + 1}.{block}"
            x = x + conv(x, s[f"{p}.pos_embed.weight"], s[f"{p}.pos_embed.bias"], padding=1, groups=channels)
            if stage < 2:
                y = conv(batch_norm(x, f"{p}.norm1"), s[f"{p}.conv1.weight"], s[f"{p}.conv1.bias"])
                y = conv(y, s[f"{p}.attn.weight"], s[f"{p}.attn.bias"], padding=2, groups=channels)
                x = x + gain(p, "1") * conv(y, s[f"{p}.conv2.weight"], s[f"{p}.conv2.bias"])
                y = F.gelu(
                    conv(batch_norm(x, f"{p}.norm2"), s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"])
                )
                x = x + gain(p, "2") * conv(y, s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"])
                continue
            shape = x.shape
            t = x.flatten(2).transpose(1, 2)
            batch, tokens, _ = t.shape
            heads = channels // head_dim
            qkv = F.linear(
                layer_norm(t, f"{p}.norm1", 1e-6), s[f"{p}.attn.qkv.weight"], s[f"{p}.attn.qkv.bias"]
            )
            q, k, v = qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            attention = ((q @ k.transpose(-2, -1)) * head_dim**-0.5).softmax(dim=-1)
            y = (attention @ v).transpose(1, 2).reshape(batch, tokens, channels)
            t = t + gain(p, "1") * F.linear(y, s[f"{p}.attn.proj.weight"], s[f"{p}.attn.proj.bias"])
            y = F.gelu(
                F.linear(layer_norm(t, f"{p}.norm2", 1e-6), s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"])
            )
            t = t + gain(p, "2") * F.linear(y, s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"])
            x = t.transpose(1, 2).reshape(shape)
    tokens = batch_norm(x, "norm").flatten(2).transpose(1, 2)
    logits = F.linear(tokens.mean(1), s["head.weight"], s["head.bias"])
    if "aux_head.weight" in s:  # token-labeling models at inference: x_cls + 0.5 * x_aux.max(1)
        logits = logits + 0.5 * F.linear(tokens, s["aux_head.weight"], s["aux_head.bias"]).max(1)[0]
    return logits


def official_video_file(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """What PySlowFast's save_checkpoint writes."""
    return {
        "epoch": 110,
        "model_state": state,
        "optimizer_state": {"state": {}},
        "cfg": "MODEL:\n  ARCH: uniformer\n",
    }


# no official UniFormer-L video model exists: video L starts from the inflated image L (tested below)
@pytest.mark.parametrize(
    ("size", "video"), [("s", False), ("b", False), ("l", False), ("s", True), ("b", True)]
)
def test_official_layout_matches_key_for_key(size: str, video: bool) -> None:
    depths, dims, large = SIZES[size]
    official = official_shapes(depths, dims, video=video, layer_scale=large, token_head=large)
    frames = 16 if video else None
    with torch.device("meta"):
        uniformer = create_model(f"uniformer_{size}", 1000, num_frames=frames, token_head=large)
        structured = create_model(f"structvit_{size}_4_1", 1000, num_frames=frames, token_head=large)
    ours = {key: tuple(value.shape) for key, value in uniformer.state_dict().items()}
    assert ours == official
    extra = {k: tuple(v.shape) for k, v in structured.state_dict().items() if k not in official}
    assert all(k.endswith(("attn.k_conv.weight", "attn.v_conv.weight")) for k in extra) and len(
        extra
    ) == 2 * sum(depths[2:])
    assert {k: tuple(v.shape) for k, v in structured.state_dict().items() if k in official} == official


@pytest.mark.parametrize(("layer_scale", "token_head"), [(False, False), (True, True)])
def test_image_checkpoint_loads_exactly_and_computes_the_official_model(
    tmp_path, layer_scale, token_head
) -> None:
    state = random_official_state(
        official_shapes(
            TINY["depths"], TINY["dims"], video=False, layer_scale=layer_scale, token_head=token_head
        ),
        seed=0,
    )
    # the DeiT-style training script stores its argparse namespace next to the weights
    torch.save({"model": state, "args": argparse.Namespace(model="uniformer_small")}, tmp_path / "in1k.pth")
    checkpoint = read_weights(str(tmp_path / "in1k.pth"))
    options = {"layer_scale": 1e-6 if layer_scale else None, "token_head": token_head}
    model = create_model("uniformer_tiny", 1000, img_size=64, **options).double().eval()
    report = load_pretrained(model, checkpoint)
    assert sorted(report.loaded) == sorted(state) and not (report.inflated or report.initialised)
    image = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            model(image), official_forward(state, image, TINY["depths"], 16), rtol=1e-9, atol=1e-9
        )


def test_video_checkpoint_pyslowfast_layout_loads_exactly(tmp_path) -> None:
    state = random_official_state(
        official_shapes(TINY["depths"], TINY["dims"], video=True, num_classes=400), 1
    )
    torch.save(official_video_file(state), tmp_path / "k400.pyth")
    checkpoint = torch.load(
        tmp_path / "k400.pyth", map_location="cpu", weights_only=True
    )  # the trainer's call
    model = create_model("uniformer_tiny", 400, num_frames=4, img_size=64).double().eval()
    report = load_pretrained(model, checkpoint)
    assert sorted(report.loaded) == sorted(state) and not report.initialised
    clip = torch.randn(2, 3, 4, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            model(clip), official_forward(state, clip, TINY["depths"], 16), rtol=1e-9, atol=1e-9
        )


@pytest.mark.parametrize("layer_scale", [False, True])  # True: video L from uniformer_large_ls
def test_image_checkpoint_inflates_as_the_official_video_code_does(layer_scale: bool) -> None:
    shapes = {"depths": TINY["depths"], "dims": TINY["dims"], "layer_scale": layer_scale}
    image_state = random_official_state(official_shapes(**shapes, video=False), 2)
    video_shapes = official_shapes(**shapes, video=True, num_classes=400)
    gain = 1e-6 if layer_scale else None
    model = create_model("uniformer_tiny", 400, num_frames=4, img_size=64, layer_scale=gain).double()
    report = load_pretrained(model, {"model": image_state})
    # UniFormer's get_pretrained_model: a kernel of another shape is repeated over time / T;
    # the 1000-class head is dropped (re-initialised here)
    for key, shape in video_shapes.items():
        if key.startswith("head."):
            assert key in report.reinitialised
        elif tuple(image_state[key].shape) != shape:
            expected = image_state[key].unsqueeze(2).repeat(1, 1, shape[2], 1, 1) / shape[2]
            torch.testing.assert_close(model.state_dict()[key], expected, rtol=0, atol=0)
            assert key in report.inflated
        else:
            assert torch.equal(model.state_dict()[key], image_state[key])
    assert len(report.inflated) == sum(1 for k in image_state if image_state[k].ndim == 4)


@pytest.mark.parametrize("video", [False, True])
def test_fresh_structvit_from_official_weights_computes_that_uniformer(video: bool) -> None:
    state = random_official_state(official_shapes(TINY["depths"], TINY["dims"], video=video), 3)
    frames = 4 if video else None
    x = (
        torch.randn(2, 3, 4, 64, 64, dtype=torch.float64)
        if video
        else torch.randn(2, 3, 64, 64, dtype=torch.float64)
    )
    torch.manual_seed(0)
    structured = create_model("structvit_tiny_4_1", 1000, num_frames=frames, img_size=64).double().eval()
    report = load_pretrained(structured, {"model_state": state} if video else {"model": state})
    assert sorted(report.loaded) == sorted(state)
    assert report.initialised and all(
        k.endswith(("k_conv.weight", "v_conv.weight")) for k in report.initialised
    )
    official = official_forward(state, x, TINY["depths"], 16)
    with torch.no_grad():
        at_init = structured(x)
        # the init noise (trunc-normal 0.02 on the kernels) is the only difference
        assert 0 < (at_init - official).abs().max() < 0.05 * official.abs().max()
        for block in (*structured.blocks3, *structured.blocks4):
            for conv in (block.attn.k_conv, block.attn.v_conv):
                conv.weight.zero_()
                conv.weight[(slice(None), 0, *(k // 2 for k in conv.kernel_size))] = 1.0
        torch.testing.assert_close(structured(x), official, rtol=1e-9, atol=1e-9)


def test_checkpoint_that_does_not_fit_is_one_line_naming_keys() -> None:
    model = create_model("uniformer_tiny", 1000, img_size=64)
    state = random_official_state(official_shapes(TINY["depths"], TINY["dims"], video=False), 4)
    # UniFormer's video SplitSABlock (t_attn / t_norm) and its overlapping conv stem (uniformer_small_plus)
    state["blocks3.0.t_attn.qkv.weight"] = torch.zeros(192, 64)
    state["patch_embed1.proj.0.weight"] = state.pop("patch_embed1.proj.weight")
    state["blocks4.0.attn.qkv.weight"] = torch.zeros(3 * 128, 96)
    with pytest.raises(ValueError) as error:
        load_pretrained(model, {"model": state})
    message = str(error.value)
    assert "\n" not in message
    unexpected = "blocks3.0.t_attn.qkv.weight, patch_embed1.proj.0.weight"
    assert f"2 checkpoint tensors the model does not have: {unexpected}" in message
    assert "1 model tensors the checkpoint lacks: patch_embed1.proj.weight" in message
    assert "blocks4.0.attn.qkv.weight (384, 96) vs model (384, 128)" in message
    # a token-labeling checkpoint into a model without the token head: its aux_head is not silently dropped
    state = random_official_state(
        official_shapes(TINY["depths"], TINY["dims"], video=False, token_head=True), 5
    )
    with pytest.raises(ValueError, match=r"does not have: aux_head\.bias, aux_head\.weight"):
        load_pretrained(model, {"model": state})
    # ... unless the classifiers are replaced anyway (fine-tuning on another label set)
    kinetics = create_model("uniformer_tiny", 400, num_frames=4, img_size=64)
    report = load_pretrained(kinetics, {"model": state})
    assert report.discarded == ["aux_head.bias", "aux_head.weight"]
    assert report.reinitialised == ["head.bias", "head.weight"]
    assert len(report.loaded) + len(report.inflated) == len(state) - 4
