"""The exported graph runs wherever ONNX runs: OpenCV's DNN module loads the shipped models and a fresh export and
gives onnxruntime's probabilities on real faces; the graph tf2onnx made of the old mirror (ReverseSequence +
Expand) is refused with the file's name; an exported file re-exports to the same function."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO

from fer_batch.onnx import make_session

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from training import export  # noqa: E402
from training.quantize import OPENCV_TOLERANCE  # noqa: E402

MODELS = REPO / "models"


@pytest.mark.parametrize("name, tolerance", [("emotion.onnx", export.PARITY_TOLERANCE),
                                             ("emotion-int8.onnx", OPENCV_TOLERANCE)])
def test_opencv_runs_the_shipped_models_as_onnxruntime_does(real_faces, name, tolerance):
    import cv2

    path = MODELS / name
    assert export.check_opencv(path, real_faces, tolerance) <= tolerance
    net = cv2.dnn.readNetFromONNX(str(path))
    session = make_session(str(path))
    pixels = real_faces[:32].astype(np.float32)[..., None]
    net.setInput(pixels)
    got = net.forward()
    assert got.shape == (32, 7)  # one row per face, as onnxruntime gives
    expected = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.97


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Keras model in the vgg architecture (random weights; batch norms with statistics as a trained model
    has, so every convolution gets a folded bias), as a .keras file."""
    import keras

    from training.model import make_model, precision_policy

    rng = np.random.default_rng(0)
    with precision_policy("float32"):
        model = make_model(widths=(8, 8, 16, 16))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, size), rng.normal(0, 0.1, size), rng.normal(0, 0.1, size),
                               rng.uniform(0.5, 1.5, size)])
    model.get_layer("logits").bias.assign(rng.normal(0, 0.3, 7).astype(np.float32))
    path = tmp_path_factory.mktemp("export") / "tiny.keras"
    model.save(path)
    return path


def test_a_fresh_export_is_portable_and_re_exports_to_the_same_function(tiny_model, real_faces, tmp_path):
    import onnx

    first = tmp_path / "first.onnx"
    export.export(tiny_model, first, data=None, tta_flip=True)
    graph = onnx.load(str(first)).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"ReverseSequence", "Expand", "Shape", "Slice", "Concat"}, ops
    assert export.check_opencv(first, real_faces) <= export.PARITY_TOLERANCE

    again = tmp_path / "again.onnx"
    summary = export.export(first, again, data=None)
    assert summary["re_exported_from"]["file"] == "first.onnx" and summary["test_time_flip_averaging"]
    pixels = real_faces.astype(np.float32)[..., None]
    outputs = [make_session(str(path)).run(None, {"pixels": pixels})[0] for path in (first, again)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    metadata = {entry.key: entry.value for entry in onnx.load(str(again)).metadata_props}
    assert json.loads(metadata["fer_batch.training"])["re_exported_from"]["file"] == "first.onnx"


def test_a_graph_opencv_cannot_run_is_refused_naming_the_file(tiny_model, real_faces, tmp_path):
    """The old export's mirror (keras.ops.flip: ReverseSequence + Expand in tf2onnx) fails OpenCV's importer."""
    import keras
    import tensorflow as tf
    import tf2onnx

    from training.model import precision_policy

    with precision_policy("float32"):
        model = export.load_float32(tiny_model)
        inputs = keras.Input((48, 48, 1), name="pixels")
        mirrored = keras.layers.Lambda(lambda x: keras.ops.flip(x, axis=2))(inputs)
        old = keras.Model(inputs, keras.layers.Average()([model(inputs), model(mirrored)]))
    signature = (tf.TensorSpec((None, 48, 48, 1), tf.float32, name="pixels"),)

    @tf.function(input_signature=signature)
    def serve(pixels):
        return {"probabilities": old(pixels, training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=17)
    path = tmp_path / "old-mirror.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(export.ExportError, match="old-mirror.onnx: OpenCV .* cannot run it"):
        export.check_opencv(path, real_faces)
