"""fer_batch/track.py: stable ids through motion, misses and crossings; smoothing in time."""

from __future__ import annotations

import numpy as np
import pytest

from fer_batch.track import Smoother, Tracker


def box(cx: float, cy: float, side: float = 40.0) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def test_two_faces_crossing_keep_their_ids():
    tracker = Tracker(max_gap=10)
    history = []
    for frame in range(60):
        a = box(50 + 8 * frame, 100)  # left to right
        b = box(530 - 8 * frame, 112)  # right to left, overlapping a around frame 30
        boxes = [a, b] if not 28 <= frame <= 32 else [a]  # b hidden behind a while they cross
        ids = tracker.update(frame, np.array(boxes))
        history.append(ids)
    assert all(ids[0] == 0 for ids in history)
    assert all(ids[1] == 1 for ids in history if len(ids) == 2)
    assert tracker.next_id == 2


def test_gap_longer_than_max_gap_starts_a_new_id_never_reused():
    tracker = Tracker(max_gap=5)
    assert tracker.update(0, np.array([box(100, 100)])) == [0]
    assert tracker.update(3, np.array([box(102, 100)])) == [0]  # a short miss survives
    assert tracker.update(20, np.array([box(104, 100)])) == [1]  # too long: new person as far as we know
    assert tracker.update(21, np.array([box(104, 100), box(400, 100)])) == [1, 2]
    assert tracker.update(22, np.zeros((0, 4))) == []


def test_restore_continues_ids():
    tracker = Tracker(max_gap=5)
    tracker.restore(10, np.array([box(100, 100), box(300, 100)]), [4, 7])
    assert tracker.update(11, np.array([box(302, 100), box(101, 100), box(500, 300)])) == [7, 4, 8]


def test_smoother_uses_time_not_frames():
    smoother = Smoother(seconds=1.0)
    first = np.array([1.0, 0, 0, 0, 0, 0, 0])
    second = np.array([0, 0, 0, 1.0, 0, 0, 0])
    smoother.update(0, 0.0, first)
    after_one_second = smoother.update(0, 1.0, second)
    assert after_one_second[3] == pytest.approx(1 - np.exp(-1))
    assert after_one_second.sum() == pytest.approx(1.0)
    assert np.allclose(smoother.update(1, 5.0, second), second)  # a new track starts raw
