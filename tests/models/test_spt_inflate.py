"""SPT geometry, and loading weights: image -> video inflation and classifier heads of another size."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import create_model, load_pretrained
from pipeline.models.spt_lsa import SHIFT_NAMES, ShiftedPatchTokenizer

# where a pixel at (y, x) lands in each shifted copy: copy[y', x'] = image[y' + dy, x' + dx]
MOVES = {"left-up": (-1, -1), "right-up": (-1, 1), "left-down": (1, -1), "right-down": (1, 1)}


@pytest.mark.parametrize("video", [False, True])
def test_spt_pixel_lands_in_expected_group_and_position(video: bool) -> None:
    patch, chans, size = 4, 3, 16
    tokenizer = ShiftedPatchTokenizer(chans, 8, patch, tubelet_size=2 if video else None)
    shift = tokenizer.shift
    assert shift == 2
    y, x, channel, frame = 7, 9, 1, 3
    image = torch.zeros(1, chans, 4, size, size) if video else torch.zeros(1, chans, size, size)
    image[(0, channel, frame, y, x) if video else (0, channel, y, x)] = 1.0
    features, grid = tokenizer.patch_features(image)
    assert grid == ((2, 4, 4) if video else (4, 4))
    assert features.shape == (1, 16 * (2 if video else 1), 5 * chans * patch * patch * (2 if video else 1))
    assert features.sum() == 5  # the pixel once in the original and once in each shifted copy
    steps = 2 if video else 1
    for group, name in enumerate(("original", *SHIFT_NAMES)):
        dy, dx = MOVES.get(name, (0, 0))
        ty, tx = y + dy * shift, x + dx * shift
        token = ty // patch * 4 + tx // patch + (frame // 2) * 16 * int(video)
        inner = (frame % 2) * patch * patch if video else 0
        index = (group * chans + channel) * steps * patch * patch + inner + (ty % patch) * patch + tx % patch
        assert features[0, token, index] == 1.0, name


def test_spt_rejects_sizes_it_cannot_cut() -> None:
    tokenizer = ShiftedPatchTokenizer(3, 8, 4)
    with pytest.raises(ValueError, match=r"\(18, 16\) is not divisible by the patch \(4, 4\)"):
        tokenizer(torch.zeros(1, 3, 18, 16))


@pytest.mark.parametrize("spt", [False, True])
def test_image_weights_inflate_into_video_model(spt: bool, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    image_model = create_model("structvit_tiny_4_2", 10, img_size=32, spt=spt)
    video_model = create_model("structvit_tiny_4_2", 5, num_frames=4, img_size=32, spt=spt)
    report = load_pretrained(video_model, image_model.state_dict())
    assert report.reinitialised == ["head.bias", "head.weight"] and not report.missing
    assert any(
        "re-initialised classifier head" in line and "(10, 128)" in line
        for line in capsys.readouterr().err.splitlines()
    )
    image_state, video_state = image_model.state_dict(), video_model.state_dict()
    kernel = "blocks3.0.attn.k_conv.weight"
    assert kernel in report.inflated
    torch.testing.assert_close(video_state[kernel], image_state[kernel][:, :, None].repeat(1, 1, 3, 1, 1) / 3)
    # a clip of identical frames gives the image's stem response (tubelet SPT exactly; the conv stem
    # away from its temporal zero padding)
    image = torch.randn(1, 3, 32, 32)
    clip = image[:, :, None].repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        image_tokens = image_model.patch_embed1(image)
        clip_tokens = video_model.patch_embed1(clip)
    torch.testing.assert_close(clip_tokens[:, :, 1], image_tokens, rtol=1e-5, atol=1e-5)


def test_video_checkpoint_with_other_classes(capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(1)
    kinetics = create_model("structvit_tiny_4_1", 400, num_frames=4, img_size=32)
    target = create_model("structvit_tiny_4_1", 48, num_frames=4, img_size=32)
    head_before = target.head.weight.detach().clone()
    report = load_pretrained(target, {"model": kinetics.state_dict()})
    assert not report.inflated and report.reinitialised == ["head.bias", "head.weight"]
    said = capsys.readouterr().err
    assert "[init] re-initialised classifier head" in said and "(400, 128) -> model (48, 128)" in said
    assert not torch.equal(target.head.weight, head_before)  # re-drawn, not left as it was
    assert target.head.weight.std() < 0.05 and torch.all(target.head.bias == 0)
    torch.testing.assert_close(target.blocks3[0].attn.k_conv.weight, kinetics.blocks3[0].attn.k_conv.weight)


def test_uniformer_weights_load_into_structvit_and_bad_shapes_fail() -> None:
    uniformer = create_model("uniformer_tiny", 10, img_size=32)
    structured = create_model("structvit_tiny_4_1", 10, img_size=32)
    report = load_pretrained(structured, uniformer.state_dict())
    assert report.initialised and all("k_conv" in key or "v_conv" in key for key in report.initialised)
    assert not report.missing and len(report.loaded) == len(uniformer.state_dict())
    wider = create_model("structvit_tiny_4_1", 10, img_size=32, dims=(16, 32, 64, 256))
    with pytest.raises(ValueError, match=r"shapes that neither match nor inflate: blocks4\.0\.\S+ \(\d+"):
        load_pretrained(wider, structured.state_dict())
    report = load_pretrained(wider, structured.state_dict(), strict=False)
    assert report.skipped and report.loaded
    with pytest.raises(ValueError, match="no checkpoint key matches"):
        load_pretrained(structured, {"other.weight": torch.zeros(1)})


def test_vit_position_embedding_inflates_per_tubelet() -> None:
    image_model = create_model("vit_tiny_spt_lsa", 10, img_size=32, depth=1)
    video_model = create_model("vit_tiny_spt_lsa", 10, num_frames=4, img_size=32, depth=1)
    report = load_pretrained(video_model, image_model.state_dict())
    assert "pos_embed" in report.inflated and "patch_embed.proj.weight" in report.inflated
    pos = video_model.pos_embed.detach()
    torch.testing.assert_close(pos[:, 1:65], image_model.pos_embed.detach()[:, 1:])
    torch.testing.assert_close(pos[:, 65:], pos[:, 1:65])
