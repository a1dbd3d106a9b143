"""Write models/MODEL.md from what was measured: the ONNX file's training metadata and evaluate's metrics.json.

    fer-train evaluate --model models/emotion.onnx --out runs/eval-private
    fer-train evaluate --model models/emotion.onnx --ferplus fer2013new.csv --out runs/eval-private-ferplus
    python -m training.model_card --model models/emotion.onnx --metrics runs/eval-private/metrics.json \
        --ferplus-metrics runs/eval-private-ferplus/metrics.json --out models/MODEL.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fer_batch.labels import EMOTIONS
from training.evaluate import mean_recall

LIMITS = """\
- **What it was trained on.** FER-2013: 48x48 grey faces gathered by Google image search for emotion keywords
  (2013), labelled once by the dataset's authors. Human agreement on FER-2013 is about 65 +/- 5 % (Goodfellow et
  al., 2013); the FER+ relabelling changed about a third of its labels. Treat single predictions as noisy and
  prefer aggregates (the per-track summaries, `--smooth`).
- **Posed, frontal, stock-photo faces.** Strong profiles, heavy occlusion (masks, hands), extreme lighting, very
  low resolution, infrared and children's faces are under-represented; accuracy on them is unknown and likely lower.
- **Classes are imbalanced.** `disgust` has 436 training images (1.5 %) and is recognised least reliably;
  `fear` is often confused with `sad` and `surprise`, `sad` with `neutral` (see the confusion matrix).
- **Demographics.** FER-2013 carries no demographic annotation, so performance across age, gender and skin tone
  has not been measured; published audits of FER-style datasets report skewed representation. Do not use the model
  for decisions about individuals (hiring, policing, health, education).
- **Expressions are not feelings.** The model labels facial configurations as annotators saw them; it does not
  read anyone's inner state, and cultural display rules differ.
- **Framing matters.** In fer-batch the face is cropped like FER-2013's faces (calibrated in `fer_batch/crop.py`);
  feeding other crops through `--model` or the ONNX file directly lowers accuracy.
"""


DATA = "../shared/data/fer2013/fer2013.csv.gz"
VOTES = "../shared/data/fer2013/fer2013new.csv"


def render(model: Path, metrics: dict, without_flip: dict | None = None, speed: dict | None = None,
           ferplus: dict | None = None) -> str:
    """The card; ``metrics`` (FER-2013 labels) and ``ferplus`` (FER+ majority labels) are evaluate's metrics.json
    on PrivateTest."""
    if ferplus:
        return _render_both(model, metrics, ferplus, without_flip, speed)
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    training = json.loads(metadata.get("fer_batch.training", "{}"))
    accuracy = metrics["accuracy"] * 100
    header = " " * 10 + "".join(f"{e[:8]:>9}" for e in EMOTIONS)
    matrix = "\n".join(f"{e:<10}" + "".join(f"{v:>9d}" for v in row) for e, row in zip(EMOTIONS, metrics["confusion"]))
    per_class = "\n".join(
        f"| {e} | {p:.3f} | {r:.3f} | {f:.3f} | {n} |"
        for e, p, r, f, n in zip(EMOTIONS, metrics["precision"], metrics["recall"], metrics["f1"], metrics["support"]))
    hours = training.get("train_seconds", 0) / 3600
    return f"""# Model card: `models/emotion.onnx`

Facial-expression classifier for 48x48 grey faces, trained by this repository's `training/` on FER-2013.

**PrivateTest accuracy: {accuracy:.2f} %** ({metrics['count']} faces of FER-2013's PrivateTest split, never used
for training or model selection). Reproduce with:

```bash
fer-train evaluate --model models/emotion.onnx --data ../shared/data/fer2013/fer2013.csv.gz
```

{_flip_note(without_flip)}For comparison, measured on the same split: the `fer` package's bundled
mini-Xception scores 65.5 %; the best published single networks reach about 73 %.

## Data and labels

- FER-2013 (`fer2013.csv`, 35,887 rows): Training 28,709 images for fitting, PublicTest 3,589 for choosing the
  checkpoint (best epoch {training.get('best_epoch')}, PublicTest accuracy {training.get('public_test_accuracy')}),
  PrivateTest 3,589 for the figure above. Labels, in output order: {', '.join(EMOTIONS)} (FER's 0..6).
- FER+ labels used: {'yes' if training.get('ferplus_labels') else 'no (original FER-2013 labels)'}.

{_architecture(training)}
## Training recipe

{training.get('recipe', 'unknown')}

{_how_trained(training, hours)}{_extras(training)}
## Results on PrivateTest

| class | precision | recall | F1 | faces |
| --- | --- | --- | --- | --- |
{per_class}

Confusion matrix (rows: true label, columns: predicted):

```
{header}
{matrix}
```

{_speed(speed)}## Known limits and biases

{LIMITS}"""


def _architecture(training: dict) -> str:
    widths = "-".join(map(str, training.get("architecture", {}).get("widths", (32, 64, 128, 256))))
    tta = "yes (each face is classified as it is and mirrored, and the two averaged)" \
        if training.get("test_time_flip_averaging") else "no"
    return f"""## Architecture

VGG-style CNN: four stages of two 3x3 convolutions (batch norm, ReLU) of widths {widths}, each max-pooled,
then dropout, a 256-unit dense layer with batch norm, dropout, and a 7-way softmax. Pixel scaling (1/255) is
inside the graph.

- Parameters: {training.get('parameters', 0):,}
- FLOPs per face: {training.get('flops_per_face', 0) / 1e6:.0f} M (2 x multiply-accumulates of the conv and dense
  layers) per pass; mirror averaging baked in: {tta}.
- Input: float32 `[batch, 48, 48, 1]`, raw grey pixels 0..255, NHWC. Output: `probabilities`, `[batch, 7]`.
- Metadata (`metadata_props`): `fer_batch.labels`, `fer_batch.input`, `fer_batch.output`, `fer_batch.training`.
"""


def _matrix(metrics: dict) -> str:
    header = " " * 10 + "".join(f"{e[:8]:>9}" for e in EMOTIONS)
    rows = "\n".join(f"{e:<10}" + "".join(f"{v:>9d}" for v in row) for e, row in zip(EMOTIONS, metrics["confusion"]))
    return f"```\n{header}\n{rows}\n```"


def _render_both(model: Path, fer: dict, ferplus: dict, without_flip: dict | None, speed: dict | None) -> str:
    """The card of a model measured on both label sets: FER+'s annotators first (what the product is measured
    on), FER-2013's own labels beside them."""
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    training = json.loads(metadata.get("fer_batch.training", "{}"))
    neutral = EMOTIONS.index("neutral")
    per_class = "\n".join(
        f"| {e} | {p:.3f} | {r:.3f} | {f:.3f} | {n} | {fr:.3f} | {fn} |"
        for e, p, r, f, n, fr, fn in zip(EMOTIONS, ferplus["precision"], ferplus["recall"], ferplus["f1"],
                                         ferplus["support"], fer["recall"], fer["support"]))
    scores = training.get("public_test_scores", {})
    chosen = ", ".join(f"{key.removeprefix('public_').replace('_', ' ')} {value:.4f}" for key, value in scores.items())
    averaged = training.get("averaged")
    checkpoint = (f"the average of {len(averaged['runs'])} runs' best checkpoints" if averaged
                  else f"best epoch {training.get('best_epoch')}")
    return f"""# Model card: `models/emotion.onnx`

Facial-expression classifier for 48x48 grey faces, trained by this repository's `training/` on FER-2013's faces
towards the votes of FER+'s ten annotators, round by round from the previous shipped model (below).

## Results on PrivateTest

FER-2013's PrivateTest split: 3,589 faces never used for training or for choosing anything.

| labels | faces | accuracy | mean per-class recall | weakest class | neutral recall |
| --- | --- | --- | --- | --- | --- |
| FER+ majority (what fer-batch is measured on) | {ferplus['count']} | **{ferplus['accuracy'] * 100:.2f} %** | \
**{mean_recall(ferplus) * 100:.2f} %** | {_weakest(ferplus)} | {ferplus['recall'][neutral] * 100:.2f} % |
| FER-2013's own | {fer['count']} | {fer['accuracy'] * 100:.2f} % | {mean_recall(fer) * 100:.2f} % | \
{_weakest(fer)} | {fer['recall'][neutral] * 100:.2f} % |

```bash
fer-train evaluate --model models/emotion.onnx --data {DATA} --ferplus {VOTES}
fer-train evaluate --model models/emotion.onnx --data {DATA}
```

FER+ majority label: the single most-voted of `fer2013new.csv`'s ten columns; faces where that is contempt,
unknown or NF, or where two columns tie, are left out. The two label sets agree on only 65.6 % of PrivateTest's
faces (FER+'s annotators call twice as many faces neutral), so a model that matched FER+ perfectly would score
about 65.6 % on FER's labels: accuracy on FER's labels falls as agreement with people rises.
{_flip_note(without_flip)}
For comparison, on the same faces: the `fer` package's mini-Xception 65.10 % (FER+) and 65.48 % (FER); fer-batch
0.4's model 84.51 % (FER+, mean per-class recall 74.4 %, weakest class disgust 45.5 %, neutral recall 85.5 %) and
63.44 % (FER); 0.3's 83.40 % (FER+, mean per-class recall 73.3 %) and 63.58 % (FER); 0.2's 68.96 % (FER+, neutral
recall 52.1 %) and 71.69 % (FER). Published anchor: VGG13 trained on FER+ reaches 83.9-85.0 % on FER+'s test set
(Barsoum et al., 2016).

| class | FER+ precision | FER+ recall | FER+ F1 | FER+ faces | FER recall | FER faces |
| --- | --- | --- | --- | --- | --- | --- |
{per_class}

Confusion matrix, FER+ majority labels (rows: true label, columns: predicted):

{_matrix(ferplus)}

Confusion matrix, FER-2013's labels:

{_matrix(fer)}

## Data and labels

- FER-2013 (`fer2013.csv`, 35,887 rows): Training 28,709 faces for fitting, PublicTest 3,589 for choosing the
  checkpoint ({checkpoint}; PublicTest {chosen or training.get('public_test_accuracy')}),
  PrivateTest for the figures above. FER+ (`fer2013new.csv`): ten annotators' votes per face. Labels, in output
  order: {', '.join(EMOTIONS)} (FER's 0..6; FER+'s contempt, unknown and not-a-face votes are dropped).

{_architecture(training)}
## How it was trained: the chain of runs

The shipped model is the checkpoint: each round starts from the previous `models/emotion.onnx` (`fer-train train
--init`), newest first.

{_chain(training)}{_extras(training)}
{_speed(speed)}## Known limits and biases

{LIMITS}"""


def _weakest(metrics: dict) -> str:
    """The class with the lowest recall (among classes with faces) and its recall."""
    recall, name = min((r, e) for e, r, n in zip(EMOTIONS, metrics["recall"], metrics["support"]) if n)
    return f"{name} {recall * 100:.1f} %"


def _shift(run: dict) -> str:
    shift = run.get("output_shift")
    if not shift:
        return ""
    chosen = "chosen on PublicTest by the run" if shift["chosen_on"] == "PublicTest" else \
        "given to `fer-train export --prior-power` (chosen on PublicTest: `benchmarks/prior_powers.py`)"
    return (f"- Output shift: softmax(log p + {shift['prior_power']:g} log prior), the class prior being the Training "
            f"targets' class shares ({', '.join(f'{e} {p:.3f}' for e, p in zip(EMOTIONS, shift['class_prior']))}); "
            f"P {chosen}, baked into the logits' bias (no cost per face).\n")


def _chain(training: dict) -> str:
    """Each training run that made the model, newest first, following ``started_from`` back to a run from
    scratch; rounds are numbered from that first run."""
    runs, current = [], training
    while current:
        runs.append(current)
        current = (current.get("started_from") or {}).get("training")
    parts = []
    for number, run in zip(range(len(runs), 0, -1), runs):
        started = run.get("started_from")
        origin = (f"started from `{started['file']}` (SHA-256 `{started['sha256'][:12]}...`; Keras rebuilt it within "
                  f"{started.get('parity_max_abs_difference', 0):.0e})" if started else "trained from scratch")
        if run.get("averaged"):
            parts.append(f"### Round {number}: {origin}; the weights of {len(run['averaged']['runs'])} runs "
                         f"averaged\n\n{_averaged(run['averaged'])}")
            continue
        parts.append(f"### Round {number}: {origin}\n\n{run.get('recipe', 'unknown recipe')}\n\n"
                     f"{_how_trained(run, run.get('train_seconds', 0) / 3600)}{_shift(run)}")
    return "\n".join(parts)


def _averaged(averaged: dict) -> str:
    """A round made by `fer-train average`: each run (recipe, sessions, its PublicTest scores), then the average."""
    parts = []
    for letter, ingredient in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", averaged["runs"]):
        training, scores = ingredient["training"], ingredient["public_test"]
        figures = ", ".join(f"{key.removeprefix('public_').replace('_', ' ')} {value * 100:.2f} %"
                            for key, value in scores.items() if key.startswith("public_"))
        parts.append(f"Run {letter} (best epoch {training.get('best_epoch')}; PublicTest without mirror averaging: "
                     f"{figures}): {training.get('recipe', 'unknown recipe')}\n\n"
                     f"{_how_trained(training, training.get('train_seconds', 0) / 3600, exported=False)}")
    parts.append(f"Then `{averaged['command']}`: the runs' weights averaged, batch-norm statistics measured again in "
                 f"training mode on {averaged['calibration_faces']:,} augmented Training faces "
                 f"({averaged.get('hardware', '?')}); then `fer-train export RUN -o FILE.onnx` (parity with Keras "
                 f"checked below 1e-4).\n")
    return "\n".join(parts)


def _how_trained(training: dict, hours: float, exported: bool = True) -> str:
    """Epochs, time, and each training session's machine and command (runs from before sessions were recorded
    keep the shipped model's description)."""
    lines = [f"- Epochs trained: {training.get('epochs_trained')}; training time {hours:.1f} h (the sum of the "
             f"epochs' times in the run's log.csv)."]
    sessions = training.get("sessions")
    if not sessions:
        return (f"- Epochs trained: {training.get('epochs_trained')}; training time {hours:.1f} h on "
                f"{training.get('hardware', '?')},\n  TensorFlow CPU, bf16 mixed precision through oneDNN (the sum "
                f"of the epochs' times in the run's log.csv).\n- Command: `fer-train train --out ~/fer-runs/vgg80 "
                f"--epochs 80`, then\n  `fer-train export ~/fer-runs/vgg80 -o models/emotion.onnx --tta-flip` "
                f"(parity with Keras checked below 1e-4).\n")
    for session in sessions:
        lines.append(f"- From epoch {session['from_epoch']}: `{session['command']}` — Keras on {session['backend']}, "
                     f"{session['device']}, {session['precision']}, {session['hardware']}.")
    if exported:
        lines.append("- Then `fer-train export RUN -o FILE.onnx` (parity with Keras checked below 1e-4).")
    return "\n".join(lines) + "\n"


def _extras(training: dict) -> str:
    """Teachers, INT8 and class priors, where the model had them."""
    parts = []
    teachers = training.get("teachers_public_test_accuracy")
    if teachers:
        rows = "\n".join(f"| {name} | {accuracy * 100:.2f} % |" for name, accuracy in teachers.items())
        parts.append(f"Teachers (their probabilities, averaged over each face and its mirror image, were the soft "
                     f"targets; PublicTest accuracy):\n\n| teacher | PublicTest |\n| --- | --- |\n{rows}\n")
    again = training.get("re_exported_from")
    if again:
        parts.append(f"Re-exported from `{again['file']}` (SHA-256 `{again['sha256'][:12]}...`; the same weights) "
                     "with `fer-train export FILE.onnx`: the graph OpenCV's DNN runs (mirror as a Gather, constant "
                     "reshapes).\n")
    int8 = training.get("int8_quantization")
    if int8:
        parity = int8.get("parity", {})
        parts.append(f"INT8: {int8['format']}, activations {int8['activations']}, weights {int8['weights']}, "
                     f"calibrated on {int8['calibration']['faces']} {int8['calibration']['split']} faces; the top "
                     f"class agrees with the float model on {parity.get('top_class_agreement', 0) * 100:.1f} % of "
                     f"{parity.get('faces', '?')} PublicTest faces (`fer-train quantize`).\n")
    priors = training.get("class_priors")
    if priors:
        weights = ", ".join(f"{name} x{weight:g}" for name, weight in priors["weights"].items() if weight != 1)
        parts.append(f"Class priors ({priors['objective']} objective, chosen on PublicTest; `fer-train priors`): "
                     f"{weights or 'none'}.\n")
    return "\n" + "\n".join(parts) if parts else ""


def _speed(speed: dict | None) -> str:
    """Faces/s from benchmarks/classifier_speed.py --json, with the machine that measured them."""
    if not speed:
        return ""
    rows = "\n".join(f"| {row['model']} | {row['faces_per_s']:.0f} | {row['ratio']:.2f} |" for row in speed["models"])
    return (f"## Speed\n\n`python benchmarks/classifier_speed.py --threads {speed['threads']}` on {speed['machine']} "
            f"(onnxruntime {speed['onnxruntime']}; {speed['faces']} {speed['face_source']} faces, batch "
            f"{speed['batch']}):\n\n| model | faces/s | ratio to the previous model |\n| --- | --- | --- |\n{rows}\n\n")


def _flip_note(without_flip: dict | None) -> str:
    if not without_flip:
        return ""
    return (f"The same weights exported without mirror averaging (`fer-train export ... ` without `--tta-flip`) "
            f"score {without_flip['accuracy'] * 100:.2f} % on the same faces.\n\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/emotion.onnx"))
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.json from fer-train evaluate")
    parser.add_argument("--out", type=Path, default=Path("models/MODEL.md"))
    parser.add_argument("--without-flip", type=Path,
                        help="metrics.json of the same weights exported without --tta-flip")
    parser.add_argument("--speed", type=Path, help="the JSON of benchmarks/classifier_speed.py --json")
    parser.add_argument("--ferplus-metrics", type=Path,
                        help="metrics.json from fer-train evaluate --ferplus (FER+ majority labels)")
    args = parser.parse_args(argv)
    without = json.loads(args.without_flip.read_text()) if args.without_flip else None
    speed = json.loads(args.speed.read_text()) if args.speed else None
    ferplus = json.loads(args.ferplus_metrics.read_text()) if args.ferplus_metrics else None
    args.out.write_text(render(args.model, json.loads(args.metrics.read_text()), without, speed, ferplus))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
