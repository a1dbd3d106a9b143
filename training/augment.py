"""Training-time augmentation in NumPy and OpenCV; it never reaches the exported graph.

It runs on the host beside any Keras backend (TensorFlow here, JAX on a lent GPU where TensorFlow is absent), so a
run's recipe means the same thing on both. Per face: one affine warp does flip, rotation, zoom and shift together
(a single resampling keeps the faces sharp), then brightness/contrast jitter, optional blur, low resolution and
JPEG artefacts (real footage is softer and more compressed than FER-2013's faces), and random erasing. Per batch:
optional mixup or cutmix, which mix the soft targets with the same weights as the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


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
    blur_probability: float = 0.0  # Gaussian blur, sigma from [0.4, 1.2]
    low_resolution_probability: float = 0.0  # shrink to 16..36 px and back up: small faces in wide shots
    jpeg_probability: float = 0.0  # re-encode as JPEG at quality 25..85
    mixup: float = 0.0  # Beta(a, a) for mixup's weight; 0 turns it off
    cutmix: float = 0.0  # Beta(a, a) for cutmix's area; 0 turns it off (with both on, each batch picks one)

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(flip=False, rotation_deg=0, zoom=0, shift=0, brightness=0, contrast=0, erase_probability=0)


def augment_batch(images: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Augment faces (B, H, W) of 0..255 pixels (any dtype); returns float32 (B, H, W) in 0..255."""
    images = np.asarray(images)
    batch, height, width = images.shape
    out = np.empty((batch, height, width), np.float32)
    uniform = lambda low, high: rng.uniform(low, high, batch)  # noqa: E731
    angle = uniform(-1.0, 1.0) * config.rotation_deg
    scale = uniform(1.0 - config.zoom, 1.0 + config.zoom)
    flip = rng.random(batch) < 0.5 if config.flip else np.zeros(batch, bool)
    shift = np.stack([uniform(-config.shift, config.shift) * width, uniform(-config.shift, config.shift) * height], 1)
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    identity = not (config.rotation_deg or config.zoom or config.shift)
    for i in range(batch):
        face = images[i].astype(np.float32)
        if flip[i]:
            face = face[:, ::-1]
        if not identity:
            matrix = cv2.getRotationMatrix2D(centre, float(angle[i]), float(scale[i]))
            matrix[:, 2] += shift[i]
            face = cv2.warpAffine(np.ascontiguousarray(face), matrix, (width, height), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT_101)
        out[i] = face
    if config.contrast or config.brightness:
        mean = out.mean(axis=(1, 2), keepdims=True)
        contrast = uniform(1.0 - config.contrast, 1.0 + config.contrast)[:, None, None]
        brightness = (uniform(-config.brightness, config.brightness) * 255.0)[:, None, None]
        out = (out - mean) * contrast + mean + brightness
    np.clip(out, 0.0, 255.0, out=out)
    for i in np.flatnonzero(rng.random(batch) < config.blur_probability):
        out[i] = cv2.GaussianBlur(out[i], (0, 0), float(rng.uniform(0.4, 1.2)))
    for i in np.flatnonzero(rng.random(batch) < config.low_resolution_probability):
        side = int(rng.integers(16, 37))
        small = cv2.resize(out[i], (side, side), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    for i in np.flatnonzero(rng.random(batch) < config.jpeg_probability):
        quality = int(rng.integers(25, 86))
        encoded = cv2.imencode(".jpg", out[i].round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        out[i] = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    if config.erase_probability > 0:
        _random_erase(out, config, rng)
    return out


def _random_erase(images: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> None:
    """Fill one random rectangle of each chosen image with uniform noise (Zhong et al., 2017), in place."""
    batch, height, width = images.shape
    for i in np.flatnonzero(rng.random(batch) < config.erase_probability):
        area = rng.uniform(*config.erase_area) * height * width
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        erase_h = int(round(min(max(math.sqrt(area * aspect), 1.0), height)))
        erase_w = int(round(min(max(math.sqrt(area / aspect), 1.0), width)))
        top = int(rng.integers(0, height - erase_h + 1))
        left = int(rng.integers(0, width - erase_w + 1))
        images[i, top:top + erase_h, left:left + erase_w] = rng.uniform(0.0, 255.0, (erase_h, erase_w))


def mix_batch(images: np.ndarray, targets: np.ndarray, config: AugmentConfig,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al., 2018) or cutmix (Yun et al., 2019) over a batch: each face is mixed with another face
    of the batch, and its target with that face's target by the same share. Returns new arrays."""
    kinds = [kind for kind, alpha in (("mixup", config.mixup), ("cutmix", config.cutmix)) if alpha > 0]
    if not kinds:
        return images, targets
    kind = kinds[int(rng.integers(len(kinds)))]
    partner = rng.permutation(len(images))
    if kind == "mixup":
        share = rng.beta(config.mixup, config.mixup, len(images)).astype(np.float32)
        mixed = images * share[:, None, None] + images[partner] * (1.0 - share)[:, None, None]
        return mixed, targets * share[:, None] + targets[partner] * (1.0 - share)[:, None]
    height, width = images.shape[1:3]
    mixed = images.copy()
    share = np.empty(len(images), np.float32)
    for i, lam in enumerate(rng.beta(config.cutmix, config.cutmix, len(images))):
        cut_h, cut_w = int(round(height * math.sqrt(1.0 - lam))), int(round(width * math.sqrt(1.0 - lam)))
        top, left = int(rng.integers(0, height - cut_h + 1)), int(rng.integers(0, width - cut_w + 1))
        mixed[i, top:top + cut_h, left:left + cut_w] = images[partner[i], top:top + cut_h, left:left + cut_w]
        share[i] = 1.0 - cut_h * cut_w / (height * width)
    return mixed, targets * share[:, None] + targets[partner] * (1.0 - share)[:, None]
