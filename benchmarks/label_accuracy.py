"""Accuracy through the whole product: FER-2013 faces as image files, labelled by `fer-batch label`, scored.

    python benchmarks/label_accuracy.py --data ../shared/data/fer2013/fer2013.csv.gz \
        --ferplus ../shared/data/fer2013/fer2013new.csv
    python benchmarks/label_accuracy.py ... --options "--precision float"
    python benchmarks/label_accuracy.py ... --kind photo      # or --kind frame: faces as photos, with the detector

`fer-train evaluate` scores a model through the classifier wrapper; this runs what a user runs. Each face of the
split (default PrivateTest) is written as a 48x48 PNG (lossless), `fer-batch label DIR --detector none` labels the
folder (each image is one pre-cropped face; the default model, INT8, unless --options says otherwise), and the
CSV's top emotions are scored against FER's labels and, with --ferplus, FER+'s majority labels (the definition of
`fer-train evaluate --ferplus`). Prints JSON: accuracy, mean per-class recall, the weakest class and every class's
recall for each label set.

``--kind`` shows the faces as something other than FER-2013's crops, through the whole path a user runs (RetinaFace,
the crop, the classifier): ``photo`` puts each face, enlarged to 160-240 px, tinted and feathered into the middle
of a 480x400 colour background (a crop of one of scikit-image's photographs), as a JPEG of quality 80-92;
``frame`` puts it, 90-150 px, at a random place in a 1280x720 frame (PNG). Faces the detector misses are counted
(``found``) and scored as wrong; where it finds several, the one nearest the pasted face counts.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="fer2013.csv(.gz) or a `fer-train pack` file")
    parser.add_argument("--ferplus", help="fer2013new.csv: also score FER+'s majority labels")
    parser.add_argument("--split", default="PrivateTest")
    parser.add_argument("--options", default="", help="more label options, e.g. '--precision float'")
    parser.add_argument("--kind", choices=("crop", "photo", "frame"), default="crop",
                        help="crop: 48x48 PNGs, --detector none (default); photo / frame: the face in a colour "
                             "photo or a 720p frame, found by the detector")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from bench import emit

    from fer_batch.labels import EMOTIONS
    from fer_batch.system import describe_hardware
    from training import data as fer_data
    from training.evaluate import mean_recall, metrics

    dataset = fer_data.load(args.data, None, args.ferplus)
    images, fer_labels = dataset.split(args.split)
    label_sets = {"FER-2013": fer_labels}
    if args.ferplus:
        label_sets["FER+ majority"] = fer_data.ferplus_labels(dataset.votes(args.split))[0]
    work = Path(tempfile.mkdtemp(prefix="fer-batch-label-accuracy-"))
    folder = work / args.split
    folder.mkdir()
    rng = np.random.default_rng(0)
    backgrounds = _backgrounds() if args.kind != "crop" else []
    centres = {}
    for index, face in enumerate(images):
        if args.kind == "crop":
            cv2.imwrite(str(folder / f"{index:05d}.png"), face)
        else:
            image, centres[f"{index:05d}"] = render(face, args.kind, backgrounds, rng)
            name = f"{index:05d}.jpg" if args.kind == "photo" else f"{index:05d}.png"
            quality = [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 93))] if args.kind == "photo" else []
            cv2.imwrite(str(folder / name), image, quality)
    output = work / "labels.csv"
    detector = ["--detector", "none"] if args.kind == "crop" else []
    command = [sys.executable, "-m", "fer_batch", "label", str(folder), "-o", str(output), *detector,
               "--quiet", *args.options.split()]
    subprocess.run(command, check=True, cwd=REPO)
    rows: dict[str, list[dict]] = {}
    with open(output, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["emotion"]:
                rows.setdefault(Path(row["source"]).stem, []).append(row)
    missing = [f"{i:05d}" for i in range(len(images)) if f"{i:05d}" not in rows]
    if missing and args.kind == "crop":  # --detector none gives every image one face: anything else is a failure
        raise SystemExit(f"{len(missing)} faces got no label (e.g. {missing[0]}.png); see {output}")
    predicted = np.full(len(images), -1)
    for stem, found in rows.items():
        row = found[0] if args.kind == "crop" else min(found, key=lambda r: _distance(r, centres[stem]))
        predicted[int(stem)] = EMOTIONS.index(row["emotion"])
    results: dict = {"machine": describe_hardware(), "split": args.split, "kind": args.kind, "faces": len(images),
                     "found": int((predicted >= 0).sum()),
                     "command": " ".join(["fer-batch", *command[3:]]).replace(str(work), "DIR")}
    for name, labels in label_sets.items():
        keep = labels >= 0  # FER+: faces without a majority label are left out
        scores = metrics(labels[keep], np.where(predicted[keep] >= 0, predicted[keep], (labels[keep] + 1) % 7))
        recall = dict(zip(EMOTIONS, scores["recall"]))
        weakest = min((e for e, n in zip(EMOTIONS, scores["support"]) if n), key=recall.get)
        results[name] = {"faces": int(keep.sum()), "accuracy": round(scores["accuracy"], 4),
                         "mean_recall": round(mean_recall(scores), 4), "weakest": [weakest, recall[weakest]],
                         "neutral_recall": recall["neutral"], "recall": recall}
    emit(results, args.json)
    return 0


def _backgrounds() -> list[np.ndarray]:
    """Colour photographs to paste faces into (scikit-image's, public domain), BGR."""
    from skimage import data

    names = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
    return [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in names]


def render(face: np.ndarray, kind: str, backgrounds: list[np.ndarray], rng) -> tuple[np.ndarray, tuple[float, float]]:
    """The 48x48 grey ``face`` as a colour photo (kind "photo") or in a 720p frame ("frame"); returns the image and
    the face's centre."""
    width, height = (480, 400) if kind == "photo" else (1280, 720)
    size = int(rng.integers(160, 241) if kind == "photo" else rng.integers(90, 151))
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    scale = max(width / background.shape[1], height / background.shape[0])
    canvas = cv2.resize(background, (int(np.ceil(background.shape[1] * scale)), int(np.ceil(background.shape[0] *
                                                                                             scale))))
    canvas = canvas[:height, :width].astype(np.float32)
    tint = np.array([0.80, 0.92, 1.08]) * rng.uniform(0.9, 1.1, 3)  # BGR: a warm skin tone, a little different each
    patch = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)[..., None] * tint
    # Feathered edges: the face fades into the background over its outer 8 %, as no real photo has a square face.
    ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / (0.08 * size), 0, 1)
    alpha = np.minimum.outer(ramp, ramp)[..., None]
    x = (width - size) // 2 if kind == "photo" else int(rng.integers(0, width - size))
    y = (height - size) // 2 if kind == "photo" else int(rng.integers(0, height - size))
    canvas[y:y + size, x:x + size] = alpha * patch + (1 - alpha) * canvas[y:y + size, x:x + size]
    return np.clip(canvas, 0, 255).astype(np.uint8), (x + size / 2, y + size / 2)


def _distance(row: dict, centre: tuple[float, float]) -> float:
    x, y = float(row["x"]) + float(row["w"]) / 2, float(row["y"]) + float(row["h"]) / 2
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2


if __name__ == "__main__":
    raise SystemExit(main())
