"""``fer-train``: train, evaluate and export the FER-2013 emotion model (also ``python -m training``)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from training.data import DEFAULT_DATA


def _add_recipe_options(parser, defaults) -> None:
    """The options `train` and `distill` share: data, run folder, model and schedule."""
    from training.augment import AugmentConfig

    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="fer2013.csv, fer2013.csv.gz, a file made by `fer-train pack`, or an image-folder root "
                             f"with train/ test/ [val/] (default: {DEFAULT_DATA})")
    parser.add_argument("--ferplus", help="fer2013new.csv: train and select on FER+ majority-vote labels")
    parser.add_argument("--ferplus-votes", help="fer2013new.csv: FER+'s vote distributions, mixed into the Training "
                                                "targets by --ferplus-weight (checkpoints are still chosen on the "
                                                "FER labels)")
    parser.add_argument("--ferplus-weight", type=float,
                        help="0..1: how far each Training target moves from its FER label to FER+'s vote "
                             f"distribution (default {defaults.ferplus_weight})")
    parser.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    parser.add_argument("--widths", help=f"vgg stage widths, comma separated (default "
                                         f"{','.join(map(str, defaults.widths))})")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {defaults.epochs}; seed: 30)")
    parser.add_argument("--batch-size", type=int, help=f"batch size (default {defaults.batch_size})")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), help=f"default {defaults.optimizer}")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.learning_rate})")
    parser.add_argument("--warmup-epochs", type=int, help=f"default {defaults.warmup_epochs}")
    parser.add_argument("--weight-decay", type=float, help=f"default {defaults.weight_decay}")
    parser.add_argument("--label-smoothing", type=float, help=f"default {defaults.label_smoothing}")
    parser.add_argument("--class-weights", action="store_true",
                        help="weight classes by inverse frequency of the targets' top classes")
    parser.add_argument("--class-weight-power", type=float,
                        help=f"with --class-weights: weight = (1 / frequency) ** POWER (default "
                             f"{defaults.class_weight_power}; 0.5 softens it)")
    parser.add_argument("--init", metavar="MODEL.onnx",
                        help="start from an exported fer-batch model's weights (e.g. models/emotion.onnx): its "
                             "architecture is rebuilt from its metadata and checked against it on real faces")
    parser.add_argument("--select", choices=("fer", "ferplus"),
                        help="how PublicTest chooses the checkpoint: fer = accuracy on FER's labels; ferplus = the "
                             "mean of accuracy and mean per-class recall on FER+'s majority labels (needs "
                             f"--ferplus-votes) (default {defaults.select})")
    parser.add_argument("--patience", type=int, help=f"early-stopping patience in epochs (default {defaults.patience})")
    parser.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                        help="auto: bf16 mixed precision on a GPU or a CPU with native bf16, else fp32")
    parser.add_argument("--logit-adjust", type=float, metavar="TAU",
                        help="train with the logit-adjusted loss (the loss sees softmax(log p + TAU log prior), so "
                             "the network must learn the rare classes); each epoch chooses on PublicTest the output "
                             "shift P in [0, TAU] that `export` bakes in (default 0: plain cross-entropy)")
    parser.add_argument("--neutral-floor", type=float, metavar="RECALL",
                        help="with --logit-adjust: choose the output shift among those keeping PublicTest FER+ "
                             "neutral recall >= RECALL (default 0)")
    augment = parser.add_argument_group("augmentation (on the host, NumPy/OpenCV; never in the exported graph)")
    augment.add_argument("--no-augment", action="store_true", help="train without augmentation")
    augment.add_argument("--mixup", type=float, help="mixup with Beta(a, a) weights (default off)")
    augment.add_argument("--cutmix", type=float, help="cutmix with Beta(a, a) areas (default off; with --mixup "
                                                      "each batch picks one)")
    augment.add_argument("--erase", type=float, metavar="P",
                         help=f"random erasing: the probability a face gets one rectangle of noise (default "
                              f"{AugmentConfig().erase_probability:g}; a lower value for a last, gentler stretch)")
    augment.add_argument("--robust", action="store_true",
                         help="also blur (p 0.2), shrink to 16-36 px and back (p 0.2) and JPEG-compress (p 0.3): "
                              "faces from real footage")


def _recipe(args, **extra):
    """A TrainConfig from the shared options (only those given override the defaults)."""
    from dataclasses import replace

    from training.augment import AugmentConfig
    from training.train import TrainConfig

    overrides = {key: value for key, value in {
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
        "learning_rate": args.lr, "warmup_epochs": args.warmup_epochs, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing, "patience": args.patience, "seed": args.seed,
        "precision": args.precision, "ferplus": args.ferplus, "ferplus_votes": args.ferplus_votes,
        "ferplus_weight": args.ferplus_weight, "class_weight_power": args.class_weight_power,
        "init": args.init, "select": args.select, "logit_adjust": args.logit_adjust,
        "neutral_floor": args.neutral_floor,
        "widths": tuple(int(w) for w in args.widths.split(",")) if args.widths else None,
        **extra,
    }.items() if value is not None}
    if args.class_weights:
        overrides["class_weights"] = True
    augment = AugmentConfig.none() if args.no_augment else AugmentConfig()
    if args.robust:
        augment = replace(augment, blur_probability=0.2, low_resolution_probability=0.2, jpeg_probability=0.3)
    augment = replace(augment, mixup=args.mixup or 0.0, cutmix=args.cutmix or 0.0)
    if args.erase is not None:
        if not 0.0 <= args.erase <= 1.0:
            raise ValueError(f"--erase {args.erase:g}: give a probability between 0 and 1")
        augment = replace(augment, erase_probability=args.erase)
    if getattr(args, "arch", None) == "seed":
        return TrainConfig.seed_baseline(args.data, args.out, **overrides)
    return TrainConfig(data=args.data, out=args.out, augment=augment, **overrides)


def _add_train(commands) -> None:
    from training.train import TrainConfig

    defaults = TrainConfig(data="", out="")
    parser = commands.add_parser(
        "train", help="train a model into a run folder",
        description="Train on the Training split; the best checkpoint is chosen on PublicTest only. The run folder "
                    "gets config.json, state.json, log.csv, curves.png, last.keras (for --resume) and best.keras.")
    _add_recipe_options(parser, defaults)
    parser.add_argument("--arch", choices=("vgg", "seed"), default=defaults.arch,
                        help="vgg: our default; seed: the seed project's baseline with its own recipe "
                             "(Adam 1e-4, batch 64, 30 epochs, no augmentation)")
    parser.set_defaults(run=_train)


def _train(args) -> int:
    from training.train import train

    train(_recipe(args), resume=args.resume, command=args.command_line)
    return 0


def _add_distill(commands) -> None:
    from training.train import TrainConfig

    defaults = TrainConfig(data="", out="", label_smoothing=0.0)  # the teachers' targets are soft already
    parser = commands.add_parser(
        "distill", help="train a student on a teacher ensemble's probabilities",
        description="Knowledge distillation: each Training face's target moves from its label towards the mean of "
                    "the teachers' probabilities (each teacher averaged over the face and its mirror image). The "
                    "teachers' probabilities are computed once into the run folder (teachers.npz) with each "
                    "teacher's and the ensemble's PublicTest accuracy; then the student trains like `train` "
                    "(same run folder, --resume). Checkpoints are chosen on PublicTest's FER labels.")
    parser.add_argument("--teachers", nargs="+", metavar="RUN",
                        help="teacher run folders (their best.keras), .keras or .onnx files, or one .npz written "
                             "by `fer-train ensemble`")
    parser.add_argument("--teacher-weight", type=float, default=0.7,
                        help="0..1: how far each target moves from the label to the teachers (default 0.7)")
    _add_recipe_options(parser, defaults)
    parser.set_defaults(run=_distill, label_smoothing=defaults.label_smoothing)


def _distill(args) -> int:
    from training.train import train

    if not args.resume and not args.teachers:
        raise ValueError("distill needs --teachers (or --resume to continue a distillation run)")
    train(_recipe(args, teachers=tuple(args.teachers or ()), teacher_weight=args.teacher_weight), resume=args.resume,
          command=args.command_line)
    return 0


def _add_average(commands) -> None:
    parser = commands.add_parser(
        "average", help="average the weights of runs that started from one model into one model",
        description="A model soup: the element-wise mean of the runs' best.keras weights (runs of one architecture "
                    "that started from the same model, e.g. `train --init models/emotion.onnx` with other seeds or "
                    "recipes), its batch-norm statistics measured again as training would (training mode, "
                    "augmented Training faces). Prints each run's and the average's PublicTest scores and writes a "
                    "run folder for `fer-train export`, recording every run (the model card lists them). Costs "
                    "what one model costs per face.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (their best.keras) or .keras files")
    parser.add_argument("--out", required=True, help="the run folder to write")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"default: {DEFAULT_DATA}")
    parser.add_argument("--ferplus-votes", help="fer2013new.csv: FER+ figures on PublicTest (needed when the runs "
                                                "were chosen with --select ferplus)")
    parser.set_defaults(run=_average)


def _average(args) -> int:
    from training.average import average_runs, describe_scores

    state = average_runs(args.runs, args.out, args.data, args.ferplus_votes, command=args.command_line)
    width = max(len(run["model"]) for run in state["averaged"]["runs"])
    for name, scores in [(run["model"], run["public_test"]) for run in state["averaged"]["runs"]] + \
            [("the average", {**state["best_scores"], "selection": state["best_selection"]})]:
        print(f"{name:<{width}}  " + describe_scores(scores, "  "))
    print(f"wrote {Path(args.out) / 'best.keras'}; next: fer-train export {args.out} -o FILE.onnx")
    return 0


def _add_ensemble(commands) -> None:
    parser = commands.add_parser(
        "ensemble", help="score teachers and their ensemble on PublicTest; keep their probabilities",
        description="Runs each teacher on the Training and PublicTest faces (each face and its mirror image), "
                    "prints each teacher's and the ensemble's PublicTest accuracy, and writes the ensemble's "
                    "probabilities as a small .npz that `distill --teachers FILE.npz` learns from.")
    parser.add_argument("--teachers", nargs="+", required=True, metavar="RUN",
                        help="teacher run folders (their best.keras), .keras or .onnx files")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"default: {DEFAULT_DATA}")
    parser.add_argument("-o", "--output", required=True, help="the .npz file to write")
    parser.set_defaults(run=_ensemble)


def _ensemble(args) -> int:
    from training.data import load
    from training.targets import teacher_targets

    dataset = load(args.data)
    public_images, public_labels = dataset.split("PublicTest")
    output = Path(args.output)
    if output.exists():
        raise FileExistsError(f"{output}: exists; remove it or pick another name")
    result = teacher_targets(args.teachers, dataset.split("Training")[0], public_images, public_labels, cache=output)
    for name, accuracy in result.public_test_accuracy.items():
        print(f"{accuracy:.4f}  {name}")
    return 0


def _add_priors(commands) -> None:
    parser = commands.add_parser(
        "priors", help="choose class weights on PublicTest and bake them into an exported model",
        description="Multiplies each class's probability by a weight and renormalises, inside the ONNX graph (no "
                    "cost per face). The weights are chosen on PublicTest only: --objective fer maximises accuracy "
                    "on FER-2013's labels; ferplus maximises accuracy on FER+'s majority labels (which call far "
                    "more faces neutral, as real footage is) while losing at most --max-loss points on FER's.")
    parser.add_argument("model", help="the .onnx file (probabilities output)")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"default: {DEFAULT_DATA}")
    parser.add_argument("--ferplus-votes", help="fer2013new.csv (needed by --objective ferplus; adds FER+ figures)")
    parser.add_argument("--objective", choices=("fer", "ferplus"), default="fer", help="default fer")
    parser.add_argument("--max-loss", type=float, default=0.2,
                        help="ferplus: most FER accuracy points to give up on PublicTest (default 0.2)")
    parser.add_argument("--classes", default="neutral",
                        help="comma-separated classes whose weight may change (default neutral: seven free weights "
                             "fit PublicTest and do not carry over to unseen faces; 'all' for every class)")
    parser.set_defaults(run=_priors)


def _priors(args) -> int:
    from fer_batch.labels import EMOTIONS
    from training.priors import apply_priors

    classes = EMOTIONS if args.classes == "all" else tuple(c.strip() for c in args.classes.split(","))
    note = apply_priors(args.model, args.output, args.data, args.ferplus_votes, args.objective, args.max_loss,
                        classes)
    print("class weights: " + ", ".join(f"{name} {weight:g}" for name, weight in note["weights"].items()))
    figures = note["public_test"]
    for key, label in (("fer", "FER labels"), ("ferplus", "FER+ majority labels")):
        if f"{key}_accuracy" not in figures["before"]:
            continue
        print(f"PublicTest, {label}: accuracy {figures['before'][f'{key}_accuracy']:.4f} -> "
              f"{figures['after'][f'{key}_accuracy']:.4f}; recall " + ", ".join(
                  f"{name} {b:.3f}->{a:.3f}" for name, b, a in zip(EMOTIONS, figures["before"][f"{key}_recall"],
                                                                  figures["after"][f"{key}_recall"])))
    return 0


def _add_pack(commands) -> None:
    parser = commands.add_parser(
        "pack", help="write the data as one compressed .npz, to carry to another machine",
        description="Reads FER-2013 (and FER+ votes) once and writes images, labels, splits and votes as a "
                    "compressed .npz that `--data` accepts and that loads in a second. Made to carry the data to a "
                    "lent GPU machine; never commit it (the data's licence).")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"default: {DEFAULT_DATA}")
    parser.add_argument("--ferplus-votes", help="fer2013new.csv, to carry FER+'s votes inside")
    parser.add_argument("--splits", default="Training,PublicTest",
                        help="comma-separated splits to keep (default Training,PublicTest: PrivateTest is only "
                             "ever scored here, with `evaluate`)")
    parser.add_argument("-o", "--output", required=True, help="the .npz file to write")
    parser.set_defaults(run=_pack)


def _pack(args) -> int:
    from training.data import SPLITS, load, pack

    splits = tuple(s.strip() for s in args.splits.split(","))
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    out = pack(load(args.data, ferplus_votes=args.ferplus_votes), args.output, splits)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def _add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate", help="score an exported ONNX model with onnxruntime",
        description="Runs the ONNX model through onnxruntime (what users run) on one split and prints "
                    "'accuracy 0.xxxx', per-class precision/recall/F1 and the confusion matrix.")
    parser.add_argument("--model", required=True, help="the .onnx file")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"FER-2013 csv[.gz] or folder (default: {DEFAULT_DATA})")
    parser.add_argument("--ferplus", help="score against FER+ majority-vote labels instead")
    parser.add_argument("--split", default="PrivateTest", choices=("Training", "PublicTest", "PrivateTest"),
                        help="default PrivateTest")
    parser.add_argument("--tta-flip", action="store_true",
                        help="average each face's probabilities with its mirror image's")
    parser.add_argument("--out", help="folder for metrics.json and confusion.png "
                                      "(default: runs/evaluate-<model>-<split>, ignored by git)")
    parser.set_defaults(run=_evaluate)


def _evaluate(args) -> int:
    from training.evaluate import evaluate

    out = Path(args.out) if args.out else Path("runs") / f"evaluate-{Path(args.model).stem}-{args.split}"
    report = evaluate(args.model, args.data, split=args.split, ferplus=args.ferplus, tta_flip=args.tta_flip, out=out)
    print(report.format())
    print(f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}", file=sys.stderr)
    return 0


def _add_export(commands) -> None:
    parser = commands.add_parser(
        "export", help="export a .keras model (or a run folder's best.keras) to ONNX",
        description="Writes ONNX with a dynamic batch axis, float32 NHWC 0..255 input, softmax output and metadata "
                    "(labels, input size, layout, pixel scaling, training summary) in a graph OpenCV's DNN module "
                    "runs too, then checks Keras against onnxruntime, and OpenCV against onnxruntime, within 1e-4 "
                    "on real images. Given an exported .onnx file, writes the same weights in today's graph.")
    parser.add_argument("model", help="a .keras file, a run folder (its best.keras is used), or an exported "
                                      "fer-batch .onnx file to re-export")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="images for the parity check and the summary's PublicTest score "
                             f"(default: {DEFAULT_DATA}; synthetic faces if absent)")
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="bake mirror averaging into the graph (each face classified as it is and mirrored); "
                             "default: as the model the run started from (--init), else off")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--prior-power", type=float, metavar="P",
                        help="for a run trained with --logit-adjust: the output shift softmax(log p + P log prior) "
                             "baked into the logits' bias (default: the one the run chose on PublicTest)")
    parser.set_defaults(run=_export)


def _export(args) -> int:
    from training.export import export

    export(args.model, args.output, data=args.data, tta_flip=args.tta_flip, opset=args.opset,
           prior_power=args.prior_power)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _add_quantize(commands) -> None:
    from training.quantize import CALIBRATION_FACES, CONFIDENT, MAX_MEAN_DIFFERENCE, MIN_AGREEMENT

    parser = commands.add_parser(
        "quantize", help="write an INT8 copy of an exported ONNX model (onnxruntime static quantization)",
        description="Quantizes Conv, MatMul, Gemm, MaxPool and Relu (QDQ; uint8 activations, int8 per-channel "
                    "weights in 7 bits, which keeps AVX2 CPUs without VNNI from saturating), calibrated on Training "
                    "faces; keeps the model's metadata, then checks it against the float model on PublicTest faces "
                    f"(same top class on at least {MIN_AGREEMENT:.0%} of the faces the float model gives "
                    f"{CONFIDENT:g} or more, mean |difference| at most {MAX_MEAN_DIFFERENCE}) and runs it in "
                    "OpenCV's DNN.")
    parser.add_argument("model", help="the float .onnx file (from fer-train export)")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"FER-2013 data as for train: Training faces calibrate, PublicTest faces check "
                             f"(default: {DEFAULT_DATA})")
    parser.add_argument("--calibration-faces", type=int, default=CALIBRATION_FACES,
                        help=f"Training faces to calibrate on, drawn at random with a fixed seed "
                             f"(default {CALIBRATION_FACES})")
    parser.set_defaults(run=_quantize)


def _quantize(args) -> int:
    from training.quantize import quantize

    quantize(args.model, args.output, args.data, count=args.calibration_faces)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _add_finetune(commands) -> None:
    from fer_batch.detect import DETECTORS
    from training.finetune import FOLDS, MAX_STEPS, MIN_STEPS, PASSES, FinetuneConfig

    defaults = FinetuneConfig(photos="", out="")
    parser = commands.add_parser(
        "finetune", help="fine-tune a model on your own photos (one folder per emotion) or a reviewed labelling CSV",
        description="PHOTOS is a folder of one sub-folder per emotion (angry, disgust, fear, happy, sad, surprise, "
                    "neutral; any case) of photos in any format fer-batch reads, whose largest face is found and cut "
                    "as `fer-batch label` does; or a labelling CSV reviewed in the browser (`fer-batch review OUT.csv "
                    "--apply -o REVIEWED.csv`), whose faces a person labelled are cut from their sources by the "
                    "recorded boxes. Faces that cannot be used are listed in RUN/photos.csv and on stderr. Training "
                    "is counted in steps of class-balanced, augmented batches; cross-validation chooses how many "
                    "(none at all, if training does not help), then every photo trains for that many. Per-class "
                    "recall before and after is printed on the cross-validated predictions: each photo judged by a "
                    "model that never trained on it. Then `fer-train export RUN -o my.onnx` and `fer-batch label "
                    "--model my.onnx`.")
    parser.add_argument("photos", metavar="PHOTOS",
                        help="folder with one sub-folder of photos per emotion, or a reviewed labelling CSV")
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--init", metavar="MODEL.onnx",
                        help="the fer-batch model to start from (default: the bundled float model)")
    parser.add_argument("--root", metavar="DIR",
                        help="a reviewed CSV: the folder its relative sources are read from, where `fer-batch label` "
                             "ran (default: the current folder, then the CSV's own)")
    parser.add_argument("--fer2013", metavar="FILE",
                        help="FER-2013 (fer2013.csv[.gz], an image-folder root or a `fer-train pack` file): its "
                             "Training faces fill part of every batch, with the starting model's own probabilities "
                             "as targets, so the model keeps its answers on faces unlike yours (default: off)")
    parser.add_argument("--fer2013-share", type=float, default=defaults.fer2013_share, metavar="SHARE",
                        help=f"with --fer2013: share of each batch that is FER-2013 faces (default "
                             f"{defaults.fer2013_share:g})")
    parser.add_argument("--steps", type=int,
                        help=f"training steps to try (default: {PASSES} passes over the photos, within "
                             f"{MIN_STEPS}..{MAX_STEPS}; the environment variable FER_FINETUNE_STEPS sets it too)")
    parser.add_argument("--folds", type=int, default=defaults.folds,
                        help=f"cross-validation folds that choose the step count among 0, 1/4 .. all of --steps "
                             f"(default {FOLDS}; 0: train --steps on every photo without choosing, and no "
                             f"before/after)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate,
                        help=f"Adam's learning rate, constant after a short warm-up (default "
                             f"{defaults.learning_rate:g})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"default {defaults.batch_size} (or the number of faces, if fewer)")
    parser.add_argument("--train-batch-norms", action="store_true",
                        help="let the batch norms learn too (default: they keep the statistics the model was "
                             "trained with)")
    parser.add_argument("--no-augment", action="store_true", help="train without the photo augmentation")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=defaults.precision,
                        help="auto (default): bf16 mixed precision where the CPU computes bf16 natively, else fp32")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"default {defaults.seed}")
    detection = parser.add_argument_group("face detection and crop (as `fer-batch label`'s options; for a reviewed "
                                          "CSV, give those its labelling run had)")
    detection.add_argument("--detector", choices=DETECTORS, default=defaults.detector.detector,
                           help="retinaface (default); haar; none: each photo is one pre-cropped face")
    detection.add_argument("--align", action="store_true",
                           help="level the eyes on the detector's landmarks (default: off, as fer-batch label)")
    detection.add_argument("--face-threshold", type=float, default=defaults.detector.face_threshold, metavar="P",
                           help=f"default {defaults.detector.face_threshold}")
    detection.add_argument("--min-face", type=float, default=defaults.detector.min_face, metavar="PX",
                           help=f"default {defaults.detector.min_face:g}")
    detection.add_argument("--detect-size", type=int, default=defaults.detector.detect_size, metavar="PX",
                           help=f"default {defaults.detector.detect_size}")
    parser.set_defaults(run=_finetune)


def _finetune(args) -> int:
    from fer_batch.config import LabelConfig
    from training.finetune import FinetuneConfig, finetune

    detector = LabelConfig(detector=args.detector, align=args.align, face_threshold=args.face_threshold,
                           min_face=args.min_face, detect_size=args.detect_size)
    config = FinetuneConfig(photos=args.photos, out=args.out, init=args.init, root=args.root, fer2013=args.fer2013,
                            fer2013_share=args.fer2013_share, steps=args.steps, folds=args.folds,
                            learning_rate=args.lr, batch_size=args.batch_size,
                            train_batch_norms=args.train_batch_norms, augment=not args.no_augment,
                            precision=args.precision, seed=args.seed, detector=detector)
    report = finetune(config, command=args.command_line)
    if report["folds"]:
        print(f"recall per class on the {report['faces']} faces, each predicted by a model that never trained on it "
              f"({report['folds']}-fold cross-validation): before (the starting model) and after "
              f"({report['steps']} steps, chosen among {', '.join(report['cross_validation'])})")
    else:
        print(f"recall per class on the {report['faces']} faces, by the starting model ({report['steps']} steps "
              f"trained without cross-validation: no honest after)")
    print(report["table"])
    if report["folds"] and report["steps"] == 0:
        print(f"fer-train finetune: training did not help on the cross-validated faces: {args.out} holds "
              f"{report['init']} unchanged", file=sys.stderr)
    print(f"next: fer-train export {args.out} -o my.onnx; then fer-batch label PHOTOS -o out.csv --model my.onnx",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="fer-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_distill(commands)
    _add_ensemble(commands)
    _add_average(commands)
    _add_evaluate(commands)
    _add_export(commands)
    _add_quantize(commands)
    _add_priors(commands)
    _add_pack(commands)
    _add_finetune(commands)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["fer-train", *argv])  # recorded in the run's state.json
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from training.data import DataError

    try:
        return args.run(args)
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"fer-train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
