"""fer_batch/detect.py: RetinaFace and Haar find the astronaut's face where it is; shapes at the edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE

from fer_batch.detect import Detections, HaarDetector, RetinaFaceDetector, WholeImageDetector, make_detector


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def retinaface():
    return RetinaFaceDetector()


def test_retinaface_finds_the_astronaut(retinaface, astronaut):
    found = retinaface.detect(astronaut)
    assert len(found) == 1
    assert iou(found.boxes[0], ASTRONAUT_FACE) > 0.7
    assert found.scores[0] > 0.95
    right_eye, left_eye, nose, mouth_right, mouth_left = found.landmarks[0]
    x1, y1, x2, y2 = found.boxes[0]
    assert x1 < right_eye[0] < left_eye[0] < x2  # the subject's right eye is on the image's left
    assert right_eye[1] < nose[1] < mouth_right[1] < y2 and y1 < left_eye[1]


def test_retinaface_box_scales_with_the_image(retinaface, astronaut):
    big = cv2.resize(astronaut, (1024, 1024))  # shrunk to 640 for detection, boxes back in 1024 pixels
    found = retinaface.detect(big)
    assert len(found) == 1
    assert iou(found.boxes[0] / 2, ASTRONAUT_FACE) > 0.7


def test_batch_of_mixed_sizes_matches_single_calls(retinaface, astronaut):
    images = [astronaut, cv2.resize(astronaut, (400, 300)), np.zeros((200, 320, 3), np.uint8), astronaut]
    batched = retinaface.detect_batch(images)
    for image, result in zip(images, batched):
        single = retinaface.detect(image)
        assert len(single) == len(result)
        np.testing.assert_allclose(single.boxes, result.boxes, atol=0.5)
    assert len(batched[2]) == 0 and batched[2].boxes.shape == (0, 4) and batched[2].landmarks.shape == (0, 5, 2)


def test_min_face_and_clipping(astronaut):
    assert len(RetinaFaceDetector(min_face=200).detect(astronaut)) == 0
    half = np.ascontiguousarray(astronaut[:, :230])  # the frame's edge cuts through the face
    found = RetinaFaceDetector(threshold=0.5, min_face=5).detect(half)
    assert len(found) >= 1
    assert (found.boxes[:, [0, 2]] >= 0).all() and (found.boxes[:, [0, 2]] <= 230).all()
    assert (found.boxes[:, [1, 3]] <= 512).all()


def test_haar_and_none(astronaut):
    haar = HaarDetector().detect(astronaut)
    assert len(haar) >= 1 and max(iou(b, ASTRONAUT_FACE) for b in haar.boxes) > 0.5
    assert np.isnan(haar.landmarks).all()
    whole = WholeImageDetector().detect(astronaut[:48, :48])
    np.testing.assert_array_equal(whole.boxes, [[0, 0, 48, 48]])


def test_make_detector_rejects_unknown():
    assert isinstance(make_detector("none"), WholeImageDetector)
    with pytest.raises(ValueError, match="unknown detector 'mtcnn'"):
        make_detector("mtcnn")
    assert len(Detections.empty()) == 0
