"""Keras 3 CNN builders for 48x48 grey faces.

The models take raw grey pixels (float32, 0..255, NHWC) and rescale them inside the graph, so the exported ONNX
file carries its own normalisation. They end in a softmax over the 7 FER emotions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras
from keras import layers

from fer_batch.labels import EMOTIONS

INPUT_SHAPE = (48, 48, 1)
NUM_CLASSES = len(EMOTIONS)
ARCHITECTURES = ("vgg", "seed")


def make_model(input_shape: tuple[int, int, int] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
               arch: str = "vgg", widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.4) -> keras.Model:
    """Build an uncompiled classifier.

    ``vgg`` (default): four stages of two 3x3 conv + batch-norm + ReLU, max-pooled, then a 256-unit head. Chosen for
    accuracy per CPU-second: batch norm lets a short one-cycle schedule converge, and most of the compute sits at
    12x12 and below. ``seed``: the seed project's baseline (no batch norm, Dense 512), kept to reproduce its
    overfitting.
    """
    if arch == "vgg":
        return _vgg(input_shape, num_classes, widths, dropout)
    if arch == "seed":
        return _seed(input_shape, num_classes)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _vgg(input_shape, num_classes, widths, dropout) -> keras.Model:
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for stage, filters in enumerate(widths, start=1):
        x = _conv_bn_relu(x, filters, f"s{stage}a")
        x = _conv_bn_relu(x, filters, f"s{stage}b")
        x = layers.MaxPooling2D(2, name=f"s{stage}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="head_dropout1")(x)
    x = layers.Dense(256, use_bias=False, name="head_dense")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.Dropout(dropout, name="head_dropout2")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fer_vgg")


def _seed(input_shape, num_classes) -> keras.Model:
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fer_seed")


@contextmanager
def precision_policy(name: str | None = None) -> Iterator[None]:
    """Keras' global precision policy set to ``name`` (None: left as it is) inside the block, and restored after it:
    a process that trained in bf16 still builds float32 models to export or to warm-start from."""
    previous = keras.mixed_precision.global_policy()
    if name:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def count_flops(model: keras.Model) -> int:
    """Multiply-accumulates x2 for one face through the model's Conv2D and Dense layers (the bulk of the work)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            total += 2 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)
