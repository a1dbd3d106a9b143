"""Training-time augmentation as a tf.data map over batches; it never reaches the exported graph.

One projective warp per image does flip, rotation, zoom and shift together (a single resampling keeps the faces
sharp), then brightness/contrast jitter and random erasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    rotation_deg: float = 10.0
    zoom: float = 0.1  # scale drawn from [1 - zoom, 1 + zoom]
    shift: float = 0.1  # translation as a share of the side
    brightness: float = 0.15  # added, as a share of 255
    contrast: float = 0.2  # multiplied around the image mean, from [1 - c, 1 + c]
    erase_probability: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.2)  # share of the image one erased rectangle covers


def augment_batch(images, config: AugmentConfig, seed: int | None = None):
    """Augment a float32 batch tensor (B, H, W, 1) of 0..255 pixels; returns the same shape and range."""
    import tensorflow as tf  # here, so the config (and `fer-train --help`) loads without TensorFlow

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    uniform = lambda low, high: tf.random.uniform([batch], low, high, seed=seed)  # noqa: E731

    angle = uniform(-1.0, 1.0) * (config.rotation_deg * math.pi / 180.0)
    scale = uniform(1.0 - config.zoom, 1.0 + config.zoom)
    flip = tf.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if config.flip else tf.ones([batch])
    shift_x = uniform(-config.shift, config.shift) * width
    shift_y = uniform(-config.shift, config.shift) * height
    # Output pixel (x, y) samples input at A @ (x - c) + c + t, with A = R(angle) S(1/scale) F(flip).
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a00, a01, a10, a11 = cos * flip, -sin, sin * flip, cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    b0 = cx - a00 * cx - a01 * cy + shift_x
    b1 = cy - a10 * cx - a11 * cy + shift_y
    zeros = tf.zeros([batch])
    transforms = tf.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[height, width], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")

    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    contrast = tf.reshape(uniform(1.0 - config.contrast, 1.0 + config.contrast), [-1, 1, 1, 1])
    brightness = tf.reshape(uniform(-config.brightness, config.brightness) * 255.0, [-1, 1, 1, 1])
    images = tf.clip_by_value((images - mean) * contrast + mean + brightness, 0.0, 255.0)

    if config.erase_probability > 0:
        images = _random_erase(images, config, seed)
    return images


def _random_erase(images, config: AugmentConfig, seed: int | None):
    """Fill one random rectangle per chosen image with uniform noise (Zhong et al., 2017)."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    area = tf.random.uniform([batch], *config.erase_area, seed=seed) * height * width
    aspect = tf.exp(tf.random.uniform([batch], math.log(0.3), math.log(3.3), seed=seed))
    erase_h = tf.clip_by_value(tf.sqrt(area * aspect), 1.0, height)
    erase_w = tf.clip_by_value(tf.sqrt(area / aspect), 1.0, width)
    top = tf.random.uniform([batch], 0.0, 1.0, seed=seed) * (height - erase_h)
    left = tf.random.uniform([batch], 0.0, 1.0, seed=seed) * (width - erase_w)
    rows = tf.range(height, dtype=tf.float32)[None, :, None]
    cols = tf.range(width, dtype=tf.float32)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + erase_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + erase_w)[:, None, None]))
    chosen = tf.random.uniform([batch], 0.0, 1.0, seed=seed) < config.erase_probability
    mask = (inside & chosen[:, None, None])[..., None]
    noise = tf.random.uniform(tf.shape(images), 0.0, 255.0, seed=seed)
    return tf.where(mask, noise, images)
