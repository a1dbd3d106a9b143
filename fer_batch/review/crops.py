"""Faces cut from the sources by the CSV's boxes, as JPEG, for the review page.

Photos are decoded as labelling decoded them (:func:`fer_batch.sources.read_image`), video frames are read by
frame number with :class:`fer_batch.video.VideoReader`, so a box lands where the model saw the face. Everything is
cached with a bound: the JPEGs by total size, decoded pictures and open videos by count, so a long review keeps
its memory.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from fer_batch.review.items import Detail, ReviewItems, open_source
from fer_batch.sources import InputError, read_image

CROP_HEIGHT = 240  # pixels of a crop; the page shows the current face at this size, the strip smaller
MARGIN = 0.45  # context around the box on each side, in box sizes: enough to judge "is this a face?"
JPEG_QUALITY = 85
MAX_CROP_BYTES = 48 << 20
MAX_PICTURES = 8  # decoded photos and video frames kept (and at most MAX_PICTURE_BYTES of them)
MAX_PICTURE_BYTES = 256 << 20
MAX_VIDEOS = 3  # videos kept open (each holds its packet index)
MAX_DETAILS = 2048


class LRU:
    """A least-recently-used cache bounded by a count and, optionally, by the sum of ``size(value)``."""

    def __init__(self, count: int, size_limit: int = 0, size=len, on_evict=None):
        self.count, self.size_limit, self.size, self.on_evict = count, size_limit, size, on_evict
        self.values: OrderedDict = OrderedDict()
        self.total = 0
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key not in self.values:
                return None
            self.values.move_to_end(key)
            return self.values[key]

    def put(self, key, value) -> None:
        evicted = []
        with self.lock:
            if key in self.values:
                self.total -= self._size(self.values.pop(key))
            self.values[key] = value
            self.total += self._size(value)
            while len(self.values) > 1 and (len(self.values) > self.count or
                                            (self.size_limit and self.total > self.size_limit)):
                _, old = self.values.popitem(last=False)
                self.total -= self._size(old)
                evicted.append(old)
        for old in evicted:
            if self.on_evict:
                self.on_evict(old)

    def _size(self, value) -> int:
        return self.size(value) if self.size_limit else 0


class _OpenVideo:
    def __init__(self, path: Path):
        from fer_batch.video import VideoReader

        self.reader = VideoReader(path)
        self.lock = threading.Lock()  # a PyAV container decodes in one thread at a time

    def frame(self, number: int) -> np.ndarray:
        with self.lock:
            for frame in self.reader.frames(start=number, stop=number + 1):
                if frame.image is not None:
                    return frame.image
        raise InputError(f"frame {number} could not be decoded")

    def close(self) -> None:
        with self.lock:
            self.reader.close()


class FaceCropper:
    """JPEG crops of the items of ``items``: ``crop(item, index)`` for the item's ``index``-th shown row."""

    def __init__(self, items: ReviewItems):
        self.items = items
        self.crops = LRU(100_000, MAX_CROP_BYTES)
        self.pictures = LRU(MAX_PICTURES, MAX_PICTURE_BYTES, size=lambda picture: picture.nbytes)
        self.videos = LRU(MAX_VIDEOS, on_evict=_OpenVideo.close)
        self.details = LRU(MAX_DETAILS)
        self._source_locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._reported: set[int] = set()

    def detail(self, item: int) -> Detail:
        detail = self.details.get(item)
        if detail is None:
            detail = self.items.detail(item)
            self.details.put(item, detail)
        return detail

    def crop(self, item: int, index: int) -> bytes:
        """The JPEG bytes; IndexError for an index the item does not show, InputError when the source cannot be
        read (reported once per source on stderr)."""
        cached = self.crops.get((item, index))
        if cached is not None:
            return cached
        shown = self.detail(item).shown
        if not 0 <= index < len(shown):
            raise IndexError(index)
        source = int(self.items.source[item])
        try:
            picture = self._picture(source, shown[index].frame)
        except (InputError, OSError, cv2.error) as error:
            if source not in self._reported:
                self._reported.add(source)
                print(f"fer-batch review: {self.items.sources[source]}: cannot cut faces from it: {error}",
                      file=sys.stderr, flush=True)
            raise InputError(str(error)) from None
        data = face_jpeg(picture, shown[index].box)
        self.crops.put((item, index), data)
        return data

    def _picture(self, source: int, frame: int | None) -> np.ndarray:
        key = (source, frame)
        picture = self.pictures.get(key)
        if picture is not None:
            return picture
        with self._guard:
            lock = self._source_locks.setdefault(source, threading.Lock())
        with lock:  # two requests for one source: decode it once
            picture = self.pictures.get(key)
            if picture is None:
                path = open_source(self.items.csv_path, self.items.sources[source])
                if frame is None:
                    picture = read_image(path)
                else:
                    video = self.videos.get(source)
                    if video is None:
                        video = _OpenVideo(path)
                        self.videos.put(source, video)
                    picture = video.frame(frame)
                self.pictures.put(key, picture)
        return picture

    def close(self) -> None:
        with self.videos.lock:
            videos = list(self.videos.values.values())
            self.videos.values.clear()
        for video in videos:
            video.close()


def face_jpeg(picture: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """The face at ``box`` (x, y, w, h) with MARGIN around it, CROP_HEIGHT pixels high, its box drawn thinly, as
    JPEG. Context beyond the picture's edge is filled grey, so the face stays in the middle."""
    x, y, w, h = box
    w, h = max(w, 1), max(h, 1)
    margin = round(MARGIN * max(w, h))
    left, top, right, bottom = x - margin, y - margin, x + w + margin, y + h + margin
    height, width = picture.shape[:2]
    if right <= 0 or bottom <= 0 or left >= width or top >= height:
        raise InputError(f"face box {box} lies outside the {width}x{height} picture")
    canvas = np.full((bottom - top, right - left, 3), 96, np.uint8)
    inner = picture[max(top, 0):min(bottom, height), max(left, 0):min(right, width)]
    canvas[max(top, 0) - top:max(top, 0) - top + inner.shape[0], max(left, 0) - left:max(left, 0) - left +
           inner.shape[1]] = inner
    scale = CROP_HEIGHT / canvas.shape[0]
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    canvas = cv2.resize(canvas, (max(1, round(canvas.shape[1] * scale)), CROP_HEIGHT), interpolation=interpolation)
    corner = (round(margin * scale), round(margin * scale))
    cv2.rectangle(canvas, corner, (round((margin + w) * scale), round((margin + h) * scale)), (80, 220, 255), 1)
    ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise InputError("cannot encode a JPEG crop")
    return encoded.tobytes()
