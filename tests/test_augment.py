"""training/augment.py: the NumPy/OpenCV augmentation every Keras backend trains with, on a real face."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE

from training.augment import AugmentConfig, augment_batch, mix_batch


@pytest.fixture(scope="module")
def faces(astronaut):
    from fer_batch.crop import crop_face, to_grey

    face = crop_face(to_grey(astronaut), np.array(ASTRONAUT_FACE, np.float32), align=False)
    return np.stack([face, face[:, ::-1], 255 - face, face // 2])


def test_no_augmentation_returns_the_faces(faces):
    out = augment_batch(faces, AugmentConfig.none(), np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == faces.shape
    np.testing.assert_array_equal(out, faces.astype(np.float32))


def test_default_augmentation_keeps_range_shape_and_the_face(faces):
    rng = np.random.default_rng(0)
    config = dataclasses.replace(AugmentConfig(), erase_probability=0.0)
    out = augment_batch(np.repeat(faces[:1], 64, axis=0), config, rng)
    assert out.shape == (64, 48, 48) and out.min() >= 0 and out.max() <= 255
    # Each augmented face still looks like the face (or its mirror image): high correlation, but not a copy.
    reference = faces[0].astype(np.float32).ravel()
    mirror = faces[0][:, ::-1].astype(np.float32).ravel()
    correlation = [max(np.corrcoef(o.ravel(), reference)[0, 1], np.corrcoef(o.ravel(), mirror)[0, 1]) for o in out]
    assert min(correlation) > 0.4 and np.median(correlation) < 0.99
    assert len({o.tobytes() for o in out}) == 64


def test_warp_moves_a_point_within_the_configured_bounds():
    dot = np.zeros((1, 48, 48), np.uint8)
    dot[0, 20:22, 30:32] = 255  # centre of mass (30.5, 20.5); the image centre is (23.5, 23.5)

    def centres(config, count=200):
        out = augment_batch(np.repeat(dot, count, axis=0), config, np.random.default_rng(0))
        ys, xs = np.mgrid[:48, :48]
        mass = out.sum(axis=(1, 2))
        return (out * xs).sum(axis=(1, 2)) / mass, (out * ys).sum(axis=(1, 2)) / mass

    x, y = centres(dataclasses.replace(AugmentConfig.none(), shift=0.1))
    assert np.abs(x - 30.5).max() <= 4.8 + 0.3 and np.abs(y - 20.5).max() <= 4.8 + 0.3
    assert np.abs(x - 30.5).max() > 3.5  # shifts use the range
    x, y = centres(dataclasses.replace(AugmentConfig.none(), rotation_deg=10))
    radius = np.hypot(x - 23.5, y - 23.5)
    np.testing.assert_allclose(radius, np.hypot(7, 3), atol=0.3)  # rotation about the centre keeps the distance
    angle = np.degrees(np.arctan2(y - 23.5, x - 23.5) - np.arctan2(-3, 7))
    assert np.abs(angle).max() <= 10.5 and np.abs(angle).max() > 8
    x, _ = centres(dataclasses.replace(AugmentConfig.none(), flip=True))
    assert set(np.round(x, 3)) == {30.5, 16.5}


def test_same_seed_same_batch(faces):
    config = dataclasses.replace(AugmentConfig(), blur_probability=0.5, low_resolution_probability=0.5,
                                 jpeg_probability=0.5)
    first = augment_batch(faces, config, np.random.default_rng((1, 2, 3)))
    again = augment_batch(faces, config, np.random.default_rng((1, 2, 3)))
    other = augment_batch(faces, config, np.random.default_rng((1, 2, 4)))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_robustness_augmentations_soften_and_compress(faces):
    face = faces[:1]
    sharpness = lambda image: cv2.Laplacian(image.astype(np.float32), cv2.CV_32F).var()  # noqa: E731
    base = AugmentConfig.none()
    for field in ("blur_probability", "low_resolution_probability"):
        out = augment_batch(face, dataclasses.replace(base, **{field: 1.0}), np.random.default_rng(0))
        assert sharpness(out[0]) < 0.8 * sharpness(face[0]), field
    out = augment_batch(face, dataclasses.replace(base, jpeg_probability=1.0), np.random.default_rng(0))
    assert 0 < np.abs(out[0] - face[0]).mean() < 10
    out = augment_batch(faces, dataclasses.replace(base, erase_probability=1.0), np.random.default_rng(0))
    changed = (out != faces).mean(axis=(1, 2))
    assert ((changed > 0.01) & (changed < 0.25)).all()


def test_mixup_and_cutmix_mix_targets_like_pixels(faces):
    images = faces.astype(np.float32)
    targets = np.eye(7, dtype=np.float32)[[0, 3, 5, 6]]
    unchanged = mix_batch(images, targets, AugmentConfig(), np.random.default_rng(0))
    assert unchanged[0] is images and unchanged[1] is targets
    for config in (AugmentConfig(mixup=0.4), AugmentConfig(cutmix=1.0)):
        mixed, mixed_targets = mix_batch(images, targets, config, np.random.default_rng(3))
        assert mixed.shape == images.shape and mixed_targets.shape == targets.shape
        np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-5)
        # Each face's own share of the target equals its share of the pixels: the face is a convex mix of
        # itself and one partner, so own pixels weigh exactly the own class's target.
        own = mixed_targets[np.arange(4), [0, 3, 5, 6]]
        assert ((own >= 0) & (own <= 1)).all() and (own < 1).any()
