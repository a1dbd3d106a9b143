"""Does the model run the same everywhere? The same real faces through onnxruntime (the reference) and every other
runtime found here, for each model: the largest |difference| of the probabilities and the top-class agreement.

    python benchmarks/portability.py --data ../shared/data/fer2013/fer2013.csv.gz --ortweb-dir /work/ortweb
    git show e3a8717:models/emotion.onnx > /tmp/old.onnx        # an older graph, to see where it fails
    python benchmarks/portability.py --model /tmp/old.onnx --model models/emotion.onnx

Runtimes: OpenCV's DNN module (cv2.dnn.readNetFromONNX; opencv-python is a dependency of fer-batch), fed the NHWC
input the graph declares and, to show the mistake, the NCHW blob cv2.dnn.blobFromImages makes; OpenVINO on CPU
with INFERENCE_PRECISION_HINT f32 and with its default precision (bf16 on CPUs that have it); and
onnxruntime-web's WebAssembly backend in Node (benchmarks/portability_ortweb.mjs, with --ortweb-dir a folder where
`npm install onnxruntime-web` was run). OpenVINO and onnxruntime-web are not dependencies of fer-batch: a runtime
that is not installed is reported as such. Each runtime runs the faces twice, in one batch of all of them and one
face at a time (what a C++ or browser caller often does); the figures are the worst of the two. The faces are the
first --faces PublicTest faces of --data (FER-2013), else the first of scikit-image's LFW faces, resized to 48x48.
Every runtime runs on one thread. Printed: a markdown table, then the results as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench import emit  # noqa: E402

DEFAULT_MODELS = ("models/emotion.onnx", "models/emotion-int8.onnx")
ORTWEB_SCRIPT = Path(__file__).resolve().parent / "portability_ortweb.mjs"
NODE_TIMEOUT_S = 300


class RuntimeMissing(Exception):
    """The runtime is not installed here (not a failure of the model)."""


class RuntimeFailed(Exception):
    """The runtime (``version``) is there but cannot load or run the model; the message says why."""

    def __init__(self, reason: str, version: str | None = None):
        super().__init__(reason)
        self.version = version


def load_faces(data: str | Path | None, count: int) -> tuple[np.ndarray, str]:
    """``count`` uint8 faces (N, 48, 48) and where they come from: FER-2013 PublicTest when ``data`` is given,
    else scikit-image's LFW subset (its first 100 images are faces)."""
    if data:
        if not Path(data).is_file():
            raise SystemExit(f"{data}: no such file (the FER-2013 CSV for --data)")
        from training.data import load

        faces = load(data).split("PublicTest")[0][:count]
        return faces, f"FER-2013 PublicTest, the first {len(faces)} ({Path(data).name})"
    import cv2
    from skimage import data as skimage_data

    lfw = skimage_data.lfw_subset()[:min(count, 100)]
    faces = np.stack([cv2.resize(np.round(face * 255).astype(np.uint8), (48, 48)) for face in lfw])
    return faces, f"scikit-image's LFW subset, the first {len(faces)} faces resized to 48x48"


def in_batches(run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int) -> np.ndarray:
    """``run`` on ``pixels`` ``batch`` faces at a time, the outputs as (N, classes)."""
    outputs = [np.asarray(run(pixels[start:start + batch])) for start in range(0, len(pixels), batch)]
    return np.concatenate([output.reshape(len(output), -1) for output in outputs])


def run_onnxruntime(path: Path, pixels: np.ndarray, batches: list[int]) -> tuple[str, dict[int, np.ndarray]]:
    import onnxruntime

    from fer_batch.onnx import ModelError, make_session

    try:
        session = make_session(str(path), threads=1, name=str(path))
    except ModelError as error:
        raise RuntimeFailed(str(error), onnxruntime.__version__) from None
    name = session.get_inputs()[0].name
    return onnxruntime.__version__, {batch: in_batches(lambda x: session.run(None, {name: x})[0], pixels, batch)
                                     for batch in batches}


def _opencv_reason(error: Exception) -> str:
    """The line of an OpenCV exception that names the failing node, else the whole message on one line."""
    lines = [line.strip("> ").strip() for line in str(error).splitlines()]
    return next((line for line in lines if line.startswith("Node [")), " ".join(filter(None, lines)))[:300]


def run_opencv(path: Path, pixels: np.ndarray, batches: list[int],
               feed: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[str, dict[int, np.ndarray]]:
    """OpenCV DNN on the faces as the graph's input says, NHWC (N, 48, 48, 1), or as ``feed`` makes them."""
    import cv2

    cv2.setNumThreads(1)
    opencv_logging = getattr(cv2.utils, "logging", None)  # not in every build (e.g. 4.8's headless wheel)
    if opencv_logging:
        opencv_logging.setLogLevel(opencv_logging.LOG_LEVEL_SILENT)  # a failure is reported in the table instead

    def forward(x: np.ndarray) -> np.ndarray:
        net.setInput(feed(x) if feed else x)
        return net.forward()

    try:
        net = cv2.dnn.readNetFromONNX(str(path))
        return cv2.__version__, {batch: in_batches(forward, pixels, batch) for batch in batches}
    except cv2.error as error:
        raise RuntimeFailed(_opencv_reason(error), cv2.__version__) from None


def run_opencv_nchw_blob(path: Path, pixels: np.ndarray, batches: list[int]) -> tuple[str, dict[int, np.ndarray]]:
    """OpenCV DNN fed what cv2.dnn.blobFromImages makes of the faces, (N, 1, 48, 48): the usual way to feed OpenCV,
    and a wrong one for this NHWC graph (kept in the table to show how wrong)."""
    import cv2

    return run_opencv(path, pixels, batches, lambda x: cv2.dnn.blobFromImages(list(x[..., 0])))


def openvino_runner(precision: str | None) -> Callable:
    """A runner for OpenVINO on CPU, with INFERENCE_PRECISION_HINT ``precision`` (None: OpenVINO's default)."""

    def run_openvino(path: Path, pixels: np.ndarray, batches: list[int]) -> tuple[str, dict[int, np.ndarray]]:
        try:
            import openvino
        except ImportError:
            raise RuntimeMissing("not installed (pip install openvino)") from None
        config = {"INFERENCE_NUM_THREADS": 1, **({"INFERENCE_PRECISION_HINT": precision} if precision else {})}
        version = f"{openvino.__version__.split('-')[0]}, CPU"
        try:
            compiled = openvino.Core().compile_model(str(path), "CPU", config)
            chosen = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what it really runs in
            return f"{version} {chosen}", {batch: in_batches(lambda x: compiled(x)[0], pixels, batch)
                                           for batch in batches}
        except RuntimeError as error:  # OpenVINO raises RuntimeError for a graph it cannot read or compile
            raise RuntimeFailed(" ".join(str(error).split())[:300], version) from None

    return run_openvino


def ortweb_runner(ortweb_dir: Path | None) -> Callable:
    """A runner for onnxruntime-web's wasm backend in Node (portability_ortweb.mjs), installed in ``ortweb_dir``."""

    def run_ortweb(path: Path, pixels: np.ndarray, batches: list[int]) -> tuple[str, dict[int, np.ndarray]]:
        node = shutil.which("node")
        if ortweb_dir is None:
            raise RuntimeMissing("not run (give --ortweb-dir, a folder where `npm install onnxruntime-web` ran)")
        if node is None:
            raise RuntimeMissing("not run: no `node` on PATH")
        with tempfile.TemporaryDirectory(prefix="fer-portability-") as work:
            faces, out = Path(work) / "faces.f32", Path(work) / "out.json"
            pixels.astype("<f4").tofile(faces)
            command = [node, str(ORTWEB_SCRIPT), str(ortweb_dir), str(path), str(faces),
                       ",".join(map(str, pixels.shape)), ",".join(map(str, batches)), str(out)]
            try:
                finished = subprocess.run(command, capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise RuntimeFailed(f"node did not finish within {NODE_TIMEOUT_S} s") from None
            if finished.returncode != 0 or not out.is_file():
                message = " ".join(finished.stderr.split())[-300:]
                if "is not installed there" in message:
                    raise RuntimeMissing(message)
                raise RuntimeFailed(f"node exited with status {finished.returncode}: {message}")
            result = json.loads(out.read_text())
        node_version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        version = f"{result['version']}, wasm, Node {node_version}"
        if "error" in result:
            raise RuntimeFailed(result["error"], version)
        return version, {batch: np.asarray(result["outputs"][str(batch)], np.float32) for batch in batches}

    return run_ortweb


def compare(expected: np.ndarray, got: dict[int, np.ndarray]) -> dict:
    """The worst max |difference| and top-class agreement over the batch sizes' outputs."""
    if any(output.shape != expected.shape for output in got.values()):
        shapes = ", ".join(f"batch {batch}: {output.shape}" for batch, output in got.items())
        raise RuntimeFailed(f"outputs of the wrong shape ({shapes}; onnxruntime {expected.shape})")
    difference = max(float(np.abs(output - expected).max()) for output in got.values())
    agree = min(int((output.argmax(1) == expected.argmax(1)).sum()) for output in got.values())
    return {"max_abs_difference": float(f"{difference:.3g}"), "top_class_agreement": agree}


def measure(path: Path, runtimes: dict[str, Callable], faces: np.ndarray, batches: list[int]) -> dict:
    """One model through onnxruntime and each of ``runtimes``: their versions and figures, or why they did not
    run."""
    pixels = faces.astype(np.float32)[..., None]
    record: dict = {"model": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "runtimes": {}}
    try:
        version, reference = run_onnxruntime(path, pixels, batches)
    except RuntimeFailed as error:
        record["runtimes"]["onnxruntime (reference)"] = {"status": "fails", "version": error.version,
                                                         "error": str(error)}
        return record
    expected = reference[max(batches)]
    # The reference's own row: one face at a time against one batch.
    record["runtimes"]["onnxruntime (reference)"] = {"status": "reference", "version": version,
                                                     **compare(expected, reference)}
    for name, run in runtimes.items():
        try:
            version, outputs = run(path, pixels, batches)
            try:
                record["runtimes"][name] = {"status": "runs", "version": version, **compare(expected, outputs)}
            except RuntimeFailed as failure:
                raise RuntimeFailed(str(failure), version) from None
        except RuntimeMissing as missing:
            record["runtimes"][name] = {"status": "not installed", "error": str(missing)}
        except RuntimeFailed as failure:
            record["runtimes"][name] = {"status": "fails", "version": failure.version, "error": str(failure)}
    return record


def table(records: list[dict], faces: int) -> str:
    """A markdown table: one row per runtime, one column per model."""
    names = list(dict.fromkeys(name for record in records for name in record["runtimes"]))
    header = ["runtime", *(f"`{record['model']}`" for record in records)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in names:
        versions = {record["runtimes"].get(name, {}).get("version") for record in records} - {None}
        cells = [f"{name} ({'; '.join(sorted(versions))})" if versions else name]
        for record in records:
            entry = record["runtimes"].get(name)
            if entry is None:
                cells.append("")
            elif entry["status"] in ("runs", "reference"):
                cells.append(f"max \\|diff\\| {entry['max_abs_difference']:.1e}, top class "
                             f"{entry['top_class_agreement']}/{faces}")
            elif entry["status"] == "fails":
                reason = entry["error"].replace("|", "\\|")
                cells.append(f"**fails**: {reason}")
            else:
                cells.append(entry["error"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", type=Path,
                        help="an ONNX model to check (repeatable; default: " + " and ".join(DEFAULT_MODELS) + ")")
    parser.add_argument("--data", help="the FER-2013 CSV, for real PublicTest faces (default: scikit-image's LFW)")
    parser.add_argument("--faces", type=int, default=64, help="how many faces (default 64)")
    parser.add_argument("--ortweb-dir", type=Path,
                        help="a folder where `npm install onnxruntime-web` was run (outside the repository)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    models = args.model or [REPO / name for name in DEFAULT_MODELS]
    for path in models:
        if not path.is_file():
            parser.error(f"{path}: no such model file")
    if args.faces < 1:
        parser.error(f"--faces {args.faces}: needs at least one face")
    faces, source = load_faces(args.data, args.faces)
    batches = [len(faces), 1]
    runtimes = {"OpenCV DNN": run_opencv, "OpenCV DNN fed cv2.dnn.blobFromImages (NCHW)": run_opencv_nchw_blob,
                "OpenVINO, f32 hint": openvino_runner("f32"),
                "OpenVINO, default precision": openvino_runner(None), "onnxruntime-web": ortweb_runner(args.ortweb_dir)}
    records = [measure(path, runtimes, faces, batches) for path in models]

    from fer_batch.system import describe_hardware

    print(table(records, len(faces)) + "\n")
    emit({"machine": describe_hardware(), "python": platform.python_version(), "faces": len(faces),
          "source": source, "batches": batches, "models": records}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
