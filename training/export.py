"""Export a trained Keras model to ONNX (tf2onnx), with fer-batch's metadata, then check parity.

``tf2onnx.convert.from_keras`` fails on Keras 3 (KeyError 'keras_tensor_...'), so the model is wrapped in a
``tf.function`` with an explicit input signature and converted with ``tf2onnx.convert.from_function``.

The graph is written to run wherever ONNX runs, OpenCV's DNN module included: the mirror for test-time averaging is
a Gather of constant column indices (``tf.reverse`` became ReverseSequence + Expand, which OpenCV cannot import) and
Flatten is a Reshape to a constant shape (-1, features) instead of one computed from the input's shape. Every export
is checked twice on real faces: Keras against onnxruntime, and OpenCV's DNN against onnxruntime (``check_opencv``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from fer_batch.classify import META_INPUT, META_LABELS, META_OUTPUT, META_TRAINING
from fer_batch.labels import EMOTIONS
from fer_batch.system import describe_hardware

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported model is wrong (e.g. onnxruntime and Keras disagree)."""


def resolve_model_path(model: str | Path) -> Path:
    """A .keras file, or a run folder's best.keras."""
    path = Path(model)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Keras model")
    return path


def load_float32(path: Path):
    """Load a .keras model and rebuild it in float32 (a bf16 mixed-precision model exports as plain float32)."""
    import keras

    model = keras.models.load_model(path, compile=False)
    config = model.get_config()
    for layer in config["layers"]:
        if "dtype" in layer["config"]:
            layer["config"]["dtype"] = "float32"
    clean = model.__class__.from_config(config)
    clean.set_weights(model.get_weights())
    return clean


def with_flip_averaging(model):
    """A model whose output averages the probabilities of each face and its mirror image (the mirror a Gather of
    constant column indices, which every ONNX runtime has)."""
    import keras

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    columns = np.arange(model.input_shape[2] - 1, -1, -1, dtype=np.int32)
    mirrored = keras.layers.Lambda(lambda x: keras.ops.take(x, columns, axis=2), name="mirror")(inputs)
    averaged = keras.layers.Average(name="probabilities")([model(inputs), model(mirrored)])
    return keras.Model(inputs, averaged, name=f"{model.name}_flip_avg")


def portable(model):
    """The same layers (shared weights) re-wired with each Flatten as a Reshape to (-1, features): a constant shape
    in the ONNX graph, not Shape/Slice/Concat (OpenCV's importer returned (N, 1, 7) for batches from those). The
    fer-train architectures are chains, which this relies on and checks."""
    import keras

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    x = inputs
    for layer in model.layers[1:]:
        if len(layer._inbound_nodes) != 1 or len(layer._inbound_nodes[0].input_tensors) != 1:
            raise ExportError(f"{model.name}: layer {layer.name} is not part of a chain; cannot re-wire it")
        if isinstance(layer, keras.layers.Flatten):
            features = int(np.prod(layer.input.shape[1:]))
            x = keras.layers.Lambda(lambda t, n=features: keras.ops.reshape(t, (-1, n)), name=layer.name)(x)
        else:
            x = layer(x)
    return keras.Model(inputs, x, name=model.name)


def output_shift(run: Path, prior_power: float | None) -> dict | None:
    """For a run trained with ``--logit-adjust``: the shift to bake into the logits' bias, ``power`` x log of the
    class prior (``prior_power`` None: the power the run chose on PublicTest with its best checkpoint)."""
    state_path = run / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if "class_prior" not in state:
        if prior_power is not None:
            raise ExportError(f"{run}: --prior-power needs a run trained with --logit-adjust (its state.json records "
                              "the class prior); this one has none")
        return None
    power = float(state.get("prior_power", 0.0) if prior_power is None else prior_power)
    prior = np.asarray(state["class_prior"], np.float64)
    return {"prior_power": power, "class_prior": [float(p) for p in prior],
            "chosen_on": "PublicTest" if prior_power is None else "--prior-power"}


def apply_output_shift(model, shift: dict) -> None:
    """Add ``prior_power * log(class_prior)`` to the logits layer's bias: softmax(logits + P log prior), no cost."""
    logits = model.get_layer("logits")
    bias = logits.bias.numpy() + shift["prior_power"] * np.log(np.asarray(shift["class_prior"]))
    logits.bias.assign(bias.astype(np.float32))


def training_summary(path: Path, model) -> dict:
    """What the model card and metadata say about training: recipe, epochs, PublicTest score, time, size."""
    from training.model import count_flops

    summary: dict = {"parameters": int(model.count_params()), "flops_per_face": count_flops(model),
                     "keras_file": path.name}
    if model.name == "fer_vgg":  # what a warm start rebuilds (a run folder's config.json says it too, below)
        convs = [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D"]
        summary["architecture"] = {"arch": "vgg", "widths": convs[::2]}
    run = path.parent
    if (run / "config.json").exists() and (run / "state.json").exists():
        from training.train import TrainConfig, describe_recipe

        config = TrainConfig.from_json(json.loads((run / "config.json").read_text()))
        state = json.loads((run / "state.json").read_text())
        summary.update(recipe=describe_recipe(config), data=Path(config.data).name,
                       ferplus_labels=bool(config.ferplus), epochs_trained=state.get("epochs_done"),
                       best_epoch=state.get("best_epoch"),
                       public_test_accuracy=round(float(state.get("best_val_accuracy", 0)), 4),
                       train_seconds=round(float(state.get("train_seconds", 0))),
                       hardware=state.get("hardware") or describe_hardware(), sessions=state.get("sessions", []),
                       architecture={"arch": config.arch, "widths": list(config.widths)})
        if state.get("best_scores"):
            summary["public_test_scores"] = state["best_scores"]
        if state.get("init"):  # the model it started from, with that model's own history: the chain of runs
            summary["started_from"] = state["init"]
        if state.get("averaged"):  # `fer-train average`: the runs whose weights were averaged, each with its record
            summary["averaged"] = state["averaged"]
    if (run / "teachers.npz").exists():
        from training.targets import TeacherTargets

        summary["teachers_public_test_accuracy"] = TeacherTargets.load(run / "teachers.npz").public_test_accuracy
    return summary


def parity_images(data: str | Path | None, count: int = 256) -> np.ndarray:
    """Real faces for the parity check: PublicTest images when the data is there, else scikit-image's astronaut."""
    if data and Path(data).exists():
        from training.data import load

        images, _ = load(data).split("PublicTest")
        return images[:count]
    import cv2

    from fer_batch.crop import crop_face, to_grey

    try:
        from skimage import data as skimage_data
    except ImportError as error:
        raise ExportError("parity check needs real faces: give --data, or install scikit-image") from error
    grey = to_grey(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    face = crop_face(grey, np.array([178, 57, 273, 177], np.float32), align=False)
    rng = np.random.default_rng(0)
    shifted = [np.roll(face, (int(dy), int(dx)), axis=(0, 1)) for dy, dx in rng.integers(-3, 4, (count, 2))]
    return np.stack(shifted)


def check_parity(model, onnx_path: Path, images: np.ndarray) -> float:
    """Largest absolute difference between Keras and onnxruntime probabilities; raises ExportError above 1e-4."""
    from fer_batch.onnx import make_session

    batch = images.astype(np.float32)[..., None]
    expected = np.asarray(model.predict(batch, verbose=0, batch_size=128))
    session = make_session(str(onnx_path))
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    difference = float(np.abs(expected - got).max())
    if not difference <= PARITY_TOLERANCE:
        raise ExportError(f"{onnx_path}: onnxruntime and Keras differ by {difference:.2e} on {len(images)} real "
                          f"faces (tolerance {PARITY_TOLERANCE:.0e}); the export is wrong")
    return difference


def check_opencv(onnx_path: Path, images: np.ndarray, tolerance: float = PARITY_TOLERANCE,
                 batch: int = 32) -> float:
    """Largest absolute difference between OpenCV DNN's and onnxruntime's probabilities on ``images`` (in batches
    of ``batch``); raises ExportError when OpenCV cannot load or run the file, or differs above ``tolerance``."""
    import cv2

    from fer_batch.onnx import make_session

    pixels = images.astype(np.float32)[..., None]
    session = make_session(str(onnx_path))
    expected = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    try:
        net = cv2.dnn.readNetFromONNX(str(onnx_path))
        got = []
        for start in range(0, len(pixels), batch):
            net.setInput(pixels[start:start + batch])
            got.append(np.asarray(net.forward()).reshape(-1, expected.shape[1]))
    except cv2.error as error:
        lines = [line.strip("> ").strip() for line in str(error).splitlines()]
        reason = next((line for line in lines if line.startswith("Node [")), " ".join(filter(None, lines)))[:300]
        raise ExportError(f"{onnx_path}: OpenCV {cv2.__version__}'s DNN module cannot run it: {reason}") from None
    difference = float(np.abs(np.concatenate(got) - expected).max())
    if not difference <= tolerance:
        raise ExportError(f"{onnx_path}: OpenCV {cv2.__version__}'s DNN and onnxruntime differ by {difference:.2e} "
                          f"on {len(images)} real faces (tolerance {tolerance:.0e})")
    return difference


def _from_onnx(path: Path, faces: np.ndarray):
    """A Keras model rebuilt from an exported fer-batch ONNX file and that file's own training summary: re-exports
    the same weights with today's graph."""
    from training.warmstart import keras_from_onnx, sha256_of

    start = keras_from_onnx(path, faces)
    summary = dict(start.training)
    summary["re_exported_from"] = {"file": path.name, "sha256": sha256_of(path)}
    return start.model, summary, start.test_time_flip_averaging


def export(model: str | Path, output: str | Path, data: str | Path | None = None, tta_flip: bool | None = None,
           opset: int = 17, prior_power: float | None = None) -> dict:
    """Convert a .keras model (or a run folder's best.keras, or an exported fer-batch .onnx file: the same weights
    in today's graph) to ONNX at ``output``; returns the training summary. ``tta_flip`` None: as the model the run
    started from (``--init``) or the .onnx file, else off. ``prior_power``: see output_shift."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from training.model import precision_policy

    # A run folder's own faces where it keeps them (fer-train finetune: RUN/faces.npz), else --data's.
    run_faces = (Path(model) if Path(model).is_dir() else Path(model).parent) / "faces.npz"
    faces = parity_images(run_faces if Path(model).suffix != ".onnx" and run_faces.is_file() else data)
    with precision_policy("float32"):  # a process that trained in bf16 exports float32 all the same
        if Path(model).suffix == ".onnx":
            path = Path(model)
            if prior_power is not None:
                raise ExportError(f"{path}: --prior-power applies to a run trained with --logit-adjust; an exported "
                                  "file's shift is already in its weights")
            keras_model, summary, recorded_flip = _from_onnx(path, faces)
            tta_flip = recorded_flip if tta_flip is None else tta_flip
        else:
            path = resolve_model_path(model)
            keras_model = load_float32(path)
            summary = training_summary(path, keras_model)
            shift = output_shift(path.parent, prior_power)
            if shift:
                apply_output_shift(keras_model, shift)
                summary["output_shift"] = shift
            if tta_flip is None:
                tta_flip = bool(summary.get("started_from", {}).get("test_time_flip_averaging", False))
        keras_model = portable(keras_model)
        if tta_flip:
            keras_model = with_flip_averaging(keras_model)
    summary["test_time_flip_averaging"] = tta_flip
    height, width, channels = keras_model.input_shape[1:]
    signature = (tf.TensorSpec((None, height, width, channels), tf.float32, name="pixels"),)

    @tf.function(input_signature=signature)
    def serve(pixels):
        return {"probabilities": keras_model(pixels, training=False)}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    metadata = {
        META_LABELS: json.dumps(list(EMOTIONS)),
        META_INPUT: json.dumps({"height": height, "width": width, "channels": channels, "layout": "NHWC",
                                "color": "grey", "scale": "0-255",
                                "framing": "FER-2013 (see fer_batch/crop.py)"}),
        META_OUTPUT: "probabilities",
        META_TRAINING: json.dumps(summary),
    }
    for key, value in metadata.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx_model.producer_name = "fer-train"
    onnx_model.doc_string = ("Facial emotion classifier for 48x48 grey faces (FER-2013). Input: float32 NHWC raw "
                             "pixels 0..255. Output: softmax probabilities over " + ", ".join(EMOTIONS) + ".")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(output))
    difference = check_parity(keras_model, output, faces)
    opencv = check_opencv(output, faces)
    log.info("exported %s -> %s (%d parameters, %.1f MFLOPs per face); parity max |diff| %.2e, OpenCV DNN %.2e",
             path, output, summary["parameters"], summary["flops_per_face"] / 1e6, difference, opencv)
    return summary
