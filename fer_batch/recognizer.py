"""EmotionRecognizer: detect faces, crop them FER-style, classify their emotion - for one image or a batch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_batch.classify import EmotionClassifier, resolve_model
from fer_batch.crop import crop_face, to_grey
from fer_batch.detect import Detections, HaarDetector, WholeImageDetector, make_detector
from fer_batch.labels import EMOTIONS


@dataclass
class Face:
    """One face: box (x, y, w, h) in the image's pixels, five landmarks (NaN without), detector score,
    probabilities of the seven emotions in FER order, and the top label with its probability."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    probabilities: np.ndarray

    @property
    def label(self) -> str:
        return EMOTIONS[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(EMOTIONS, (float(p) for p in self.probabilities)))


class EmotionRecognizer:
    """Face detection + FER-2013 emotion classification, all in onnxruntime.

    >>> recognizer = EmotionRecognizer()            # bundled model (its INT8 copy), RetinaFace
    >>> faces = recognizer.predict(cv2.imread("photo.jpg"))
    >>> [(f.label, round(f.confidence, 2), f.box) for f in faces]
    """

    def __init__(self, model: str | Path | None = None, detector: str = "retinaface", align: bool = False,
                 face_threshold: float = 0.8, min_face: float = 20.0, detect_size: int = 640, threads: int = 0,
                 providers: list[str] | None = None, precision: str | None = None,
                 detector_precision: str | None = None):
        # model: a file used as given; else the bundled model in precision ("int8", the default, or "float").
        self.classifier = EmotionClassifier(resolve_model(model, precision), threads=threads, providers=providers)
        # detector_precision: RetinaFace's copy ("int8", the default, or "float"; fer_batch.detect)
        self.detector = make_detector(detector, threshold=face_threshold, min_face=min_face, max_side=detect_size,
                                      threads=threads, providers=providers, precision=detector_precision)
        self.align = align
        # How a detector's boxes relate to FER's framing (see fer_batch.crop.crop_face).
        self.framing = ("haar" if isinstance(self.detector, HaarDetector) else
                        "whole" if isinstance(self.detector, WholeImageDetector) else "retinaface")

    def predict(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in one uint8 BGR (or grey) image, left to right."""
        return self.predict_batch([image_bgr])[0]

    def predict_batch(self, images_bgr: list[np.ndarray], timings: dict | None = None) -> list[list[Face]]:
        """Faces for several images: detection batched by image size, all crops classified in one call.

        ``timings``, when given, accumulates seconds per stage: ``detect`` (of which ``detect_onnx`` inside
        onnxruntime), ``crop``, ``classify`` (of which ``classify_onnx``)."""
        return self._predict(images_bgr, self.detector.detect_batch, timings)

    def predict_frames(self, frames_bgr: list[np.ndarray], timings: dict | None = None) -> list[list[Face]]:
        """Faces in consecutive frames of one video, detected the cheaper way where the detector has one
        (RetinaFace: the first frame in full, each later one only around the faces of the frame before, see
        :meth:`RetinaFaceDetector.detect_sequence`); otherwise as :meth:`predict_batch`. A face that appears beside
        others is found in the next call, so the frames of one call are a short stretch (``--detect-every``)."""
        detect = getattr(self.detector, "detect_sequence", self.detector.detect_batch)
        return self._predict(frames_bgr, detect, timings)

    def _predict(self, images_bgr: list[np.ndarray], detect, timings: dict | None) -> list[list[Face]]:
        clock = time.perf_counter
        started = clock()
        images_bgr = [_as_bgr(image) for image in images_bgr]
        detections = detect(images_bgr, timings)
        detected = clock()
        crops = [self.crops(image, found) for image, found in zip(images_bgr, detections)]
        cropped = clock()
        probabilities = self.classifier.predict(np.concatenate(crops) if crops else np.zeros((0, 48, 48), np.uint8),
                                                timings)
        if timings is not None:
            for stage, seconds in (("detect", detected - started), ("crop", cropped - detected),
                                   ("classify", clock() - cropped)):
                timings[stage] = timings.get(stage, 0.0) + seconds
        results, start = [], 0
        for found in detections:
            results.append(self.faces(found, probabilities[start:start + len(found)]))
            start += len(found)
        return results

    def crops(self, image_bgr: np.ndarray, found: Detections) -> np.ndarray:
        """(N, 48, 48) uint8 crops of the detected faces."""
        if len(found) == 0:
            return np.zeros((0, self.classifier.height, self.classifier.width), np.uint8)
        grey = to_grey(image_bgr)
        return np.stack([crop_face(grey, box, points, align=self.align, framing=self.framing)
                         for box, points in zip(found.boxes, found.landmarks)])

    @staticmethod
    def faces(found: Detections, probabilities: np.ndarray) -> list[Face]:
        return [Face(box=(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), landmarks=points,
                     score=float(score), probabilities=p)
                for b, points, score, p in zip(found.boxes, found.landmarks, found.scores, probabilities)]


def _as_bgr(image: np.ndarray) -> np.ndarray:
    from fer_batch.sources import to_bgr8

    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"expected an image array (H, W[, C]), got {getattr(image, 'shape', type(image))}")
    return to_bgr8(image)
