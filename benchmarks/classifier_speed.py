"""Classifier speed alone: faces/s of the previous model and of new ones on the same faces, in one process.

    python benchmarks/classifier_speed.py                  # 2851c84's models/emotion.onnx vs models/emotion.onnx
    python benchmarks/classifier_speed.py --new models/emotion.onnx --new runs/emotion-int8.onnx --threads 1
    python benchmarks/classifier_speed.py --save-faces faces.npy    # then, elsewhere: --data faces.npy

Models are files or REV:PATH (extracted with `git show`). Each is loaded the way fer-batch loads it
(fer_batch.classify.EmotionClassifier, --threads intra-op threads, --batch faces per onnxruntime call). The faces
are real: FER-2013 PublicTest when --data exists, else crops of scikit-image's astronaut shifted by a few pixels.
After a warm-up, every round runs all --faces through every model, interleaved (the order rotates between rounds)
so that a background load slows them alike. Printed: the median faces/s over rounds, each model's ratio to the
old one (>= 1.0: no slower per face) and the range of the per-round ratios, which shows the noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_OLD = "2851c84:models/emotion.onnx"
DEFAULT_NEW = "models/emotion.onnx"


def resolve_model(spec: str, work: Path) -> Path:
    """A model file, or REV:PATH written out of git into ``work``."""
    if Path(spec).is_file():
        return Path(spec)
    if ":" not in spec:
        raise FileNotFoundError(f"{spec}: no such model file")
    revision, path = spec.split(":", 1)
    result = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], capture_output=True)
    if result.returncode != 0:
        raise FileNotFoundError(f"{spec}: git cannot show it ({result.stderr.decode().strip()})")
    extracted = work / f"{revision.replace('/', '_')}-{Path(path).name}"
    extracted.write_bytes(result.stdout)
    return extracted


def load_faces(data: str | Path | None, count: int) -> tuple[np.ndarray, str]:
    """``count`` uint8 faces (N, 48, 48), repeated if the source has fewer, and where they come from. ``data``: the
    FER-2013 file, or a ``.npy`` of faces written by ``save_faces`` (for a machine without the data or
    scikit-image, such as a lent GPU machine)."""
    if data and str(data).endswith(".npy") and Path(data).is_file():
        faces = np.load(data)
        source = f"{Path(data).name}"
    else:
        from training.export import parity_images

        faces = parity_images(data, count)
        source = "FER-2013 PublicTest" if data and Path(data).exists() else "scikit-image astronaut crops"
    return np.resize(faces, (count, *faces.shape[1:])), source


def save_faces(data: str | Path | None, count: int, output: Path) -> str:
    """Write the faces ``load_faces`` would use to ``output`` (.npy); returns where they come from."""
    faces, source = load_faces(data, count)
    np.save(output, faces.astype(np.uint8))
    return source


def measure(models: list[Path], faces: np.ndarray, threads: int = 2, batch: int = 32, rounds: int = 5) -> list[dict]:
    """Median faces/s of each model over ``rounds`` interleaved rounds on ``faces``, and its ratio to the first
    model's (``ratio``: of the medians; ``round_ratios``: round by round)."""
    from fer_batch.classify import EmotionClassifier

    classifiers = [EmotionClassifier(path, threads=threads, batch_size=batch) for path in models]
    for classifier in classifiers:  # warm-up: first-run allocations and kernel choices
        classifier.predict(faces[:2 * batch])
    seconds: list[list[float]] = [[] for _ in models]
    for round_index in range(rounds):
        order = [(round_index + offset) % len(models) for offset in range(len(models))]
        for index in order:
            started = time.perf_counter()
            classifiers[index].predict(faces)
            seconds[index].append(time.perf_counter() - started)
    speeds = [[len(faces) / s for s in model_seconds] for model_seconds in seconds]
    baseline = statistics.median(speeds[0])
    return [{"model": str(path), "faces_per_s": round(statistics.median(speed), 1),
             "ratio": round(statistics.median(speed) / baseline, 3),
             "round_ratios": [round(new / old, 3) for new, old in zip(speed, speeds[0])]}
            for path, speed in zip(models, speeds)]


def format_table(results: dict) -> str:
    """The results as a plain-text table, the old model first."""
    lines = [f"{results['faces']} faces ({results['face_source']}), batch {results['batch']}, {results['threads']} "
             f"thread(s), {results['rounds']} interleaved rounds; median faces/s",
             f"machine: {results['machine']}; onnxruntime {results['onnxruntime']}", "",
             f"{'model':<44}{'faces/s':>10}{'ratio':>8}   per-round ratios"]
    old, *new = results["models"]
    lines.append(f"{old['model'] + ' (old)':<44}{old['faces_per_s']:>10.1f}{old['ratio']:>8.2f}")
    for row in new:
        spread = f"{min(row['round_ratios']):.2f}-{max(row['round_ratios']):.2f}"
        lines.append(f"{row['model']:<44}{row['faces_per_s']:>10.1f}{row['ratio']:>8.2f}   {spread}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from training.data import DEFAULT_DATA

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default=DEFAULT_OLD, help=f"the previous model, a file or REV:PATH "
                                                           f"(default {DEFAULT_OLD})")
    parser.add_argument("--new", action="append", help=f"a model to compare; repeat for several "
                                                       f"(default {DEFAULT_NEW})")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--batch", type=int, default=32, help="faces per onnxruntime call (default 32)")
    parser.add_argument("--faces", type=int, default=2048, help="faces per round (default 2048)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model (default 5)")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"FER-2013 for real faces (default {DEFAULT_DATA})")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--save-faces", type=Path, metavar="FILE.npy",
                        help="only write the faces to FILE.npy (for --data FILE.npy on another machine) and exit")
    args = parser.parse_args(argv)
    if args.save_faces:
        print(f"wrote {args.faces} faces ({save_faces(args.data, args.faces, args.save_faces)}) to {args.save_faces}")
        return 0

    import onnxruntime

    from fer_batch.onnx import ModelError
    from fer_batch.system import describe_hardware

    specs = [args.old, *(args.new or [DEFAULT_NEW])]
    with tempfile.TemporaryDirectory(prefix="fer-classifier-speed-") as work:
        try:
            paths = [resolve_model(spec, Path(work)) for spec in specs]
            faces, source = load_faces(args.data, args.faces)
            rows = measure(paths, faces, threads=args.threads, batch=args.batch, rounds=args.rounds)
        except (FileNotFoundError, ModelError) as error:
            parser.error(str(error))
    for spec, row in zip(specs, rows):
        row["model"] = spec  # REV:PATH rather than the temporary file it was written to
    results = {"machine": describe_hardware(), "onnxruntime": onnxruntime.__version__, "threads": args.threads,
               "batch": args.batch, "faces": args.faces, "face_source": source, "rounds": args.rounds,
               "models": rows}
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
