"""Does `fer-train finetune` teach the model a small folder of photos of a new kind, judged on other people's faces
of that kind? And how long do `finetune` and `export` take?

With no labelled photo collection at hand, one is made from FER-2013's PublicTest faces (never seen in training):
``--photos`` of them (``--balanced``: the same number of each emotion, as someone posing the seven expressions
would give; else drawn at random), labelled by ``--labels`` (``fer``: FER-2013's own labels, another convention than
the FER+ votes the shipped model learnt, e.g. many faces FER+'s annotators call neutral are sad or angry in FER's
labels; ``ferplus``: FER+'s majority vote), and rendered as photos of ``--kind``:

- ``canvas``: the face enlarged x4 in the middle of a grey canvas (training/calibrate_crop.py's);
- ``photo``: what a camera gives instead: the face 150-230 px wide at a random place on a 400 x 400 colour picture,
  with a colour cast, light from one side, another gamma, sensor noise, and saved as JPEG (quality 55-85), each
  face's rendering seeded by its row.

The photos go into one folder per emotion, ``fer-train finetune`` runs on it with the options given after ``--``
(timed as a user would time it), and ``fer-train export`` writes its model (timed too). Both the starting model and
the fine-tuned one then label other people's faces rendered the same way: PrivateTest (``--split PrivateTest``,
for the figures we report) or the PublicTest faces not among the photos (``--split dev``, to choose defaults with),
each cut from its photo by the detector and crop ``fer-batch label`` uses (faces the detector misses are left out,
for both models). Scores: accuracy, mean per-class recall and per-class recall on the ``--labels`` convention, and
accuracy on the other convention beside them.

    python benchmarks/finetune_demo.py --photos 100 --balanced --labels fer --kind photo
    python benchmarks/finetune_demo.py --photos 100 --balanced --labels fer --kind photo --fer2013
    python benchmarks/finetune_demo.py --photos 100 --balanced --labels fer --kind photo --split dev --run b \\
        -- --lr 1e-4

Everything it writes (photos, crops, runs, models) goes under ``--work``, never into the repository (the data's
licence).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fer_batch.labels import EMOTIONS  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
VOTES = REPO.parent / "shared" / "data" / "fer2013" / "fer2013new.csv"
PHOTO_SIDE = 400


def render(face: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, bytes]:
    """A 48x48 grey face as a photo of ``kind``: the BGR picture fer-batch decodes, and the file's bytes."""
    if kind == "canvas":
        from training.calibrate_crop import place_on_canvas

        image = place_on_canvas(face)[0]
        return image, cv2.imencode(".png", image)[1].tobytes()
    rng = np.random.default_rng(seed)
    side = int(rng.integers(150, 231))
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    # A smooth background of another tone, the face pasted at a random place (faces fill the FER frame edge to edge).
    ys, xs = np.mgrid[0:PHOTO_SIDE, 0:PHOTO_SIDE].astype(np.float32) / PHOTO_SIDE
    grey = 60 + 120 * rng.random() + 40 * (xs * rng.uniform(-1, 1) + ys * rng.uniform(-1, 1))
    top, left = (int(v) for v in rng.integers(10, PHOTO_SIDE - side - 10, 2))
    grey[top:top + side, left:left + side] = big
    # Light from one side: brightness ramps across the picture.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle)
    grey = grey * (1 + rng.uniform(0.3, 0.6) * ramp)
    grey = 255 * np.clip(grey / 255, 0, 1) ** rng.uniform(0.7, 1.4)
    colour = grey[..., None] * (1 + rng.uniform(-0.25, 0.25, 3))[None, None]  # a colour cast (BGR gains)
    colour += rng.normal(0, 3.0, colour.shape)
    image = np.clip(colour, 0, 255).round().astype(np.uint8)
    encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 86))])[1].tobytes()
    return cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR), encoded


def choose_photos(labels: np.ndarray, candidates: np.ndarray, count: int, balanced: bool) -> np.ndarray:
    """``count`` rows of ``candidates`` (seeded): the same number of each class (as far as each has) or at random."""
    rng = np.random.default_rng(0)
    if not balanced:
        return np.sort(rng.permutation(candidates)[:count])
    classes = [rng.permutation(candidates[labels[candidates] == c]) for c in range(len(EMOTIONS))]
    chosen: list[int] = []
    while len(chosen) < count and any(len(rows) for rows in classes):
        for index, rows in enumerate(classes):  # one of each class in turn, while it has faces left
            if len(chosen) < count and len(rows):
                chosen.append(int(rows[0]))
                classes[index] = rows[1:]
    return np.sort(np.array(chosen))


def write_photos(folder: Path, images: np.ndarray, labels: np.ndarray, rows: np.ndarray, kind: str) -> None:
    for image, label, row in zip(images, labels, rows):
        _, encoded = render(image, kind, seed=int(row))
        target = folder / EMOTIONS[label] / f"face{row:05d}.{'png' if kind == 'canvas' else 'jpg'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encoded)


def cut_evaluation_faces(images: np.ndarray, rows: np.ndarray, kind: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each face rendered as a photo and cut from it as `fer-batch label` cuts it (largest face); the indices of
    those found."""
    if cache.exists():
        with np.load(cache) as stored:
            return stored["crops"], stored["found"]
    from fer_batch.recognizer import EmotionRecognizer
    from training.finetune import largest_face

    recognizer = EmotionRecognizer(precision="float")
    crops, found = [], []
    for index, (image, row) in enumerate(zip(images, rows)):
        crop, _, _ = largest_face(render(image, kind, seed=int(row))[0], recognizer)
        if crop is not None:
            crops.append(crop)
            found.append(index)
    crops, found = np.stack(crops), np.asarray(found)
    np.savez_compressed(cache, crops=crops, found=found)
    return crops, found


def scores(model: Path, crops: np.ndarray, labels: np.ndarray, other: np.ndarray | None) -> dict:
    from fer_batch.classify import EmotionClassifier
    from training.metrics import per_class_recall

    predicted = EmotionClassifier(model).predict(crops).argmax(axis=1)
    keep = labels >= 0
    recall = per_class_recall(labels[keep], predicted[keep])
    result = {"accuracy": round(float((predicted[keep] == labels[keep]).mean()), 4),
              "mean_recall": round(float(np.nanmean(recall)), 4),
              "recall": {name: round(float(r), 3) for name, r in zip(EMOTIONS, recall)}, "faces": int(keep.sum())}
    if other is not None:
        scored = other >= 0
        result["other_labels_accuracy"] = round(float((predicted[scored] == other[scored]).mean()), 4)
    return result


def table(before: dict, after: dict) -> str:
    lines = [f"{'':<18}{'before':>8}{'after':>8}"]
    for name in EMOTIONS:
        lines.append(f"recall {name:<11}{before['recall'][name]:>8.3f}{after['recall'][name]:>8.3f}")
    for key in ("mean_recall", "accuracy", "other_labels_accuracy"):
        if key in before:
            lines.append(f"{key:<18}{before[key]:>8.3f}{after[key]:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA), help=f"FER-2013 (default {DATA})")
    parser.add_argument("--ferplus-votes", default=str(VOTES),
                        help=f"fer2013new.csv, for --labels ferplus and the other convention's score (default {VOTES})")
    parser.add_argument("--work", default="/tmp/finetune-demo", help="folder for photos, crops, runs and models")
    parser.add_argument("--run", help="name of this fine-tuning run inside --work (default: from the options)")
    parser.add_argument("--photos", type=int, default=100, help="PublicTest faces written as photos (default 100)")
    parser.add_argument("--balanced", action="store_true", help="the same number of photos of each emotion")
    parser.add_argument("--labels", choices=("fer", "ferplus"), default="fer",
                        help="the photos' labels and the score: FER-2013's own (default) or FER+'s majority vote")
    parser.add_argument("--kind", choices=("photo", "canvas"), default="photo", help="how faces are shown (above)")
    parser.add_argument("--split", choices=("PrivateTest", "dev"), default="PrivateTest",
                        help="faces to score on: PrivateTest (report) or the other PublicTest faces (choose)")
    parser.add_argument("--fer2013", action="store_true",
                        help="fine-tune with --fer2013 DATA (FER-2013 Training faces mixed into every batch)")
    parser.add_argument("--init", default=str(REPO / "models" / "emotion.onnx"))
    parser.add_argument("finetune_args", nargs="*", help="after --: options for fer-train finetune")
    args = parser.parse_args(argv)

    from training.data import ferplus_labels, load

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    votes = args.ferplus_votes if Path(args.ferplus_votes).exists() else None
    if args.labels == "ferplus" and votes is None:
        raise SystemExit(f"{args.ferplus_votes}: not found; --labels ferplus needs FER+'s votes")
    dataset = load(args.data, ferplus_votes=votes)
    majority = ferplus_labels(dataset.ferplus_votes)[0] if votes else None
    labels, other = (dataset.labels, majority) if args.labels == "fer" else (majority, dataset.labels)

    public = np.flatnonzero((dataset.usage == "PublicTest") & (labels >= 0))
    chosen = choose_photos(labels, public, args.photos, args.balanced)
    name = f"{args.kind}-{args.labels}-{args.photos}{'-balanced' if args.balanced else ''}"
    photos = work / f"photos-{name}"
    if not photos.exists():
        write_photos(photos, dataset.images[chosen], labels[chosen], chosen, args.kind)
    counts = {emotion: len(list((photos / emotion).iterdir())) for emotion in EMOTIONS if (photos / emotion).exists()}

    if args.split == "dev":
        rows = np.setdiff1d(np.flatnonzero(dataset.usage == "PublicTest"), chosen)
    else:
        rows = np.flatnonzero(dataset.usage == "PrivateTest")
    crops, found = cut_evaluation_faces(dataset.images[rows], rows, args.kind,
                                        work / f"crops-{args.kind}-{args.split}-{name}.npz")
    rows = rows[found]

    # The starting model copied first: the same file starts the run and scores "before", whatever happens to --init.
    sha256 = hashlib.sha256(Path(args.init).read_bytes()).hexdigest()
    init = work / f"init-{sha256[:12]}.onnx"
    if not init.exists():
        shutil.copyfile(args.init, init)
    options = [a.lstrip("-") for a in args.finetune_args] + (["fer2013"] if args.fer2013 else [])
    run_name = args.run or "-".join([name, args.split, *options]).replace("/", "_")
    if args.fer2013:
        args.finetune_args = ["--fer2013", args.data, *args.finetune_args]
    run, model = work / run_name, work / f"{run_name}.onnx"
    if run.exists():
        raise SystemExit(f"{run}: exists; give another --run or delete it")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "training", "finetune", str(photos), "--out", str(run), "--init", str(init),
               *args.finetune_args]
    started, cpu_started = time.time(), _children_cpu()
    subprocess.run(command, check=True, env=env)
    # Wall time depends on what else the machine runs; the CPU seconds it used say what it costs.
    finetune_seconds, finetune_cpu = time.time() - started, _children_cpu() - cpu_started
    started, cpu_started = time.time(), _children_cpu()
    subprocess.run([sys.executable, "-m", "training", "export", str(run), "-o", str(model)], check=True, env=env,
                   capture_output=True)
    export_seconds, export_cpu = time.time() - started, _children_cpu() - cpu_started
    report = json.loads((run / "finetune.json").read_text())
    other_rows = other[rows] if other is not None else None
    result = {"command": " ".join(["python", "benchmarks/finetune_demo.py", *(argv if argv is not None
                                                                               else sys.argv[1:])]),
              "finetune_command": " ".join(["fer-train", *command[3:]]), "photos": counts, "split": args.split,
              "labels": args.labels, "kind": args.kind, "init": {"file": args.init, "sha256": sha256},
              "steps": report["steps"],
              "cross_validation": report["cross_validation"],
              "cross_validated_photos": {"accuracy": [report["accuracy_before"], report["accuracy_after"]],
                                         "mean_recall": [report["mean_recall_before"], report["mean_recall_after"]]},
              "finetune_seconds": round(finetune_seconds), "finetune_cpu_seconds": round(finetune_cpu),
              "export_seconds": round(export_seconds), "export_cpu_seconds": round(export_cpu),
              "load_average": round(os.getloadavg()[0], 1), "cpu": _cpu(),
              "before": scores(init, crops, labels[rows], other_rows),
              "after": scores(model, crops, labels[rows], other_rows)}
    (work / f"{run_name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\n{result['before']['faces']} faces of other people ({args.split}, {args.kind}, {args.labels} labels):")
    print(table(result["before"], result["after"]))
    return 0


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu() -> str:
    from fer_batch.system import describe_hardware

    return str(describe_hardware())


if __name__ == "__main__":
    sys.exit(main())
