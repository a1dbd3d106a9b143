"""``fer-train``: train, evaluate and export the FER-2013 emotion model (also ``python -m training``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_DATA = "../shared/data/fer2013/fer2013.csv.gz"


def _add_train(commands) -> None:
    from training.train import TrainConfig

    defaults = TrainConfig(data="", out="")
    parser = commands.add_parser(
        "train", help="train a model into a run folder",
        description="Train on the Training split; the best checkpoint is chosen on PublicTest only. The run folder "
                    "gets config.json, state.json, log.csv, curves.png, last.keras (for --resume) and best.keras.")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="fer2013.csv, fer2013.csv.gz, or an image-folder root with train/ test/ [val/] "
                             f"(default: {DEFAULT_DATA})")
    parser.add_argument("--ferplus", help="fer2013new.csv: train and select on FER+ majority-vote labels")
    parser.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    parser.add_argument("--arch", choices=("vgg", "seed"), default=defaults.arch,
                        help="vgg: our default; seed: the seed project's baseline with its own recipe "
                             "(Adam 1e-4, batch 64, 30 epochs, no augmentation)")
    parser.add_argument("--widths", help=f"vgg stage widths, comma separated (default "
                                         f"{','.join(map(str, defaults.widths))})")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {defaults.epochs}; seed: 30)")
    parser.add_argument("--batch-size", type=int, help=f"batch size (default {defaults.batch_size})")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), help=f"default {defaults.optimizer}")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.learning_rate})")
    parser.add_argument("--warmup-epochs", type=int, help=f"default {defaults.warmup_epochs}")
    parser.add_argument("--weight-decay", type=float, help=f"default {defaults.weight_decay}")
    parser.add_argument("--label-smoothing", type=float, help=f"default {defaults.label_smoothing}")
    parser.add_argument("--class-weights", action="store_true", help="weight classes by inverse frequency")
    parser.add_argument("--patience", type=int, help=f"early-stopping patience in epochs (default {defaults.patience})")
    parser.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                        help="auto: bf16 mixed precision where the CPU has native bf16, else fp32")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.set_defaults(run=_train)


def _train(args) -> int:
    from training.augment import AugmentConfig
    from training.train import TrainConfig, train

    overrides = {key: value for key, value in {
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
        "learning_rate": args.lr, "warmup_epochs": args.warmup_epochs, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing, "patience": args.patience, "seed": args.seed,
        "precision": args.precision, "ferplus": args.ferplus,
        "widths": tuple(int(w) for w in args.widths.split(",")) if args.widths else None,
    }.items() if value is not None}
    if args.class_weights:
        overrides["class_weights"] = True
    if args.no_augment:
        overrides["augment"] = AugmentConfig(flip=False, rotation_deg=0, zoom=0, shift=0, brightness=0, contrast=0,
                                             erase_probability=0)
    if args.arch == "seed":
        config = TrainConfig.seed_baseline(args.data, args.out, **overrides)
    else:
        config = TrainConfig(data=args.data, out=args.out, arch=args.arch, **overrides)
    train(config, resume=args.resume)
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
                    "(labels, input size, layout, pixel scaling, training summary), then checks Keras and "
                    "onnxruntime agree within 1e-4 on real images.")
    parser.add_argument("model", help="a .keras file, or a run folder (its best.keras is used)")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="images for the parity check and the summary's PublicTest score "
                             f"(default: {DEFAULT_DATA}; synthetic faces if absent)")
    parser.add_argument("--tta-flip", action="store_true",
                        help="bake mirror averaging into the graph (each face classified as it is and mirrored)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.set_defaults(run=_export)


def _export(args) -> int:
    from training.export import export

    export(args.model, args.output, data=args.data, tta_flip=args.tta_flip, opset=args.opset)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="fer-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_evaluate(commands)
    _add_export(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from training.data import DataError

    try:
        return args.run(args)
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"fer-train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
