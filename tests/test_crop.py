"""fer_batch/crop.py: the crop geometry maps boxes and landmarks onto the FER-2013 frame."""

from __future__ import annotations

import cv2
import numpy as np

from fer_batch import crop


def test_box_matrix_maps_the_frame_onto_48_pixels():
    box = np.array([100, 50, 200, 150], np.float32)
    matrix = crop.box_crop_matrix(box, scale=1.0, shift_x=0.0, shift_y=0.0)
    corners = np.array([[100, 50, 1], [200, 150, 1]], np.float32) @ matrix.T
    np.testing.assert_allclose(corners, [[0, 0], [48, 48]], atol=1e-4)


def test_aligned_crop_levels_the_eyes_and_hits_the_template():
    angle = 20.0
    rotation = cv2.getRotationMatrix2D((24, 24), angle, 4.0)  # the FER template, rotated and enlarged x4
    rotation[:, 2] += [200, 150]
    points = np.hstack([crop.FER_LANDMARKS, np.ones((5, 1), np.float32)]) @ rotation.T
    matrix = crop.aligned_crop_matrix(points.astype(np.float32))
    mapped = np.hstack([points, np.ones((5, 1))]) @ matrix.T
    np.testing.assert_allclose(mapped, crop.FER_LANDMARKS, atol=0.05)
    assert crop.aligned_crop_matrix(np.full((5, 2), np.nan, np.float32)) is None


def test_crop_of_a_known_face_reproduces_it():
    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur(rng.integers(0, 255, (48, 48)).astype(np.uint8), (5, 5), 0)
    frame = np.full((600, 800), 128, np.uint8)
    frame[100:340, 300:540] = cv2.resize(face, (240, 240), interpolation=cv2.INTER_CUBIC)  # x5
    box = np.array([300, 100, 540, 340], np.float32)
    # The big face goes through the area-averaging path (zoom 0.2): the result must still match the original.
    with_matrix = cv2.warpAffine(frame, crop.box_crop_matrix(box, 1.0, 0.0, 0.0), (48, 48))
    shrunk, matrix = crop._shrink_region(frame, crop.box_crop_matrix(box, 1.0, 0.0, 0.0), 2)
    via_shrink = cv2.warpAffine(shrunk, matrix, (48, 48))
    assert np.abs(via_shrink.astype(float) - with_matrix).mean() < 6
    assert np.abs(via_shrink.astype(float) - face).mean() < np.abs(np.roll(face, 3, 0).astype(float) - face).mean()


def test_crop_face_shapes_and_grey_conversion(astronaut):
    grey = crop.to_grey(astronaut)
    assert grey.shape == astronaut.shape[:2]
    box = np.array([178, 57, 273, 177], np.float32)
    assert crop.crop_face(grey, box, None, align=True).shape == (48, 48)
    assert crop.crop_face(grey, box, None, align=False, framing="haar").dtype == np.uint8
    face = grey[100:148, 200:248]
    whole = crop.crop_face(face, np.array([0, 0, 48, 48], np.float32), framing="whole")
    np.testing.assert_array_equal(whole, face)  # a pre-cropped 48x48 face goes through untouched
    assert crop.to_grey(np.dstack([grey, grey, grey, grey])).shape == grey.shape
