"""fer_batch/detect.py: RetinaFace and Haar find the astronaut's face where it is; shapes at the edges; RetinaFace
around known faces finds them as the whole-image search does, and a sequence of frames is searched in full only
where it must be. fer_batch/detector_quant.py: the bundled INT8 copy finds the float network's faces on real
photos, and its rearranged float graph computes the float network's numbers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE

from fer_batch.detect import (
    REGION_GRID,
    Detections,
    HaarDetector,
    RetinaFaceDetector,
    WholeImageDetector,
    _regions,
    int8_detector_path,
    make_detector,
)
from fer_batch.onnx import ModelError
from fer_batch.track import iou


@pytest.fixture(scope="module")
def retinaface():
    return RetinaFaceDetector()  # the default: the INT8 copy


@pytest.fixture(scope="module")
def float_retinaface():
    return RetinaFaceDetector(precision="float")


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


def crowd(astronaut, count: int = 2, size=(640, 360)) -> np.ndarray:
    """``count`` astronaut heads (95 px faces) side by side on a grey frame."""
    frame = np.full((size[1], size[0], 3), 50, np.uint8)
    head = cv2.resize(astronaut[20:300, 120:340], None, fx=0.6, fy=0.6)
    for index in range(count):
        frame[20:20 + head.shape[0], 10 + 200 * index:10 + 200 * index + head.shape[1]] = head
    return frame


def test_regions_sit_on_the_anchor_grid_inside_the_image_and_share_a_size():
    boxes = np.array([[100, 40, 160, 110], [300, 200, 340, 250], [600, 300, 640, 360]], np.float64)
    regions = _regions(boxes, (640, 360), 0.5, REGION_GRID)
    assert len({(x2 - x1, y2 - y1) for x1, y1, x2, y2 in regions}) == 1  # one batch
    for x1, y1, x2, y2 in regions:
        assert x1 % REGION_GRID == 0 and y1 % REGION_GRID == 0 and 0 <= x1 < 640 and 0 <= y1 < 360
        assert x2 < 640 + REGION_GRID and y2 < 360 + REGION_GRID  # past the edge by less than a grid step (padded)
    for box in boxes:  # each box with its margin lies inside some region
        grow = 0.5 * max(box[2] - box[0], box[3] - box[1])
        assert any(r[0] <= max(0, box[0] - grow) and r[1] <= max(0, box[1] - grow) and
                   r[2] >= min(640, box[2] + grow) and r[3] >= min(360, box[3] + grow) for r in regions)


def test_detect_around_finds_known_faces_as_the_whole_image_search_does(retinaface, astronaut):
    frame = crowd(astronaut)
    whole = retinaface.detect(frame)
    assert len(whole) == 2
    moved = np.roll(frame, 6, axis=1)  # the next frame: both faces 6 px to the right
    around, full = retinaface.detect_around(moved, whole.boxes), retinaface.detect(moved)
    assert len(around) == 2
    for a, b in zip(around.boxes, full.boxes):
        assert iou(a, b) > 0.9
    np.testing.assert_allclose(around.scores, full.scores, atol=0.02)
    assert np.abs(around.landmarks - full.landmarks).max() < 4
    # Only around the faces given: the second face is not looked for, and nothing given finds nothing.
    assert len(retinaface.detect_around(moved, whole.boxes[:1])) == 1
    assert len(retinaface.detect_around(moved, np.zeros((0, 4)))) == 0
    # In a big image the regions are taken where the detector looks (shrunk to 640): boxes in its own pixels.
    big = cv2.resize(moved, (1280, 720))
    scaled = retinaface.detect_around(big, whole.boxes * 2)
    assert len(scaled) == 2 and all(iou(a / 2, b) > 0.9 for a, b in zip(scaled.boxes, full.boxes))


def test_regions_covering_most_of_the_frame_search_it_whole(retinaface, astronaut):
    frame = crowd(astronaut, 3)
    whole = retinaface.detect(frame)
    assert len(whole) == 3
    huge = np.array([[0, 0, 300, 300], [320, 0, 620, 300]], np.float32)  # regions would cover nearly all of it
    found = retinaface.detect_around(frame, huge)
    np.testing.assert_array_equal(found.boxes, whole.boxes)  # the whole-image search, exactly


def test_sequence_searches_in_full_first_and_after_frames_without_faces(retinaface, astronaut):
    one, two, empty = crowd(astronaut, 1), crowd(astronaut, 2), np.full((360, 640, 3), 50, np.uint8)
    # A face appearing beside a known one waits for the next whole-frame search (the next sequence) ...
    found = retinaface.detect_sequence([one, two, two])
    assert [len(d) for d in found] == [1, 1, 1]
    np.testing.assert_array_equal(found[0].boxes, retinaface.detect(one).boxes)
    # ... but one appearing in a frame after a frame without faces is found at once, as are lost ones.
    found = retinaface.detect_sequence([empty, two, empty, one])
    assert [len(d) for d in found] == [0, 2, 0, 1]
    np.testing.assert_array_equal(found[1].boxes, retinaface.detect(two).boxes)
    assert retinaface.detect_sequence([]) == []


@pytest.fixture(scope="module")
def real_photos():
    """Photos and frames of real faces (scikit-image's astronaut and cameraman, its LFW faces) and without."""
    from fer_batch.detector_quant import CHECK_SEED, real_images

    return real_images(30, CHECK_SEED)


def test_int8_copy_finds_the_float_networks_faces(retinaface, float_retinaface, real_photos, astronaut):
    assert retinaface.precision == "int8" and float_retinaface.precision == "float"
    assert retinaface.merged_output and not float_retinaface.merged_output
    images = [*real_photos, astronaut]
    faces = 0
    for expected, got in zip(float_retinaface.detect_batch(images), retinaface.detect_batch(images)):
        assert len(got) == len(expected)
        for box, points, score in zip(expected.boxes, expected.landmarks, expected.scores):
            match = int(np.argmax([iou(box, other) for other in got.boxes]))
            assert iou(box, got.boxes[match]) > 0.9
            assert abs(got.scores[match] - score) < 0.05
            assert np.abs(got.landmarks[match] - points).max() < 0.1 * (box[2] - box[0])
            faces += 1
    assert faces >= 30  # real faces were there to compare
    # Around known faces, too (videos between whole-frame searches).
    frame = crowd(astronaut)
    known = float_retinaface.detect(frame)
    around, expected = retinaface.detect_around(frame, known.boxes), float_retinaface.detect_around(frame, known.boxes)
    assert len(around) == len(expected) == 2
    assert all(iou(a, b) > 0.9 for a, b in zip(around.boxes, expected.boxes))


def test_the_bundled_int8_copy_is_the_recipe_of_detector_quant(real_photos):
    import hashlib
    import json

    from retinaface.weights import WEIGHTS

    from fer_batch import detector_quant

    session = RetinaFaceDetector(threads=1).session
    recipe = json.loads(session.get_modelmeta().custom_metadata_map["fer_batch.detector"])
    assert recipe["source_sha256"] == hashlib.sha256(WEIGHTS).hexdigest()  # made from the graph we ship against
    assert recipe["int8"]["prefixes"] == list(detector_quant.QUANTIZED_PREFIXES)
    parity = recipe["parity"]
    assert parity["same_presence"] >= detector_quant.MIN_SAME_PRESENCE and parity["mean_iou"] >= 0.95
    # The module's own check passes on held-out real photos.
    assert detector_quant.check_parity(int8_detector_path(), real_photos[:15])["same_presence"] == 1.0


def test_rearranged_float_graph_computes_the_float_networks_numbers(tmp_path, float_retinaface, real_photos):
    onnx = pytest.importorskip("onnx")  # the train extra
    from fer_batch.detector_quant import rearrange

    path = tmp_path / "rearranged.onnx"
    onnx.save(rearrange(), str(path))
    rearranged = RetinaFaceDetector(model=str(path), threshold=0.3)
    reference = RetinaFaceDetector(precision="float", threshold=0.3)
    faces = 0
    for image in real_photos[:12]:
        expected, got = reference.detect(image), rearranged.detect(image)
        assert len(got) == len(expected)
        np.testing.assert_allclose(got.boxes, expected.boxes, atol=0.01)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
        np.testing.assert_allclose(got.landmarks, expected.landmarks, atol=0.01)
        faces += len(expected)
    assert faces >= 10


def test_detector_precision_and_model_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown detector precision 'fp16'"):
        RetinaFaceDetector(precision="fp16")
    with pytest.raises(ModelError, match="no such RetinaFace model file"):
        RetinaFaceDetector(model=str(tmp_path / "missing.onnx"))
    from fer_batch.classify import default_model_path

    with pytest.raises(ModelError, match="not a RetinaFace graph"):
        RetinaFaceDetector(model=str(default_model_path()))  # the emotion model: other outputs
    assert make_detector("retinaface", precision="float").precision == "float"


def test_resume_refuses_another_detector_precision(tmp_path):
    import json

    from fer_batch.config import LabelConfig, UsageError
    from fer_batch.runner import _check_resume_settings

    out = tmp_path / "out.csv"
    # A run recorded before the setting existed ran the float detector.
    (tmp_path / "out.run.json").write_text(json.dumps({"settings": {"detector": "retinaface"}, "model": {}}))
    with pytest.raises(UsageError, match=r"--detector-precision float \(now int8\)"):
        _check_resume_settings(out, LabelConfig())
    _check_resume_settings(out, LabelConfig(detector_precision="float"))
    (tmp_path / "out.run.json").write_text(json.dumps({"settings": {"detector_precision": "int8"}, "model": {}}))
    _check_resume_settings(out, LabelConfig())
