"""Does `fer-train finetune` make the model better on other people's faces of the same kind, and how long does it take?

With no labelled photo collection at hand, one is built from FER+: ``--photos`` PublicTest faces, labelled by FER+'s
majority vote (ten annotators; they call far more faces neutral than FER-2013's own labels do), are enlarged x4 onto
a grey canvas (as training/calibrate_crop.py does) and written as PNG photos into one folder per emotion. Then
``fer-train finetune`` runs on that folder with the options given after ``--``, timed as a user would time it, and
``fer-train export`` writes its model. Both the starting model and the fine-tuned one then classify faces of other
people: PrivateTest (``--split PrivateTest``, for the figures we report) or the PublicTest faces not among the photos
(``--split dev``, to choose the defaults with), each cut from its own canvas by the detector and the crop
``fer-batch label`` uses (faces the detector misses are left out, for both models). Scores: accuracy and per-class
recall on FER+'s majority labels (faces whose majority is contempt, unknown or not a face, or tied, left out) and
accuracy on FER-2013's labels beside them.

    python benchmarks/finetune_demo.py --data /root/fer-runs/all.npz --work /tmp/finetune-demo --run a
    python benchmarks/finetune_demo.py --data /root/fer-runs/all.npz --work /tmp/finetune-demo --run b -- --lr 3e-4

The data needs FER+ votes inside (``fer-train pack --splits Training,PublicTest,PrivateTest --ferplus-votes
fer2013new.csv``). Everything it writes (photos, crops, runs, models) goes under ``--work``: never into the
repository (the data's licence).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fer_batch.labels import EMOTIONS  # noqa: E402


def ferplus_dataset(data: str):
    from training.data import ferplus_labels, load

    dataset = load(data)
    if dataset.ferplus_votes is None:
        raise SystemExit(f"{data}: no FER+ votes inside; pack it with --ferplus-votes fer2013new.csv")
    majority, _ = ferplus_labels(dataset.ferplus_votes)
    return dataset, majority


def write_photos(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from training.calibrate_crop import place_on_canvas

    for index, (image, label) in enumerate(zip(images, labels)):
        target = folder / EMOTIONS[label] / f"face{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), place_on_canvas(image)[0])


def cut_evaluation_faces(images: np.ndarray, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each face cut from its canvas as `fer-batch label` cuts it (largest face); the indices of those found."""
    if cache.exists():
        with np.load(cache) as stored:
            return stored["crops"], stored["found"]
    from fer_batch.recognizer import EmotionRecognizer
    from training.calibrate_crop import place_on_canvas
    from training.finetune import largest_face

    recognizer = EmotionRecognizer(precision="float")
    crops, found = [], []
    for index, image in enumerate(images):
        # The canvas the photos are written as (PNG: read back, the same pixels), through the photos' path.
        crop, _, _ = largest_face(place_on_canvas(image)[0], recognizer)
        if crop is not None:
            crops.append(crop)
            found.append(index)
    crops, found = np.stack(crops), np.asarray(found)
    np.savez_compressed(cache, crops=crops, found=found)
    return crops, found


def scores(model: Path, crops: np.ndarray, ferplus: np.ndarray, fer: np.ndarray) -> dict:
    from fer_batch.classify import EmotionClassifier
    from training.metrics import per_class_recall

    predicted = EmotionClassifier(model).predict(crops).argmax(axis=1)
    keep = ferplus >= 0
    recall = per_class_recall(ferplus[keep], predicted[keep])
    return {"ferplus_accuracy": round(float((predicted[keep] == ferplus[keep]).mean()), 4),
            "ferplus_mean_recall": round(float(np.nanmean(recall)), 4),
            "ferplus_recall": {name: round(float(r), 3) for name, r in zip(EMOTIONS, recall)},
            "fer_accuracy": round(float((predicted == fer).mean()), 4), "faces": int(len(predicted)),
            "ferplus_faces": int(keep.sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a `fer-train pack` file with all splits and FER+ votes")
    parser.add_argument("--work", required=True, help="folder for photos, crops, runs and models (not the repo)")
    parser.add_argument("--run", required=True, help="name of this fine-tuning run inside --work")
    parser.add_argument("--photos", type=int, default=400, help="PublicTest faces written as photos (default 400)")
    parser.add_argument("--split", choices=("PrivateTest", "dev"), default="PrivateTest",
                        help="faces to score on: PrivateTest (report) or the other PublicTest faces (choose)")
    parser.add_argument("--init", default=str(REPO / "models" / "emotion.onnx"))
    parser.add_argument("finetune_args", nargs="*", help="after --: options for fer-train finetune")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset, majority = ferplus_dataset(args.data)
    public = np.flatnonzero((dataset.usage == "PublicTest") & (majority >= 0))
    chosen = np.random.default_rng(0).permutation(public)[:args.photos]
    photos = work / f"photos-{args.photos}"
    if not photos.exists():
        write_photos(photos, dataset.images[chosen], majority[chosen])
    counts = {name: len(list((photos / name).glob("*.png"))) for name in EMOTIONS if (photos / name).exists()}

    if args.split == "dev":
        rows = np.setdiff1d(np.flatnonzero(dataset.usage == "PublicTest"), chosen)
    else:
        rows = np.flatnonzero(dataset.usage == "PrivateTest")
    crops, found = cut_evaluation_faces(dataset.images[rows], work / f"crops-{args.split}-{args.photos}.npz")
    rows = rows[found]

    run, model = work / args.run, work / f"{args.run}.onnx"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "training", "finetune", str(photos), "--out", str(run), "--init", args.init,
               *args.finetune_args]
    started, cpu_started = time.time(), _children_cpu()
    subprocess.run(command, check=True, env=env)
    # Wall time depends on what else the machine runs; the CPU seconds it used say what it costs.
    finetune_seconds, finetune_cpu_seconds = time.time() - started, _children_cpu() - cpu_started
    subprocess.run([sys.executable, "-m", "training", "export", str(run), "-o", str(model),
                    "--data", str(run / "faces.npz")], check=True, env=env, capture_output=True)
    result = {"command": " ".join(["fer-train", *command[3:]]), "photos": counts, "split": args.split,
              "finetune_seconds": round(finetune_seconds), "finetune_cpu_seconds": round(finetune_cpu_seconds),
              "load_average": os.getloadavg()[0], "cpu": _cpu(),
              "before": scores(Path(args.init), crops, majority[rows], dataset.labels[rows]),
              "after": scores(model, crops, majority[rows], dataset.labels[rows])}
    (work / f"{args.run}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
