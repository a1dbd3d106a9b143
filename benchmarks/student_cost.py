"""What a student may cost: faces/s of candidate model shapes against the previous model, before training any.

    python benchmarks/student_cost.py                                  # the default candidates, --threads 2
    python benchmarks/student_cost.py --widths 32,64,128,256 48,96,192,384 --threads 1

Speed does not depend on the weights, so each candidate is built untrained (training/model.py), exported like
`fer-train export` (with and without mirror averaging) and quantized like `fer-train quantize` (calibrated on
Training faces when the data is there; the parity check is skipped, since random weights say nothing about it).
Then benchmarks/classifier_speed.py's interleaved timing runs them all beside the previous model
(2851c84:models/emotion.onnx: widths 32-64-128-256, mirror averaging, float) and prints faces/s and the ratio:
a student whose ratio is >= 1.0 meets issue 10's speed bar on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DEFAULT_WIDTHS = ("32,64,128,256", "40,80,160,320", "48,96,192,384", "64,128,256,512")


def build(widths: tuple[int, ...], work: Path, data: str, calibrate: bool) -> list[tuple[str, Path]]:
    """Float and INT8 exports of an untrained model of ``widths``, with and without mirror averaging."""
    import keras
    import onnxruntime.quantization as ortq

    from training.export import export
    from training.model import count_flops, make_model
    from training.quantize import QUANTIZED_OPS, FaceBatches, calibration_faces

    keras.utils.set_random_seed(0)
    model = make_model(widths=widths)
    name = "-".join(map(str, widths))
    path = work / f"{name}.keras"
    model.save(path)
    mflops = count_flops(model) / 1e6
    built = []
    for flip in (False, True):
        label = f"{name} ({mflops:.0f} MFLOPs{' x2, mirror' if flip else ''})"
        onnx_path = work / f"{name}{'-flip' if flip else ''}.onnx"
        export(path, onnx_path, data=data if Path(data).exists() else None, tta_flip=flip)
        built.append((f"{label} float", onnx_path))
        int8 = onnx_path.with_suffix(".int8.onnx")
        prepared = onnx_path.with_suffix(".prep.onnx")
        ortq.shape_inference.quant_pre_process(str(onnx_path), str(prepared))
        if calibrate:
            from training.data import load

            faces = calibration_faces(load(data), 200)
        else:
            import numpy as np

            faces = np.random.default_rng(0).integers(0, 255, (200, 48, 48), np.uint8)
        ortq.quantize_static(str(prepared), str(int8), FaceBatches(faces, "pixels"), quant_format=ortq.QuantFormat.QDQ,
                             per_channel=True, reduce_range=True, activation_type=ortq.QuantType.QUInt8,
                             weight_type=ortq.QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS))
        _copy_metadata(onnx_path, int8)
        built.append((f"{label} int8", int8))
    return built


def _copy_metadata(source: Path, target: Path) -> None:
    import onnx

    model = onnx.load(str(target))
    del model.metadata_props[:]
    for entry in onnx.load(str(source)).metadata_props:
        model.metadata_props.add().CopyFrom(entry)
    onnx.save(model, str(target))


def main(argv: list[str] | None = None) -> int:
    from classifier_speed import DEFAULT_OLD, format_table, load_faces, measure, resolve_model

    from training.data import DEFAULT_DATA

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default=list(DEFAULT_WIDTHS), help="candidate stage widths")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--faces", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import logging

    import onnxruntime

    from fer_batch.system import describe_hardware

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="fer-student-cost-") as work:
        work = Path(work)
        candidates = [("previous (2851c84)", resolve_model(DEFAULT_OLD, work))]
        for widths in args.widths:
            candidates += build(tuple(int(w) for w in widths.split(",")), work, args.data, Path(args.data).exists())
        faces, source = load_faces(args.data, args.faces)
        rows = measure([path for _, path in candidates], faces, args.threads, args.batch, args.rounds)
    for (label, _), row in zip(candidates, rows):
        row["model"] = label
    results = {"machine": describe_hardware(), "onnxruntime": onnxruntime.__version__, "threads": args.threads,
               "batch": args.batch, "faces": args.faces, "face_source": source, "rounds": args.rounds,
               "models": rows}
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
