"""Static INT8 quantization of an exported classifier (onnxruntime, QDQ, per-channel weights), calibrated on
Training faces, then a parity check against the float model on real faces.

The settings, measured on models/emotion.onnx on an AVX2 CPU without VNNI (benchmarks/classifier_speed.py):

- activations uint8, weights int8 per output channel: onnxruntime's x86 kernels are u8 x s8; int8 activations
  (zero point -128) compute the same numbers and ran no faster (0.96x);
- weights in 7 bits (``reduce_range``): without VNNI (AVX2, early AVX-512) the u8 x s8 kernel adds pairs of
  products in int16 (VPMADDUBSW), which saturates with 8-bit weights - the top class then matched the float
  model's on only 91 % of PublicTest (98.9 % when the same graph runs unfused) and accuracy fell 0.2 points; with
  7-bit weights 98.4 %, at the same speed;
- only Conv, MatMul, Gemm, MaxPool and Relu are quantized: the softmax, the mirror averaging and the output stay
  float, so probabilities are not rounded to steps of 1/256;
- the logits layer (the 256 x 7 Gemm) stays float: OpenCV's DNN misreads a quantized Gemm's per-channel bias
  (its probabilities were off by 0.84 with it quantized), and it is 0.1 % of the work. The copy is checked in
  OpenCV too (``OPENCV_TOLERANCE``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from fer_batch.classify import META_TRAINING, EmotionClassifier

log = logging.getLogger(__name__)

CALIBRATION_FACES = 1000
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 50
PARITY_FACES = 1000
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "MaxPool", "Relu")
# Parity with the float model on real faces. The top class may change only for faces the float model was unsure
# about; a broken quantization (e.g. saturating 8-bit weights on AVX2: 91 %, mean 0.020) fails both bounds.
MIN_AGREEMENT = 0.97  # share of faces whose top class stays the same, among those the float model is sure of
CONFIDENT = 0.6  # a face the float model gives at least this probability: its top class must survive quantization
MAX_MEAN_DIFFERENCE = 0.01  # mean |int8 - float| over all faces and classes
# OpenCV's DNN runs the QDQ graph with its own int8 kernels and rounding: measured within 5e-3 of onnxruntime's
# int8 probabilities on 1,000 PublicTest faces; a misread graph is off by tenths.
OPENCV_TOLERANCE = 0.02


class QuantizeError(ValueError):
    """The quantized model disagrees with the float model beyond the tolerance."""


def calibration_faces(dataset, count: int = CALIBRATION_FACES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """``count`` Training faces (N, 48, 48) uint8 of a training.data.Dataset, drawn at random with a fixed seed;
    never a test split."""
    images, _ = dataset.split("Training")
    if count < 1:
        raise ValueError(f"calibration needs at least one face, got {count}")
    chosen = np.random.default_rng(seed).choice(len(images), min(count, len(images)), replace=False)
    return images[np.sort(chosen)]


class FaceBatches:
    """onnxruntime's calibration data reader: batches of faces as the model's float32 NHWC input."""

    def __init__(self, faces: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH):
        self.batch = faces.astype(np.float32)[..., None]
        self.input_name, self.batch_size, self.start = input_name, batch_size, 0

    def get_next(self) -> dict | None:
        if self.start >= len(self.batch):
            return None
        self.start += self.batch_size
        return {self.input_name: self.batch[self.start - self.batch_size:self.start]}

    def rewind(self) -> None:
        self.start = 0


def check_parity(float_model: EmotionClassifier, quantized_path: Path, faces: np.ndarray) -> dict:
    """Top-class agreement and |probability difference| of the quantized model against the float one on
    ``faces``, loaded the way fer-batch loads models; raises QuantizeError outside the tolerance."""
    quantized = EmotionClassifier(quantized_path)
    expected, got = float_model.predict(faces), quantized.predict(faces)
    difference = np.abs(expected - got)
    same = expected.argmax(1) == got.argmax(1)
    # Faces the float model is unsure of (two classes close, common on a user's own photos) may change their top
    # class by a rounding; the faces it is sure of must not (none sure: all faces are judged).
    sure = expected.max(1) >= CONFIDENT
    judged = sure if sure.any() else np.ones(len(faces), bool)
    parity = {"faces": len(faces), "sure_faces": int(judged.sum()),
              "top_class_agreement": round(float(same[judged].mean()), 4),
              "top_class_agreement_all_faces": round(float(same.mean()), 4),
              "mean_abs_difference": round(float(difference.mean()), 5),
              "max_abs_difference": round(float(difference.max()), 4)}
    if parity["top_class_agreement"] < MIN_AGREEMENT or parity["mean_abs_difference"] > MAX_MEAN_DIFFERENCE:
        raise QuantizeError(
            f"{quantized_path}: the int8 model keeps the float model's top class on "
            f"{parity['top_class_agreement']:.1%} of the {parity['sure_faces']} of {len(faces)} real faces it gives "
            f"{CONFIDENT:g} or more (needs {MIN_AGREEMENT:.0%}) with mean |difference| "
            f"{parity['mean_abs_difference']:.4f} (needs <= {MAX_MEAN_DIFFERENCE}); do not use it")
    return parity


def logits_nodes(model, num_classes: int) -> list[str]:
    """Names of the MatMul/Gemm nodes whose constant weight has ``num_classes`` outputs: the logits layer."""
    from onnx import numpy_helper

    shapes = {tensor.name: numpy_helper.to_array(tensor).shape for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1
            and len(shapes.get(node.input[1], ())) == 2 and num_classes in shapes[node.input[1]]]


def quantize(model: str | Path, output: str | Path, data: str | Path, count: int = CALIBRATION_FACES,
             parity_faces: int = PARITY_FACES) -> dict:
    """Write an INT8 copy of the fer-batch model ``model`` to ``output``, calibrated on ``count`` Training faces
    of ``data``, with the source's metadata; returns how it was quantized and the parity figures."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from training.data import load

    source, output = Path(model), Path(output)
    float_model = EmotionClassifier(source)  # a ModelError naming the file unless it is a fer-batch model
    if output.resolve() == source.resolve():
        raise ValueError(f"{output}: the int8 model would overwrite the float model it is made from")
    dataset = load(data)
    faces = calibration_faces(dataset, count)
    with tempfile.TemporaryDirectory(prefix="fer-quantize-") as work:
        prepared, quantized_path = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        quant_pre_process(str(source), str(prepared))  # folds and fuses (MatMul+Add -> Gemm) before quantizing
        logits = logits_nodes(onnx.load(str(prepared)), len(float_model.labels))
        quantize_static(str(prepared), str(quantized_path), FaceBatches(faces, float_model.input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS),
                        nodes_to_exclude=logits)
        quantized = onnx.load(str(quantized_path))

    recipe = {"format": "QDQ", "activations": "uint8", "weights": "int8 per channel, 7-bit range",
              "operators": list(QUANTIZED_OPS), "float_nodes": "the logits layer", "source": source.name,
              "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "onnxruntime": onnxruntime.__version__,
              "calibration": {"data": Path(data).name, "split": "Training", "faces": len(faces),
                              "sampling": f"random, seed {CALIBRATION_SEED}", "method": "MinMax"}}
    original = onnx.load(str(source))
    metadata = {entry.key: entry.value for entry in original.metadata_props}
    training = json.loads(metadata.get(META_TRAINING, "{}") or "{}")
    metadata[META_TRAINING] = json.dumps({**training, "int8_quantization": recipe})
    del quantized.metadata_props[:]
    for key, value in metadata.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    quantized.producer_name = "fer-train"
    quantized.doc_string = f"{original.doc_string} INT8 (QDQ) copy, calibrated on Training faces.".strip()
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(output))

    public = dataset.split("PublicTest")[0][:parity_faces]
    recipe["parity"] = check_parity(float_model, output, public)
    from training.export import ExportError, check_opencv

    try:
        recipe["parity"]["opencv_max_abs_difference"] = round(check_opencv(output, public, OPENCV_TOLERANCE), 5)
    except ExportError as error:
        raise QuantizeError(str(error)) from None
    log.info("quantized %s -> %s (%.1f MB -> %.1f MB); on %d real faces the top class agrees %.1f %%, mean |diff| "
             "%.4f, max |diff| %.3f", source, output, source.stat().st_size / 1e6, output.stat().st_size / 1e6,
             recipe["parity"]["faces"], 100 * recipe["parity"]["top_class_agreement"],
             recipe["parity"]["mean_abs_difference"], recipe["parity"]["max_abs_difference"])
    return recipe
