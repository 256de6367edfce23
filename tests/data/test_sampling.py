"""Frame sampling is decoder-independent: checked on frame counts alone."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.sampling import (
    dense_indices,
    eval_crop_boxes,
    eval_indices,
    segment_indices,
    train_indices,
)


def test_dense_training_window_is_random_and_strided() -> None:
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = dense_indices(100, 8, 4, rng)
        assert np.all(np.diff(idx) == 4)
        assert idx[0] >= 0 and idx[-1] <= 99
        starts.add(idx[0])
    # every start in [0, 100 - 29] is possible; 200 draws hit most of them
    assert min(starts) == 0 and max(starts) == 71 and len(starts) > 50


def test_dense_test_clips_are_uniformly_spaced() -> None:
    clips = eval_indices("dense", 100, 8, 4, num_clips=3)
    assert [c[0] for c in clips] == [11, 35, 59]  # (c + 0.5) / 3 of the 71 free start positions
    assert clips[1] == [35 + 4 * i for i in range(8)]
    assert eval_indices("dense", 100, 8, 4, num_clips=1)[0][0] == 35  # one clip: the centre


def test_short_video_repeats_its_last_frame() -> None:
    assert dense_indices(10, 5, 4, None) == [0, 4, 8, 9, 9]
    assert segment_indices(3, 6, np.random.default_rng(0)) == [0, 1, 2, 2, 2, 2]
    assert dense_indices(1, 3, 2, np.random.default_rng(1)) == [0, 0, 0]


def test_segment_training_takes_one_frame_inside_each_segment() -> None:
    rng = np.random.default_rng(3)
    seen = [set() for _ in range(4)]
    for _ in range(300):
        idx = segment_indices(40, 4, rng)
        for i, frame in enumerate(idx):
            assert 10 * i <= frame < 10 * (i + 1)
            seen[i].add(frame)
    assert all(len(s) == 10 for s in seen)  # every frame of every segment gets drawn


def test_segment_test_takes_segment_centres() -> None:
    assert segment_indices(40, 4) == [5, 15, 25, 35]
    assert eval_indices("segment", 40, 4, 1, num_clips=2) == [[2, 12, 22, 32], [7, 17, 27, 37]]


def test_same_generator_seed_gives_same_indices() -> None:
    a = train_indices("segment", 97, 8, 1, np.random.default_rng(5))
    b = train_indices("segment", 97, 8, 1, np.random.default_rng(5))
    c = train_indices("segment", 97, 8, 1, np.random.default_rng(6))
    assert a == b and a != c


def test_test_crops_centre_and_along_long_side() -> None:
    assert eval_crop_boxes(32, 48, 32, 1) == [(0, 8)]
    assert eval_crop_boxes(32, 48, 32, 3) == [(0, 0), (0, 8), (0, 16)]
    assert eval_crop_boxes(50, 32, 32, 3) == [(0, 0), (9, 0), (18, 0)]
    with pytest.raises(ValueError, match="smaller than"):
        eval_crop_boxes(20, 48, 32, 1)


def test_empty_video_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        segment_indices(0, 8)
