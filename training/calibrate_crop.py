"""Measure how FER-2013 frames its faces relative to our detectors, for ``fer_batch/crop.py``.

Each FER image is enlarged x4 (192x192), pasted in the middle of a 384x384 mid-grey canvas and run through the
detector. The box and landmarks found are mapped back into the 48x48 frame the image came from. The medians over
many images give the constants in ``fer_batch/crop.py``; the script prints them as Python, then checks both crops
by rebuilding each FER image from its canvas and reporting the mean absolute pixel error.

    python -m training.calibrate_crop --data ../shared/data/fer2013/fer2013.csv.gz --count 5000
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from training.data import DEFAULT_DATA

UPSCALE = 4
CANVAS = 384


def place_on_canvas(face: np.ndarray) -> tuple[np.ndarray, int]:
    """The FER face enlarged x4 in the middle of a grey BGR canvas, and the offset of its top-left corner."""
    big = cv2.resize(face, (48 * UPSCALE, 48 * UPSCALE), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((CANVAS, CANVAS), 128, np.uint8)
    offset = (CANVAS - big.shape[0]) // 2
    canvas[offset:offset + big.shape[0], offset:offset + big.shape[1]] = big
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), offset


def measure(images: np.ndarray, detector) -> dict[str, np.ndarray]:
    """Per image with a face near the middle: box (4,) and landmarks (5, 2), in 48x48 frame units."""
    boxes, landmarks = [], []
    for face in images:
        canvas, offset = place_on_canvas(face)
        found = detector.detect(canvas)
        if len(found) == 0:
            continue
        centers = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        distance = np.abs(centers - CANVAS / 2).max(axis=1)
        best = int(np.argmin(distance - found.scores))  # the confident face nearest the middle
        if distance[best] > 24 * UPSCALE:
            continue
        boxes.append((found.boxes[best] - offset) / UPSCALE)
        landmarks.append((found.landmarks[best] - offset) / UPSCALE)
    return {"boxes": np.asarray(boxes), "landmarks": np.asarray(landmarks)}


def fit_box(boxes: np.ndarray) -> tuple[float, float, float]:
    """Median scale and shifts relating a box to the 48x48 frame (see fer_batch.crop.box_crop_matrix)."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scale = np.median(48.0 / np.sqrt(width * height))
    shift_x = np.median((24.0 - (boxes[:, 0] + boxes[:, 2]) / 2) / width)
    shift_y = np.median((24.0 - (boxes[:, 1] + boxes[:, 3]) / 2) / height)
    return float(scale), float(shift_x), float(shift_y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--count", type=int, default=5000, help="Training images to measure (default 5000)")
    parser.add_argument("--check", type=int, default=500, help="PublicTest images to rebuild as a check")
    parser.add_argument("--model", help="an emotion ONNX model: also report PublicTest accuracy on the original "
                                        "48x48 faces vs. the detector + crop pipeline (aligned and box-only)")
    parser.add_argument("--skip-fit", action="store_true", help="only run the checks")
    args = parser.parse_args(argv)

    from fer_batch.detect import RetinaFaceDetector
    from training.data import load

    dataset = load(args.data)
    train_x, _ = dataset.split("Training")
    rng = np.random.default_rng(0)
    sample = train_x[rng.choice(len(train_x), size=min(args.count, len(train_x)), replace=False)]
    retina = RetinaFaceDetector(threshold=0.5, min_face=8)
    if not args.skip_fit:
        fit(sample, retina)
    check(dataset, retina, args.check, args.model)
    return 0


def fit(sample: np.ndarray, retina) -> None:
    """Print the crop constants measured on ``sample``."""
    from fer_batch.detect import HaarDetector

    found = measure(sample, retina)
    print(f"RetinaFace: a face in {len(found['boxes'])} of {len(sample)} images")
    template = np.median(found["landmarks"], axis=0)
    scale, shift_x, shift_y = fit_box(found["boxes"])
    haar_found = measure(sample[:1000], HaarDetector(min_face=8))
    haar_scale, _, haar_shift_y = fit_box(haar_found["boxes"])
    print(f"Haar: a face in {len(haar_found['boxes'])} of {min(1000, len(sample))} images")
    print("FER_LANDMARKS = np.array(" + np.array2string(np.round(template, 2), separator=", ") + ", np.float32)")
    print(f"BOX_SCALE = {scale:.3f}\nBOX_SHIFT_X = {shift_x:.3f}\nBOX_SHIFT_Y = {shift_y:.3f}")
    print(f"HAAR_BOX_SCALE = {haar_scale:.3f}\nHAAR_BOX_SHIFT_Y = {haar_shift_y:.3f}")


def check(dataset, retina, count: int, model: str | None) -> None:
    """Rebuild PublicTest faces from their canvases with fer_batch.crop as it is now: pixel error, and with a
    model, accuracy through the pipeline against accuracy on the original 48x48 faces."""
    from fer_batch import crop

    val_x, val_y = dataset.split("PublicTest")
    val_x, val_y = val_x[:count], val_y[:count]
    errors: dict[str, list[float]] = {"aligned": [], "box": []}
    crops: dict[str, list[np.ndarray]] = {"aligned": [], "box": []}
    kept = []
    for index, face in enumerate(val_x):
        canvas, _ = place_on_canvas(face)
        detections = retina.detect(canvas)
        if len(detections) == 0:
            continue
        kept.append(index)
        grey = crop.to_grey(canvas)
        best = int(np.argmax(detections.scores))
        for name, align in (("aligned", True), ("box", False)):
            rebuilt = crop.crop_face(grey, detections.boxes[best], detections.landmarks[best], align=align)
            crops[name].append(rebuilt)
            errors[name].append(float(np.abs(rebuilt.astype(np.float32) - face).mean()))
    for name, values in errors.items():
        print(f"{name} crop: mean absolute pixel error {np.mean(values):.2f} over {len(values)} PublicTest faces")
    if model:
        from fer_batch.classify import EmotionClassifier

        classifier = EmotionClassifier(model)
        labels = val_y[kept]
        original = float((classifier.predict(val_x[kept]).argmax(1) == labels).mean())
        print(f"accuracy on the same {len(kept)} PublicTest faces: original 48x48 {original:.4f}", end="")
        for name, faces in crops.items():
            accuracy = float((classifier.predict(np.stack(faces)).argmax(1) == labels).mean())
            print(f", {name} pipeline {accuracy:.4f}", end="")
        print()


if __name__ == "__main__":
    raise SystemExit(main())
