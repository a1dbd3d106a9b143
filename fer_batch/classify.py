"""The emotion classifier: one wrapper around an ONNX model that follows fer-batch's model contract.

The contract, written into the model's ``metadata_props`` by ``fer-train export``:

- ``fer_batch.labels``: JSON list of the class names, in output order;
- ``fer_batch.input``: JSON ``{"height": 48, "width": 48, "channels": 1, "layout": "NHWC", "color": "grey",
  "scale": "0-255"}`` - raw grey pixels as float32 (the model rescales them itself);
- ``fer_batch.output``: ``probabilities`` (softmax already applied) or ``logits``;
- ``fer_batch.training``: JSON summary of how it was trained (optional; the model card is built from it).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np

from fer_batch.labels import EMOTIONS
from fer_batch.onnx import ModelError, make_session

META_LABELS = "fer_batch.labels"
META_INPUT = "fer_batch.input"
META_OUTPUT = "fer_batch.output"
META_TRAINING = "fer_batch.training"


# The bundled model's copies, by --precision; the first is the default (INT8 labelled FER-2013 as accurately as the
# float model and ran its classifier 1.8x (AVX2) to 2.9x (AVX-512 VNNI) faster: README, Speed).
PRECISIONS = ("int8", "float")
_MODEL_FILES = {"int8": "emotion-int8.onnx", "float": "emotion.onnx"}


def default_model_path(precision: str = PRECISIONS[0]) -> Path:
    """The bundled model installed with the package, in ``precision``: "int8" (the default) its INT8 copy
    (``fer_batch/models/emotion-int8.onnx``, made by ``fer-train quantize``), "float" the float model
    (``emotion.onnx``, a copy of ``models/emotion.onnx``)."""
    if precision not in _MODEL_FILES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    name = _MODEL_FILES[precision]
    packaged = Path(str(resources.files("fer_batch") / "models" / name))
    if packaged.exists():
        return packaged
    repository = Path(__file__).resolve().parent.parent / "models" / name
    return repository if repository.exists() else packaged


def resolve_model(model: str | Path | None = None, precision: str | None = None) -> Path:
    """The model file a run uses: ``model`` as given (it has its own precision, so ``precision`` must then be
    None), else the bundled model in ``precision`` (None: the default, int8). ValueError for both, or an unknown
    precision."""
    if model and precision:
        raise ValueError(f"precision {precision!r} picks a copy of the bundled model; a model file ({model}) is used "
                         f"as given, so give one or the other")
    return Path(model) if model else default_model_path(precision or PRECISIONS[0])


class EmotionClassifier:
    """Classify 48x48 grey face crops with an ONNX model (default: the bundled model's INT8 copy); ``predict``
    returns (N, classes) probabilities."""

    def __init__(self, model_path: str | Path | None = None, threads: int = 0, providers: list[str] | None = None,
                 batch_size: int = 64):
        self.path = resolve_model(model_path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        self.session = make_session(str(self.path), threads=threads, providers=providers)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.labels, self.input_spec, self.output_kind = _read_contract(self.path, metadata, self.session)
        self.training = json.loads(metadata.get(META_TRAINING, "{}") or "{}")
        self.input_name = self.session.get_inputs()[0].name
        self.height, self.width = int(self.input_spec["height"]), int(self.input_spec["width"])
        self.batch_size = batch_size
        # Columns of the model's output in EMOTIONS order, so callers always see FER's label order.
        self._order = [self.labels.index(name) for name in EMOTIONS]

    def predict(self, faces: np.ndarray, timings: dict | None = None) -> np.ndarray:
        """Probabilities (N, 7), in EMOTIONS order, for uint8 grey faces (N, H, W) at the model's input size.
        ``timings``, when given, accumulates the seconds spent in onnxruntime under ``classify_onnx``."""
        if len(faces) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        if faces.shape[1:] != (self.height, self.width):
            raise ValueError(f"faces must be ({self.height}, {self.width}), got {faces.shape[1:]}")
        batch = faces.astype(np.float32)
        if self.input_spec.get("scale") == "0-1":
            batch /= 255.0
        batch = batch[:, None] if self.input_spec["layout"] == "NCHW" else batch[..., None]
        started = time.perf_counter()
        outputs = [self.session.run(None, {self.input_name: batch[i:i + self.batch_size]})[0]
                   for i in range(0, len(batch), self.batch_size)]
        if timings is not None:
            timings["classify_onnx"] = timings.get("classify_onnx", 0.0) + time.perf_counter() - started
        scores = np.concatenate(outputs).astype(np.float32)
        if self.output_kind == "logits":
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = scores / scores.sum(axis=1, keepdims=True)
        return scores[:, self._order]


def _read_contract(path: Path, metadata: dict, session) -> tuple[tuple[str, ...], dict, str]:
    """Labels, input spec and output kind from the metadata, checked against the graph's real shapes."""
    try:
        labels = tuple(json.loads(metadata[META_LABELS]))
        input_spec = json.loads(metadata[META_INPUT])
    except KeyError as missing:
        raise ModelError(f"{path}: not a fer-batch emotion model: metadata {missing} is missing "
                         f"(export models with `fer-train export`)") from None
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: malformed fer-batch metadata ({error})") from None
    output_kind = metadata.get(META_OUTPUT, "probabilities")
    if input_spec.get("layout") not in ("NHWC", "NCHW") or input_spec.get("channels") != 1:
        raise ModelError(f"{path}: unsupported input {input_spec}; fer-batch feeds one grey channel, NHWC or NCHW")
    if output_kind not in ("probabilities", "logits"):
        raise ModelError(f"{path}: unknown output kind {output_kind!r}")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one input, found {len(inputs)}")
    shape = inputs[0].shape
    expected = ([input_spec["height"], input_spec["width"], 1] if input_spec["layout"] == "NHWC"
                else [1, input_spec["height"], input_spec["width"]])
    if len(shape) != 4 or [d for d in shape[1:]] != expected:
        raise ModelError(f"{path}: input shape {shape} does not match its metadata (expected [batch, "
                         f"{', '.join(map(str, expected))}])")
    width = outputs[0].shape[-1]
    if isinstance(width, int) and width != len(labels):
        raise ModelError(f"{path}: {width} outputs but {len(labels)} labels")
    if sorted(labels) != sorted(EMOTIONS):
        raise ModelError(f"{path}: labels {list(labels)} are not the seven FER emotions {list(EMOTIONS)}")
    return labels, input_spec, output_kind
