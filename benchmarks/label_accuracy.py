"""Accuracy through the whole product: FER-2013 faces as image files, labelled by `fer-batch label`, scored.

    python benchmarks/label_accuracy.py --data ../shared/data/fer2013/fer2013.csv.gz \
        --ferplus ../shared/data/fer2013/fer2013new.csv
    python benchmarks/label_accuracy.py ... --options "--precision float"

`fer-train evaluate` scores a model through the classifier wrapper; this runs what a user runs. Each face of the
split (default PrivateTest) is written as a 48x48 PNG (lossless), `fer-batch label DIR --detector none` labels the
folder (each image is one pre-cropped face; the default model, INT8, unless --options says otherwise), and the
CSV's top emotions are scored against FER's labels and, with --ferplus, FER+'s majority labels (the definition of
`fer-train evaluate --ferplus`). Prints JSON: accuracy, mean per-class recall and neutral recall for each label set.
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
    for index, face in enumerate(images):
        cv2.imwrite(str(folder / f"{index:05d}.png"), face)
    output = work / "labels.csv"
    command = [sys.executable, "-m", "fer_batch", "label", str(folder), "-o", str(output), "--detector", "none",
               "--quiet", *args.options.split()]
    subprocess.run(command, check=True, cwd=REPO)
    with open(output, newline="") as handle:
        rows = {Path(row["source"]).stem: row for row in csv.DictReader(handle)}
    unlabelled = [f"{i:05d}.png" for i in range(len(images)) if not rows.get(f"{i:05d}", {}).get("emotion")]
    if unlabelled:  # --detector none gives every image one face: anything else is a failure to report
        raise SystemExit(f"{len(unlabelled)} faces got no label (e.g. {unlabelled[0]}); see {output}")
    predicted = np.array([EMOTIONS.index(rows[f"{i:05d}"]["emotion"]) for i in range(len(images))])
    results: dict = {"machine": describe_hardware(), "split": args.split, "faces": len(images),
                     "command": " ".join(["fer-batch", *command[3:]]).replace(str(work), "DIR")}
    for name, labels in label_sets.items():
        keep = labels >= 0  # FER+: faces without a majority label are left out
        scores = metrics(labels[keep], predicted[keep])
        results[name] = {"faces": int(keep.sum()), "accuracy": round(scores["accuracy"], 4),
                         "mean_recall": round(mean_recall(scores), 4),
                         "neutral_recall": scores["recall"][EMOTIONS.index("neutral")]}
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
