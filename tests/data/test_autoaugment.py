"""AutoAugment on the uint8 op table: the published policies, their probabilities and magnitude bins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.data.randaugment as randaugment
from pipeline.data.randaugment import (
    AUTO_AUGMENT_POLICIES,
    RAND_AUGMENT_OPS,
    auto_augment,
    auto_augment_level,
)

NO_MAGNITUDE = {"AutoContrast", "Equalize", "Invert"}
# torchvision's AutoAugment magnitudes of bin b (10 bins), written out: linspace(0, max, 10)[b].
TORCHVISION_MAXIMA = {
    "ShearX": 0.3,
    "ShearY": 0.3,
    "TranslateX": 150 / 331,
    "TranslateY": 150 / 331,
    "Rotate": 30.0,
    "Brightness": 0.9,
    "Color": 0.9,
    "Contrast": 0.9,
    "Sharpness": 0.9,
}
# What the op table's ops do at a level (their docstrings): the range each level reaches.
OP_RANGE_AT_MAX_LEVEL = {**TORCHVISION_MAXIMA, "TranslateX": 0.45, "TranslateY": 0.45}


class ScriptedGenerator:
    """Stands in for np.random.Generator where the test fixes every draw: `integers` gives `index`,
    `random` the scripted values in order."""

    def __init__(self, index: int, randoms: list[float]) -> None:
        self.index, self.randoms = index, list(randoms)

    def integers(self, high: int) -> int:
        assert 0 <= self.index < high
        return self.index

    def random(self) -> float:
        return self.randoms.pop(0)


def image(values: list[int]) -> torch.Tensor:
    """A uint8 (1, 3, 1, N) clip: one row of grey pixels of `values`."""
    return torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()


@pytest.mark.parametrize("policy", sorted(AUTO_AUGMENT_POLICIES))
def test_policies_are_25_pairs_of_table_ops_with_bins_where_the_op_has_a_magnitude(policy: str) -> None:
    sub_policies = AUTO_AUGMENT_POLICIES[policy]
    assert len(sub_policies) == 25 and all(len(pair) == 2 for pair in sub_policies)
    for name, probability, magnitude_bin in (op for pair in sub_policies for op in pair):
        assert name in RAND_AUGMENT_OPS and 0.0 <= probability <= 1.0
        assert (magnitude_bin is None) == (name in NO_MAGNITUDE)
        assert magnitude_bin is None or 0 <= magnitude_bin <= 9


def test_first_and_last_sub_policies_are_the_published_ones() -> None:
    assert AUTO_AUGMENT_POLICIES["cifar10"][0] == (("Invert", 0.1, None), ("Contrast", 0.2, 6))
    assert AUTO_AUGMENT_POLICIES["cifar10"][-1] == (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None))
    assert AUTO_AUGMENT_POLICIES["svhn"][0] == (("ShearX", 0.9, 4), ("Invert", 0.2, None))
    assert AUTO_AUGMENT_POLICIES["imagenet"][0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))


@pytest.mark.parametrize("name", sorted(TORCHVISION_MAXIMA))
def test_levels_give_torchvisions_magnitude_of_every_bin(name: str) -> None:
    for magnitude_bin in range(10):
        reached = (
            auto_augment_level(name, magnitude_bin) / randaugment.MAX_LEVEL * OP_RANGE_AT_MAX_LEVEL[name]
        )
        assert reached == pytest.approx(TORCHVISION_MAXIMA[name] * magnitude_bin / 9, abs=1e-12)


def test_posterize_and_solarize_bins_on_hand_computed_pixels() -> None:
    bits = [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]  # torchvision: 8 - round(b / 2.25)
    for magnitude_bin, kept in enumerate(bits):
        out = RAND_AUGMENT_OPS["Posterize"](
            image([255]), auto_augment_level("Posterize", magnitude_bin), None
        )
        assert int(out[0, 0, 0, 0]) == 256 - 2 ** (8 - kept)
    # bin 2: threshold 256 x 7 / 9 = 199.1: 199 stays, 200 and 255 are inverted
    level = auto_augment_level("Solarize", 2)
    out = RAND_AUGMENT_OPS["Solarize"](image([10, 199, 200, 255]), level, None)
    assert out[0, 0, 0].tolist() == [10, 199, 55, 0]


def test_a_sub_policy_applies_each_op_below_its_probability_only() -> None:
    pixels = [10, 199, 200, 255]
    # CIFAR-10 sub-policy 14: Solarize p 0.5 bin 2, then Invert p 0.0 (never)
    out = auto_augment(image(pixels), "cifar10", ScriptedGenerator(14, [0.49, 0.0]))
    assert out[0, 0, 0].tolist() == [10, 199, 55, 0]
    out = auto_augment(image(pixels), "cifar10", ScriptedGenerator(14, [0.5, 0.0]))
    assert out[0, 0, 0].tolist() == pixels
    # SVHN sub-policy 3: Invert p 0.9, then Equalize p 0.6 (skipped at 0.6)
    out = auto_augment(image(pixels), "svhn", ScriptedGenerator(3, [0.89, 0.6]))
    assert out[0, 0, 0].tolist() == [245, 56, 55, 0]
    # ImageNet sub-policy 3: Posterize p 0.6 bin 7, Posterize p 0.6 bin 6: 5 bits kept by each
    out = auto_augment(image([183, 7]), "imagenet", ScriptedGenerator(3, [0.1, 0.59]))
    assert out[0, 0, 0].tolist() == [176, 0]
    # CIFAR-10 sub-policy 6: Color p 0.4 bin 3 (skipped), Brightness p 0.6 bin 7: factor 1 + 0.7 (sign +)
    out = auto_augment(image([100, 20]), "cifar10", ScriptedGenerator(6, [0.4, 0.3, 0.0]))
    assert out[0, 0, 0].tolist() == [170, 34]


class RecordingGenerator:
    """A real seeded generator that remembers the sub-policy index `auto_augment` draws."""

    def __init__(self, seed: int) -> None:
        self.rng, self.index = np.random.default_rng(seed), -1

    def integers(self, high: int) -> int:
        self.index = int(self.rng.integers(high))
        return self.index

    def random(self) -> float:
        return float(self.rng.random())


@pytest.mark.parametrize("policy", sorted(AUTO_AUGMENT_POLICIES))
def test_sub_policies_are_drawn_uniformly_and_ops_at_their_probabilities(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ops replaced by recorders, 5000 images: each sub-policy is drawn about 1/25 of the time, each
    of its ops applied at its probability, with the level of its bin."""
    applied: list[tuple[str, float]] = []

    def recorder(name: str):
        def record(clip: torch.Tensor, level: float, rng: object) -> torch.Tensor:
            applied.append((name, level))
            return clip

        return record

    monkeypatch.setattr(randaugment, "RAND_AUGMENT_OPS", {name: recorder(name) for name in RAND_AUGMENT_OPS})
    sub_policies, draws = AUTO_AUGMENT_POLICIES[policy], 5000
    runs: dict[int, list[list[tuple[str, float]]]] = {index: [] for index in range(25)}
    rng = RecordingGenerator(0)
    for _ in range(draws):
        before = len(applied)
        auto_augment(image([0]), policy, rng)
        runs[rng.index].append(applied[before:])
    assert min(len(found) for found in runs.values()) > draws / 25 * 0.7
    for index, pair in enumerate(sub_policies):
        found = runs[index]
        expected = [(name, auto_augment_level(name, magnitude_bin)) for name, _, magnitude_bin in pair]
        assert all(op in expected for ops in found for op in ops)  # only this pair's ops, at their levels
        for (name, probability, _), op in zip(pair, expected, strict=True):
            if pair[0][0] == pair[1][0]:  # the same op twice: the applications add up
                rate, probability = sum(len(ops) for ops in found) / len(found), pair[0][1] + pair[1][1]
                spread = 4 * np.sqrt(0.5 / len(found))
            else:
                rate = sum(op in ops for ops in found) / len(found)
                spread = 4 * np.sqrt(max(probability * (1 - probability), 0.01) / len(found))
            assert abs(rate - probability) < spread, (index, name)


def test_auto_augment_is_deterministic_per_generator_and_alike_on_every_frame() -> None:
    frame = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 16, 16), dtype=np.uint8))
    clip = frame.expand(4, -1, -1, -1).contiguous()
    for policy in AUTO_AUGMENT_POLICIES:
        outs = [auto_augment(clip, policy, np.random.default_rng(seed)) for seed in (7, 7, 8, 9, 10)]
        assert torch.equal(outs[0], outs[1]) and outs[0].dtype == torch.uint8 and outs[0].shape == clip.shape
        assert all(torch.equal(out[0], out[t]) for out in outs for t in range(1, 4))
        assert any(not torch.equal(outs[0], out) for out in outs[2:])
