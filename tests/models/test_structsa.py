"""StructSA: the fused fast form against the paper's literal definition, and its special cases."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.spt_lsa import lsa_keep_mask
from pipeline.models.structsa import MultiHeadAttention, StructSA, attend, structsa_reference
from pipeline.models.summary import peak_memory_bytes

CASES = [
    # (video, grid, structure_dim, kernel, stride, lsa)
    (False, (5, 7), 1, 3, 1, False),
    (False, (5, 7), 4, 3, 2, False),
    (False, (6, 6), 2, 5, 1, True),
    (False, (5, 7), 8, 1, 2, True),
    (True, (3, 5, 6), 1, 3, 1, False),
    (True, (2, 5, 5), 4, 3, 2, True),
    (True, (3, 4, 5), 2, 5, 1, False),
    (True, (2, 6, 6), 8, 3, 1, True),
]


def _random_structsa(
    video: bool,
    depth: int,
    kernel: int,
    stride: int,
    lsa: bool,
    correlation: str = "channel",
    aggregation: str = "channel",
) -> StructSA:
    module = StructSA(
        8,
        2,
        video=video,
        structure_dim=depth,
        kernel_size=kernel,
        stride=stride,
        lsa=lsa,
        correlation=correlation,
        aggregation=aggregation,
    ).double()
    with torch.no_grad():  # generic kernels (not the near-identity init) and non-trivial temperatures
        module.k_conv.weight.normal_()
        module.v_conv.weight.normal_()
        if lsa:
            module.temperature.uniform_(0.2, 0.6)
    return module


@pytest.mark.parametrize(("video", "grid", "depth", "kernel", "stride", "lsa"), CASES)
def test_fast_form_equals_literal_definition(video, grid, depth, kernel, stride, lsa) -> None:
    torch.manual_seed(0)
    module = _random_structsa(video, depth, kernel, stride, lsa)
    x = torch.randn(2, math.prod(grid), 8, dtype=torch.float64, requires_grad=True)
    fast = module(x, grid)
    reference = structsa_reference(module, x, grid)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)

    upstream = torch.randn_like(fast)
    params = [x, *module.parameters()]
    fast_grads = torch.autograd.grad(fast, params, upstream)
    reference_grads = torch.autograd.grad(reference, params, upstream)
    for got, expected in zip(fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


# the paper's ablation forms (appendix A.1): dot-product correlation with U^K shared by all channels,
# context aggregation with U^V shared by all channels, element-wise aggregation with u^V
ABLATIONS = [
    # (correlation, aggregation, video, grid, structure_dim, kernel, stride, lsa)
    ("dot", "shared", False, (5, 7), 4, 3, 1, False),
    ("dot", "shared", True, (2, 5, 5), 2, 5, 2, True),
    ("channel", "shared", False, (6, 6), 4, 5, 1, False),
    ("channel", "shared", True, (3, 4, 5), 1, 3, 1, True),
    ("channel", "element", False, (5, 7), 4, 3, 2, True),
    ("channel", "element", True, (3, 5, 6), 8, 3, 1, False),
    ("dot", "element", False, (6, 5), 2, 5, 1, False),
    ("dot", "channel", True, (2, 6, 6), 4, 3, 2, False),
]


@pytest.mark.parametrize(
    ("correlation", "aggregation", "video", "grid", "depth", "kernel", "stride", "lsa"), ABLATIONS
)
def test_ablation_forms_equal_their_literal_definition(
    correlation, aggregation, video, grid, depth, kernel, stride, lsa
) -> None:
    torch.manual_seed(8)
    module = _random_structsa(video, depth, kernel, stride, lsa, correlation, aggregation)
    shared_taps = kernel ** len(grid)
    assert module.k_conv.weight.shape == (
        (depth, 1, *[kernel] * len(grid)) if correlation == "dot" else (8 * depth, 1, *[kernel] * len(grid))
    )
    value_taps = {"channel": 8 * depth * shared_taps, "shared": depth * shared_taps, "element": depth}
    assert module.v_conv.weight.numel() == value_taps[aggregation]
    x = torch.randn(2, math.prod(grid), 8, dtype=torch.float64, requires_grad=True)
    fast = module(x, grid)
    reference = structsa_reference(module, x, grid)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(fast)
    params = [x, *module.parameters()]
    for got, expected in zip(
        torch.autograd.grad(fast, params, upstream),
        torch.autograd.grad(reference, params, upstream),
        strict=True,
    ):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("correlation", "aggregation"), [("dot", "shared"), ("channel", "element")])
def test_ablation_forms_start_as_plain_attention(correlation: str, aggregation: str) -> None:
    # centre-tap kernels without the init noise: D identical copies, exactly plain attention
    torch.manual_seed(9)
    structured = StructSA(
        16, 2, video=False, structure_dim=4, correlation=correlation, aggregation=aggregation
    )
    plain = MultiHeadAttention(16, 2)
    plain.load_state_dict({k: v for k, v in structured.state_dict().items() if "conv" not in k})
    with torch.no_grad():
        for conv in (structured.k_conv, structured.v_conv):
            conv.weight.zero_()
            conv.weight[(slice(None), 0, *(k // 2 for k in conv.kernel_size))] = 1.0
    x = torch.randn(2, 25, 16)
    torch.testing.assert_close(structured(x, (5, 5)), plain(x, (5, 5)), rtol=1e-5, atol=1e-6)


def test_naive_path_equals_fused_path() -> None:
    torch.manual_seed(1)
    module = _random_structsa(True, 4, 3, 2, True)
    x = torch.randn(2, 2 * 5 * 5, 8, dtype=torch.float64)
    fused = module(x, (2, 5, 5))
    module.fused = False
    torch.testing.assert_close(module(x, (2, 5, 5)), fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("video", [False, True])
def test_one_structure_copy_with_centre_kernel_is_plain_attention(video: bool) -> None:
    torch.manual_seed(2)
    grid = (3, 4, 5) if video else (6, 5)
    structured = StructSA(16, 4, video=video, structure_dim=1, kernel_size=3, stride=1).double()
    plain = MultiHeadAttention(16, 4).double()
    plain.load_state_dict({k: v for k, v in structured.state_dict().items() if "conv" not in k})
    with torch.no_grad():
        for conv in (structured.k_conv, structured.v_conv):
            conv.weight.zero_()
            conv.weight[(slice(None), 0, *([1] * len(grid)))] = 1.0
    x = torch.randn(3, math.prod(grid), 16, dtype=torch.float64)
    torch.testing.assert_close(structured(x, grid), plain(x, grid), rtol=1e-12, atol=1e-12)


def test_parameter_layout_of_structure_kernels() -> None:
    module = StructSA(6, 2, video=True, structure_dim=4, kernel_size=3, stride=2)
    assert module.k_conv.weight.shape == (24, 1, 3, 3, 3)
    assert module.v_conv.weight.shape == (24, 1, 3, 3, 3)
    assert module.k_conv.groups == 6 and module.k_conv.bias is None
    assert module.k_conv.stride == (1, 2, 2)  # video stride is spatial only
    # channel c = 1, copy d = 2 lives at output channel c * D + d: a kernel there moves only that copy
    with torch.no_grad():
        module.k_conv.weight.zero_()
        module.k_conv.weight[1 * 4 + 2, 0, 1, 1, 1] = 1.0
    maps = torch.randn(1, 2, 3, 3, 4, 4)  # (B, heads, head_dim, T, H, W) as q/k/v heads
    keys = module._structured(module.k_conv, maps.flatten(3).transpose(2, 3), (3, 4, 4))
    keys = keys.reshape(1, 2, 4, 3 * 2 * 2, 3)  # (B, heads, D, N_kv, head_dim)
    expected = maps[0, 0, 1, :, ::2, ::2].reshape(-1)  # channel 1 = head 0, channel 1, stride 2 centres
    torch.testing.assert_close(keys[0, 0, 2, :, 1], expected)
    torch.testing.assert_close(keys.abs().sum(), keys[0, 0, 2, :, 1].abs().sum())  # nothing else moved


def test_fresh_structsa_is_close_to_plain_attention() -> None:
    torch.manual_seed(3)
    structured = StructSA(32, 2, video=False, structure_dim=4)
    plain = MultiHeadAttention(32, 2)
    plain.load_state_dict({k: v for k, v in structured.state_dict().items() if "conv" not in k})
    x = torch.randn(2, 36, 32)
    difference = (structured(x, (6, 6)) - plain(x, (6, 6))).abs().max()
    assert difference < 0.1 * plain(x, (6, 6)).abs().max()


def test_lsa_gives_zero_attention_to_own_position() -> None:
    grid, stride, copies = (4, 5), (2, 2), 3
    mask = lsa_keep_mask(grid, stride, copies)
    num_kv = 2 * 3
    assert mask.shape == (20, copies * num_kv)
    # the probability matrix itself: values are one-hot key indicators, so the output is the attention
    torch.manual_seed(4)
    q = torch.randn(1, 1, 20, 8, dtype=torch.float64)
    k = torch.randn(1, 1, copies * num_kv, 8, dtype=torch.float64)
    v = torch.eye(copies * num_kv, dtype=torch.float64)[None, None]
    probs = attend(q, k, v, keep_mask=mask)[0, 0]
    for row, (y, x) in enumerate((y, x) for y in range(4) for x in range(5)):
        own = (y // 2) * 3 + x // 2
        on_lattice = y % 2 == 0 and x % 2 == 0
        for copy in range(copies):
            assert (probs[row, copy * num_kv + own] == 0) == on_lattice
    torch.testing.assert_close(probs.sum(-1), torch.ones(20, dtype=torch.float64))


def test_plain_lsa_ignores_own_value() -> None:
    torch.manual_seed(5)
    attention = MultiHeadAttention(8, 2, lsa=True).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    q, k, v = attention.qkv(x).reshape(1, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
    v_changed = v.clone()
    v_changed[:, :, 3] += 10.0
    mask = lsa_keep_mask((6,))
    before = attend(q, k, v, temperature=attention.temperature, keep_mask=mask)
    after = attend(q, k, v_changed, temperature=attention.temperature, keep_mask=mask)
    torch.testing.assert_close(before[:, :, 3], after[:, :, 3])
    assert not torch.allclose(before[:, :, 2], after[:, :, 2])


def test_lsa_temperature_starts_at_inverse_sqrt_head_dim_and_trains() -> None:
    torch.manual_seed(6)
    module = StructSA(16, 2, video=False, structure_dim=2, lsa=True)
    torch.testing.assert_close(module.temperature.detach(), torch.full((2, 1, 1), 8**-0.5))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    x = torch.randn(2, 16, 16)
    module(x, (4, 4)).pow(2).mean().backward()
    assert module.temperature.grad is not None and module.temperature.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.allclose(module.temperature.detach(), torch.full((2, 1, 1), 8**-0.5))


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="odd kernel_size"):
        StructSA(8, 2, video=False, kernel_size=4)
    with pytest.raises(ValueError, match="correlation='hadamard'"):
        StructSA(8, 2, video=False, correlation="hadamard")
    module = StructSA(8, 2, video=False)
    with pytest.raises(ValueError, match=r"grid \(3, 3\) for 10 tokens"):
        module(torch.randn(1, 10, 8), (3, 3))
    assert lsa_keep_mask((2, 2), (2, 2), copies=4).all()  # one key position: nothing can be masked


def test_fused_structsa_memory_grows_linearly_with_tokens() -> None:
    # guards the fused kernel choice: keys/values with a non-unit head_dim stride make SDPA fall
    # back to the math path, whose (N x D*N_kv) matrix grows 16x when N grows 4x
    torch.manual_seed(7)
    module = StructSA(32, 1, video=False, structure_dim=4)
    peaks = []
    for side in (12, 24):
        x = torch.randn(1, side * side, 32, requires_grad=True)
        peaks.append(peak_memory_bytes(lambda x=x, side=side: module(x, (side, side)).sum().backward()))
    assert peaks[1] < 6 * peaks[0], peaks
