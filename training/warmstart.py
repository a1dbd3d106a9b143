"""Warm start: rebuild the Keras model of an exported fer-batch ONNX file and load its weights.

The shipped model is the checkpoint: every round of training starts from ``models/emotion.onnx`` (``fer-train
train --init``, ``fer-train finetune``) instead of from scratch. The ONNX file holds what tf2onnx left of the Keras
model: each convolution with its batch norm folded in (kernel ``W * gamma / sigma``, bias ``beta - gamma * mu /
sigma``), the head's batch norm as a Mul and an Add, mirror averaging baked in or not. The architecture comes from
the file's metadata (``fer_batch.training``: ``architecture``, or the recipe line of older exports) and is checked
against the weights' shapes.

Folded weights leave the batch-norm statistics to choose: any split of the bias between batch norm and convolution
computes the same function. We pick the one under which training behaves like inference: each batch norm's moving
mean and variance are those of its input on real faces, and its scale and shift undo them exactly. Then a batch
norm in training mode (batch statistics) starts where the exported model is, instead of rescaling every channel at
the first step. Before anything trains, Keras must reproduce the ONNX file's outputs on real faces within 1e-4.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4
CALIBRATION_FACES = 1024


class WarmStartError(ValueError):
    """The ONNX file cannot be turned back into a Keras model (names the file and why)."""


@dataclass
class WarmStart:
    """A Keras model (float32) holding an ONNX file's weights, and what it came from."""

    model: object  # keras.Model
    path: Path
    sha256: str
    arch: str
    widths: tuple[int, ...]
    test_time_flip_averaging: bool
    parity: float  # largest |Keras - onnxruntime| on the check's faces
    training: dict  # the file's own fer_batch.training metadata (its history)

    def record(self) -> dict:
        """What a run records about its starting point (config/state, model card)."""
        return {"file": self.path.name, "sha256": self.sha256, "arch": self.arch, "widths": list(self.widths),
                "test_time_flip_averaging": self.test_time_flip_averaging, "parity_max_abs_difference": self.parity,
                "training": self.training}


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def architecture_of(path: Path, training: dict) -> tuple[str, tuple[int, ...]]:
    """(arch, widths) recorded in the file's training metadata: ``architecture`` (exports since 0.3) or the recipe
    line ("vgg widths [32, 64, 128, 256]; ...") of older ones."""
    recorded = training.get("architecture")
    if isinstance(recorded, dict) and recorded.get("arch"):
        return recorded["arch"], tuple(int(w) for w in recorded.get("widths", ()))
    match = re.search(r"\b(vgg|seed) widths \[([\d,\s]+)\]", training.get("recipe", ""))
    if not match:
        raise WarmStartError(f"{path}: its metadata does not say which architecture it is (no 'architecture' or "
                             f"recipe in fer_batch.training); only models exported by fer-train can be trained on")
    return match.group(1), tuple(int(w) for w in match.group(2).split(","))


def _onnx_weights(path: Path, graph) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple]:
    """The convolutions' (kernel OIHW, bias) in order, and the head's (dense kernel, bn scale, bn shift, logits
    kernel, logits bias), found by walking the graph (names differ between tf2onnx versions; the shape does not)."""
    from onnx import numpy_helper

    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:  # constants may also be Constant nodes
        if node.op_type == "Constant" and node.attribute:
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def follow(node, op_type):
        nexts = [n for n in consumers.get(node.output[0], []) if n.op_type == op_type]
        if len(nexts) != 1:
            raise WarmStartError(f"{path}: expected one {op_type} after {node.op_type} {node.name}; the graph is not "
                                 f"a fer-train export of a vgg model")
        return nexts[0]

    def constant(node, position=1):
        name = node.input[position]
        if name not in values:
            raise WarmStartError(f"{path}: {node.op_type} {node.name} has no constant weight")
        return values[name]

    convs, seen = [], set()
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] not in seen:
            seen.add(node.input[1])
            if len(node.input) < 3:
                raise WarmStartError(f"{path}: convolution {node.name} has no folded bias")
            convs.append((constant(node, 1), constant(node, 2)))
    dense = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    by_weight: dict[str, object] = {}
    for node in dense:
        by_weight.setdefault(node.input[1], node)
    if len(by_weight) != 2:
        raise WarmStartError(f"{path}: expected two dense layers (head and logits), found {len(by_weight)}")
    head, logits = sorted(by_weight.values(), key=lambda n: -constant(n).shape[1])
    if head.op_type != "MatMul" or logits.op_type != "MatMul":
        raise WarmStartError(f"{path}: dense layers exported as Gemm are not supported")
    scale_node = follow(head, "Mul")
    shift_node = follow(scale_node, "Add")
    bias_node = follow(logits, "Add")

    def other(node, produced):
        name = node.input[1] if node.input[0] == produced else node.input[0]
        if name not in values:
            raise WarmStartError(f"{path}: {node.op_type} {node.name} has no constant operand")
        return values[name]

    head_weights = (constant(head), other(scale_node, head.output[0]), other(shift_node, scale_node.output[0]),
                    constant(logits), other(bias_node, logits.output[0]))
    return convs, head_weights


def keras_from_onnx(path: str | Path, faces: np.ndarray) -> WarmStart:
    """Rebuild the float32 Keras model of the fer-batch ONNX file ``path``, its batch norms calibrated on
    ``faces`` (N, 48, 48) uint8, and check it reproduces the file on those faces within 1e-4."""
    import keras
    import onnx

    from fer_batch.classify import META_TRAINING, EmotionClassifier
    from fer_batch.onnx import ModelError
    from training.model import make_model, precision_policy

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model")
    try:
        classifier = EmotionClassifier(path)
    except ModelError as error:
        raise WarmStartError(str(error)) from None
    proto = onnx.load(str(path))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    training = json.loads(metadata.get(META_TRAINING, "{}") or "{}")
    if "int8_quantization" in training:
        raise WarmStartError(f"{path}: an INT8 copy; train from the float model it was made from "
                             f"({training['int8_quantization'].get('source', 'its source')})")
    arch, widths = architecture_of(path, training)
    if arch != "vgg":
        raise WarmStartError(f"{path}: warm starts support the vgg architecture, not {arch!r}")
    flip = bool(training.get("test_time_flip_averaging", False))
    convs, (dense_kernel, head_scale, head_shift, logits_kernel, logits_bias) = _onnx_weights(path, proto.graph)

    with precision_policy("float32"):
        model = make_model(arch=arch, widths=widths)
    conv_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if len(conv_layers) != len(convs):
        raise WarmStartError(f"{path}: {len(convs)} convolutions in the file, {len(conv_layers)} in a vgg of widths "
                             f"{list(widths)}")
    for layer, (kernel, _) in zip(conv_layers, convs):
        keras_kernel = np.transpose(kernel, (2, 3, 1, 0))  # OIHW -> HWIO
        if tuple(layer.kernel.shape) != keras_kernel.shape:
            raise WarmStartError(f"{path}: {layer.name} is {tuple(layer.kernel.shape)} in the architecture, "
                                 f"{keras_kernel.shape} in the file")
        layer.kernel.assign(keras_kernel)
    head_dense, logits = model.get_layer("head_dense"), model.get_layer("logits")
    for layer, kernel in ((head_dense, dense_kernel), (logits, logits_kernel)):
        if tuple(layer.kernel.shape) != kernel.shape:
            raise WarmStartError(f"{path}: {layer.name} is {tuple(layer.kernel.shape)} in the architecture, "
                                 f"{kernel.shape} in the file")
        layer.kernel.assign(kernel)
    logits.bias.assign(logits_bias.reshape(-1))

    # Batch norms: y = scale * z + shift, with z the layer's input, exactly as the file computes it; the moving
    # statistics are z's own on real faces, so training mode starts close to inference.
    norms = [model.get_layer(layer.name.replace("_conv", "_bn")) for layer in conv_layers]
    norms.append(model.get_layer("head_bn"))
    scales = [np.ones_like(bias, np.float32) for _, bias in convs] + [head_scale.reshape(-1)]
    shifts = [bias.reshape(-1) for _, bias in convs] + [head_shift.reshape(-1)]
    inputs = [layer.output for layer in conv_layers] + [head_dense.output]
    probe = keras.Model(model.input, inputs)
    calibration = faces[:CALIBRATION_FACES].astype(np.float32)[..., None]
    # First each norm computes scale * z + shift with neutral statistics (mean 0, variance 1 - epsilon), so the
    # model is the file's and one pass gives every norm's input; then each takes its input's own statistics.
    for norm, scale, shift in zip(norms, scales, shifts):
        norm.set_weights([scale, shift, np.zeros_like(scale), np.full_like(scale, 1.0 - norm.epsilon)])
    for norm, outputs, scale, shift in zip(norms, probe.predict(calibration, batch_size=256, verbose=0), scales,
                                           shifts):
        axes = tuple(range(outputs.ndim - 1))
        mean, variance = outputs.mean(axis=axes), outputs.var(axis=axes)
        std = np.sqrt(variance + norm.epsilon)
        norm.set_weights([scale * std, shift + scale * mean, mean, variance])

    check = faces[:256].astype(np.float32)[..., None]
    expected = classifier.session.run(None, {classifier.input_name: check})[0]
    got = model.predict(check, batch_size=256, verbose=0)
    if flip:
        got = (got + model.predict(check[:, :, ::-1], batch_size=256, verbose=0)) / 2
    difference = float(np.abs(np.asarray(got) - expected).max())
    if not difference <= PARITY_TOLERANCE:
        raise WarmStartError(f"{path}: the Keras model rebuilt from it differs from the file by {difference:.2e} on "
                             f"{len(check)} real faces (tolerance {PARITY_TOLERANCE:.0e}); it cannot be trained on")
    log.info("warm start from %s (%s widths %s, mirror averaging %s): Keras matches it within %.1e on %d faces",
             path, arch, list(widths), flip, difference, len(check))
    return WarmStart(model, path, sha256_of(path), arch, widths, flip, difference, training)
