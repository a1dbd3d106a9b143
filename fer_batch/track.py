"""Face tracks within one video, and smoothing of the probabilities along each track.

Method: each track keeps its last box and a velocity (pixels per frame, smoothed). For a new frame every live
track's box is predicted forward by its velocity; detections are matched to predictions greedily, best first, by
IoU, or - where boxes no longer overlap after a jump - by centre distance under one face size. A detection left
over starts a new track with a fresh id; ids are never reused within a video. A track survives ``max_gap``
source frames without a detection (1 s by default), coasting on its velocity, so short detector misses and
faces passing in front of each other keep their ids.

Limits: no appearance model, so two people who swap places while both are hidden for longer than the gap, or who
cross while moving in parallel at the same speed, can swap ids; after a cut in a film, tracks restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class _Track:
    id: int
    box: np.ndarray  # x1, y1, x2, y2 at last_frame
    velocity: np.ndarray  # centre motion in px per frame
    last_frame: int


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class Tracker:
    """Assigns a stable id to each face box of successive frames of one video."""

    def __init__(self, max_gap: int = 25, min_iou: float = 0.05):
        self.max_gap, self.min_iou = max(1, max_gap), min_iou
        self.tracks: list[_Track] = []
        self.next_id = 0

    def _predict(self, track: _Track, frame: int) -> np.ndarray:
        shift = track.velocity * (frame - track.last_frame)
        return track.box + np.concatenate([shift, shift])

    def update(self, frame: int, boxes: np.ndarray) -> list[int]:
        """Track ids for the (N, 4) boxes found in source frame ``frame`` (frames must increase)."""
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_gap]
        predicted = [self._predict(t, frame) for t in self.tracks]
        pairs = []
        for t, prediction in enumerate(predicted):
            size = math.sqrt(max((prediction[2] - prediction[0]) * (prediction[3] - prediction[1]), 1.0))
            for d, box in enumerate(boxes):
                overlap = iou(prediction, box)
                if overlap >= self.min_iou:
                    pairs.append((1.0 + overlap, t, d))
                else:
                    distance = np.linalg.norm((prediction[:2] + prediction[2:]) / 2 - (box[:2] + box[2:]) / 2)
                    if distance < size:
                        pairs.append((1.0 - distance / size, t, d))
        ids: list[int | None] = [None] * len(boxes)
        used_tracks: set[int] = set()
        for _, t, d in sorted(pairs, reverse=True):
            if t in used_tracks or ids[d] is not None:
                continue
            used_tracks.add(t)
            ids[d] = self._move(self.tracks[t], boxes[d], frame)
        for d, box in enumerate(boxes):
            if ids[d] is None:
                ids[d] = self._start(box, frame)
        return ids  # type: ignore[return-value]

    def restore(self, frame: int, boxes: np.ndarray, ids: list[int]) -> None:
        """Replay a frame whose ids are already known (resuming a run from its CSV)."""
        known = {t.id: t for t in self.tracks}
        for box, track_id in zip(boxes, ids):
            if track_id in known:
                self._move(known[track_id], box, frame)
            else:
                self.tracks.append(_Track(track_id, np.asarray(box, np.float64), np.zeros(2), frame))
            self.next_id = max(self.next_id, track_id + 1)

    def _move(self, track: _Track, box: np.ndarray, frame: int) -> int:
        box = np.asarray(box, np.float64)
        elapsed = max(frame - track.last_frame, 1)
        motion = ((box[:2] + box[2:]) - (track.box[:2] + track.box[2:])) / 2 / elapsed
        track.velocity = 0.5 * track.velocity + 0.5 * motion
        track.box, track.last_frame = box, frame
        return track.id

    def _start(self, box: np.ndarray, frame: int) -> int:
        track = _Track(self.next_id, np.asarray(box, np.float64), np.zeros(2), frame)
        self.next_id += 1
        self.tracks.append(track)
        return track.id


class Smoother:
    """Exponential smoothing of each track's probabilities in time: a change fades in with time constant
    ``seconds`` (63 % after that long), whatever the frame rate or --every."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.state: dict[int, tuple[float, np.ndarray]] = {}

    def update(self, track: int, time_s: float, probabilities: np.ndarray) -> np.ndarray:
        previous = self.state.get(track)
        if previous is None or self.seconds <= 0:
            smoothed = np.asarray(probabilities, np.float64)
        else:
            last_time, last = previous
            weight = 1.0 - math.exp(-max(time_s - last_time, 0.0) / self.seconds)
            smoothed = last + weight * (np.asarray(probabilities, np.float64) - last)
        self.state[track] = (time_s, smoothed)
        return smoothed

    def restore(self, track: int, time_s: float, smoothed: np.ndarray) -> None:
        self.state[track] = (time_s, np.asarray(smoothed, np.float64))
