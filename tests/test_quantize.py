"""training/quantize.py and benchmarks/classifier_speed.py on a tiny float classifier built with onnx.helper:
the int8 copy loads through EmotionClassifier, keeps the metadata and agrees with the float model on real faces
(scikit-image's 100 LFW faces and their mirror images)."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO, write_real_fer_csv

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from fer_batch.classify import META_INPUT, META_LABELS, META_OUTPUT, META_TRAINING, EmotionClassifier  # noqa: E402
from fer_batch.labels import EMOTIONS  # noqa: E402
from fer_batch.onnx import ModelError  # noqa: E402
from training import quantize as quantize_module  # noqa: E402
from training.cli import main as fer_train  # noqa: E402


def tiny_classifier(path, seed: int = 1):
    """A fer-batch model like `fer-train export`'s, small: NHWC 0..255 in, two 3x3 conv + ReLU + max-pool
    stages, a dense layer, softmax out, with the fer-batch metadata. Its weights are random, so unlike a trained
    model it leaves many faces close to a class boundary; with seed 1 it picks four classes among the LFW faces."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weights(name, *shape, gain=2.0):  # He initialisation; a larger gain spreads the logits apart
        values = rng.standard_normal(shape) * np.sqrt(gain / np.prod(shape[1:] if len(shape) == 4 else shape[:1]))
        return numpy_helper.from_array(values.astype(np.float32), name)

    def zeros(name, size):
        return numpy_helper.from_array(np.zeros(size, np.float32), name)

    initializers = [numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
                    weights("w1", 8, 1, 3, 3), zeros("b1", 8), weights("w2", 16, 8, 3, 3), zeros("b2", 16),
                    numpy_helper.from_array(np.array([-1, 16 * 12 * 12], np.int64), "flat"),
                    weights("w3", 16 * 12 * 12, 7, gain=8.0), zeros("b3", 7)]
    nodes = [helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
             helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p2", "flat"], ["features"]),
             helper.make_node("MatMul", ["features", "w3"], ["m3"]),
             helper.make_node("Add", ["m3", "b3"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                            ["batch", 48, 48, 1])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 7])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fer-train")
    model.ir_version = 8
    metadata = {META_LABELS: json.dumps(list(EMOTIONS)), META_OUTPUT: "probabilities",
                META_INPUT: json.dumps({"height": 48, "width": 48, "channels": 1, "layout": "NHWC", "color": "grey",
                                        "scale": "0-255"}),
                META_TRAINING: json.dumps({"parameters": 1234})}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("float") / "tiny.onnx")


@pytest.fixture(scope="module")
def fer_data(tmp_path_factory, real_faces):
    """A FER-2013 CSV: half the real faces as Training, the other half as PublicTest, synthetic PrivateTest rows."""
    return write_real_fer_csv(tmp_path_factory.mktemp("data") / "fer2013.csv", real_faces)


@pytest.fixture(scope="module")
def quantized(float_model, fer_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    recipe = quantize_module.quantize(float_model, output, fer_data)
    return output, recipe


def test_int8_model_loads_keeps_metadata_and_is_quantized(float_model, quantized):
    output, recipe = quantized
    classifier = EmotionClassifier(output)
    assert classifier.labels == EMOTIONS and classifier.output_kind == "probabilities"
    source = {p.key: p.value for p in onnx.load(str(float_model)).metadata_props}
    written = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert set(written) == set(source)
    for key in (META_LABELS, META_INPUT, META_OUTPUT):
        assert written[key] == source[key]
    training = json.loads(written[META_TRAINING])
    assert training["parameters"] == 1234  # the float model's summary stays
    assert training["int8_quantization"]["calibration"] == {"data": "fer2013.csv", "split": "Training", "faces": 100,
                                                            "sampling": "random, seed 0", "method": "MinMax"}
    assert training["int8_quantization"]["source_sha256"] == hashlib.sha256(float_model.read_bytes()).hexdigest()
    graph = onnx.load(str(output)).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == 2  # both convolutions, per channel
    assert recipe["parity"]["faces"] == 100 and recipe["parity"]["top_class_agreement"] >= 0.97


def test_int8_model_agrees_with_the_float_model_on_real_faces(float_model, quantized, real_faces):
    expected = EmotionClassifier(float_model).predict(real_faces)
    got = EmotionClassifier(quantized[0]).predict(real_faces)
    assert (expected.argmax(1) == got.argmax(1)).mean() >= quantize_module.MIN_AGREEMENT
    assert np.abs(expected - got).mean() <= quantize_module.MAX_MEAN_DIFFERENCE
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_calibration_uses_training_faces_only(fer_data):
    from training.data import load

    dataset = load(fer_data)
    faces = quantize_module.calibration_faces(dataset, 1000)
    training, _ = dataset.split("Training")
    assert len(faces) == len(training) == 100  # capped at what there is
    assert {face.tobytes() for face in faces} <= {face.tobytes() for face in training}
    np.testing.assert_array_equal(quantize_module.calibration_faces(dataset, 10),
                                  quantize_module.calibration_faces(dataset, 10))  # fixed seed


def test_parity_check_fails_loudly(float_model, fer_data, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "MIN_AGREEMENT", 1.01)  # nothing can pass: the check must raise
    output = tmp_path / "int8.onnx"
    with pytest.raises(quantize_module.QuantizeError, match=f"{output}: the int8 model keeps"):
        quantize_module.quantize(float_model, output, fer_data, count=10)


def test_bad_input_files_are_named(fer_data, tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match=f"{garbage}: not a loadable ONNX model"):
        quantize_module.quantize(garbage, tmp_path / "out.onnx", fer_data)
    assert fer_train(["quantize", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "out.onnx"),
                      "--data", str(fer_data)]) == 2
    assert f"{tmp_path / 'missing.onnx'}: no such model file" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def load_benchmark():
    spec = importlib.util.spec_from_file_location("classifier_speed", REPO / "benchmarks" / "classifier_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classifier_speed_measures_both_models_and_the_ratio(float_model, quantized, real_faces):
    benchmark = load_benchmark()
    rows = benchmark.measure([float_model, quantized[0]], real_faces[:64], threads=1, batch=16, rounds=2)
    assert [row["model"] for row in rows] == [str(float_model), str(quantized[0])]
    assert all(row["faces_per_s"] > 0 and len(row["round_ratios"]) == 2 for row in rows)
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["faces_per_s"] / rows[0]["faces_per_s"], rel=0.01)
    table = benchmark.format_table({"machine": "test", "onnxruntime": "x", "threads": 1, "batch": 16, "faces": 64,
                                    "face_source": "astronaut", "rounds": 2, "models": rows})
    assert f"{rows[0]['model']} (old)" in table and str(quantized[0]) in table


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout")
def test_classifier_speed_reads_models_out_of_git(tmp_path):
    benchmark = load_benchmark()
    path = benchmark.resolve_model("HEAD:models/emotion.onnx", tmp_path)
    assert path.parent == tmp_path and EmotionClassifier(path).labels == EMOTIONS
    with pytest.raises(FileNotFoundError, match="HEAD:no/such.onnx: git cannot show it"):
        benchmark.resolve_model("HEAD:no/such.onnx", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such model file"):
        benchmark.resolve_model(str(tmp_path / "missing.onnx"), tmp_path)


def test_a_clean_train_install_can_quantize():
    """`pip install '.[train]'` brings everything `fer-train quantize` imports: onnxruntime's quantizer needs sympy
    for its shape inference, and onnxruntime >= 1.32 no longer installs it (a fresh install failed that way)."""
    import importlib.metadata
    import re

    requires = importlib.metadata.requires("fer-batch") or []
    train = {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
             for requirement in requires if re.search(r"extra\s*==\s*['\"]train['\"]", requirement)}
    assert {"onnx", "sympy", "tensorflow", "tf2onnx"} <= train, train
    import sympy  # noqa: F401 - what quant_pre_process imports when it runs
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: F401
