"""``fer-batch``: label facial emotions in image folders and videos (``fer-batch label --help``)."""

from __future__ import annotations

import argparse
import sys

from fer_batch.annotate import CODECS
from fer_batch.classify import PRECISIONS
from fer_batch.config import LabelConfig
from fer_batch.detect import DETECTOR_PRECISIONS, DETECTORS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and status 2, like every other usage error
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


_CODECS = tuple(CODECS)  # annotation codecs; PyAV itself is imported only when a video is written


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _workers(text: str) -> int:
    """'auto' -> 0 (decided from the usable cores), else a positive count."""
    return 0 if text == "auto" else _positive_int(text)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in 0..1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fer-batch", description="Facial emotion recognition for image folders and videos, "
                                                   "offline (RetinaFace + a FER-2013 CNN in onnxruntime).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    label = commands.add_parser(
        "label", help="label images and videos into a CSV",
        description="Detect every face in every image and video frame, classify its emotion, and write one CSV "
                    "row per face (see the README for the columns). Bad files become error rows; the run goes on.")
    label.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, video files or folders (recursive)")
    label.add_argument("-o", "--output", required=True, metavar="OUT.csv", help="the CSV to write")
    label.add_argument("--detector", choices=DETECTORS, default="retinaface",
                       help="retinaface (default): accurate, with landmarks; haar: OpenCV's cascade; none: each "
                            "image is one pre-cropped face")
    label.add_argument("--detector-precision", choices=DETECTOR_PRECISIONS, default=LabelConfig.detector_precision,
                       help="which copy of RetinaFace: int8 (default): its finer pyramid levels in INT8, 1.3x "
                            "faster and the same faces on the benchmarks (docs/performance.md); float: the float "
                            "network as up to 0.4")
    label.add_argument("--model", help="an emotion ONNX model with fer-batch metadata, used as given (default: the "
                                       "bundled one, in --precision)")
    label.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="which copy of the bundled model: int8 (default): its INT8 copy, as accurate on "
                            "FER-2013 and a faster classifier; float: the float model (probabilities differ by "
                            "~0.005 on average). Not with --model, whose file is used as given")
    label.add_argument("--int8", action="store_true", help=argparse.SUPPRESS)  # removed in 0.3: see _label
    label.add_argument("--align", action=argparse.BooleanOptionalAction, default=False,
                       help="level the eyes on RetinaFace's five landmarks before classifying (default: off; "
                            "the box crop measured 2.4 points more accurate on FER-2013 faces, see README)")
    label.add_argument("--every", type=_positive_int, default=1, metavar="N",
                       help="analyse every Nth video frame (default 1: all)")
    label.add_argument("--detect-every", type=_positive_int, default=LabelConfig.detect_every, metavar="N",
                       help=f"videos: search the whole frame for faces every Nth analysed frame and in frames "
                            f"without faces, and in between only around the faces of the frame before, so a face "
                            f"that appears beside others is found within N frames (default {LabelConfig.detect_every}; "
                            f"1: the whole frame every time, as for images)")
    label.add_argument("--min-face", type=float, default=20.0, metavar="PX",
                       help="ignore faces smaller than PX pixels (default 20)")
    label.add_argument("--face-threshold", type=_probability, default=0.8, metavar="P",
                       help="RetinaFace score needed to accept a face (default 0.8)")
    label.add_argument("--detect-size", type=_positive_int, default=640, metavar="PX",
                       help="shrink images to this long side for detection (default 640; raise it for small "
                            "faces in big photos)")
    label.add_argument("--workers", type=_workers, default=0, metavar="N|auto",
                       help="worker processes, each with its own models (default auto: one per usable core; on "
                            "1-2 cores, one process running a batch per core at once; 1: all in this process)")
    label.add_argument("--threads", type=int, default=0, metavar="N",
                       help="onnxruntime threads per model call (default 0: the usable cores divided among the "
                            "workers, or one per batch when one process runs a batch per core; giving N runs one "
                            "batch at a time with N threads)")
    label.add_argument("--stall-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="with 2 or more workers or --engine ray: stop a worker whose file sends no result for "
                            "this long (a decoder stuck on a broken file), retry once, then write an error row "
                            "(default 300; 0: never)")
    label.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local (default): this machine; ray: a Ray cluster through Ray Data (pip install "
                            "'fer-batch[ray]'; inputs must be readable at the same path on every node)")
    label.add_argument("--ray-address", metavar="ADDR",
                       help="with --engine ray: the cluster to join, e.g. 10.0.0.5:6379 (default: RAY_ADDRESS, "
                            "else a local Ray started for this run)")
    label.add_argument("--batch", type=_positive_int, default=4, metavar="N",
                       help="items per model call (default 4)")
    label.add_argument("--smooth", type=float, default=0.0, metavar="SECONDS",
                       help="smooth each video track's probabilities over about SECONDS (default 0: raw); the "
                            "CSV's smooth_s column says which it holds")
    label.add_argument("--annotate", metavar="DIR",
                       help="write annotated copies (boxes, labels, probability bars; videos with every frame and "
                            "their sound, H.264 MP4 by default) and per-video timeline SVGs into DIR, named as "
                            "inside each INPUT")
    label.add_argument("--annotate-codec", choices=_CODECS, default="h264",
                       help="codec of annotated videos: h264 (default, .mp4, plays everywhere), vp9 or av1 (.webm), "
                            "mp4v (.mp4, for old players; not in browsers)")
    label.add_argument("--report", metavar="FILE",
                       help="also write a self-contained HTML report of the run to FILE (see fer-batch report)")
    label.add_argument("--no-summary", dest="summary", action="store_false",
                       help="do not write OUT.summary.csv (per source and track) next to OUT.csv")
    label.add_argument("--resume", action="store_true", help="finish an interrupted run into the same OUT.csv")
    label.add_argument("--force", action="store_true", help="overwrite an existing OUT.csv")
    label.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    summarize = commands.add_parser(
        "summarize", help="rebuild OUT.summary.csv (and optionally plots or annotated copies) from a finished CSV",
        description="Summarise an existing labelling CSV without re-running the models: one row per image and "
                    "per video track.")
    summarize.add_argument("csv", metavar="OUT.csv", help="a CSV written by fer-batch label")
    summarize.add_argument("-o", "--output", help="summary file (default: OUT.summary.csv beside OUT.csv)")
    summarize.add_argument("--plots", metavar="DIR", help="write one emotion-timeline SVG per video into DIR")
    summarize.add_argument("--annotate", metavar="DIR", help="write annotated copies (and timelines) into DIR")
    summarize.add_argument("--annotate-codec", choices=_CODECS, default="h264",
                           help="codec of annotated videos (as for label; default h264)")
    report = commands.add_parser(
        "report", help="write a self-contained HTML report of a finished CSV",
        description="One HTML file that opens offline: run settings and versions (from OUT.run.json), a table per "
                    "source and track, emotion timelines, face thumbnails, errors, and the annotated copies.")
    report.add_argument("csv", metavar="OUT.csv", help="a CSV written by fer-batch label")
    report.add_argument("-o", "--output", metavar="REPORT.html",
                        help="the page to write (default: OUT.report.html beside OUT.csv)")
    report.add_argument("--annotated", metavar="DIR",
                        help="the --annotate folder to link and embed (default: the one OUT.run.json records)")
    review = commands.add_parser(
        "review", help="check and correct the labels in the browser; --apply writes the corrected CSV",
        description="Open a local page that shows every face of a finished CSV (least confident first; videos as "
                    "track segments) to accept, relabel or mark 'not a face' with the keyboard. Every decision is "
                    "saved to OUT.review.csv at once; run it again to go on. --apply writes the CSV with the "
                    "decisions applied. The page is served on 127.0.0.1 only, with a token in its URL.")
    review.add_argument("csv", metavar="OUT.csv", help="a CSV written by fer-batch label (never modified)")
    review.add_argument("--port", type=int, default=0, metavar="P",
                        help="the port on 127.0.0.1 to serve the page on (default 0: any free one)")
    review.add_argument("--no-browser", dest="browser", action="store_false",
                        help="do not open a browser; only print the page's URL (with its token)")
    review.add_argument("--apply", action="store_true",
                        help="no page: write the CSV with the decisions of OUT.review.csv applied (to -o)")
    review.add_argument("-o", "--output", metavar="REVIEWED.csv",
                        help="with --apply: the file to write (default: OUT.reviewed.csv beside OUT.csv)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "review":
        return _review(args)
    return _summarize(args) if args.command == "summarize" else _label(args)


def _summarize(args) -> int:
    from fer_batch.summary import read_rows, write_summary

    try:
        rows = read_rows(args.csv)
        output = write_summary(args.csv, args.output)
    except (OSError, ValueError) as error:
        print(f"fer-batch: error: {error}", file=sys.stderr)
        return 2
    print(f"fer-batch: wrote {output}", file=sys.stderr)
    if args.annotate or args.plots:
        from fer_batch.annotate import render
        from fer_batch.report import read_run_info

        info, _ = read_run_info(args.csv)
        inputs = info.get("inputs") if info else None  # name the copies as the run's INPUTs did
        folder = args.annotate or args.plots
        written = render(rows, folder, inputs=[str(i) for i in inputs] if isinstance(inputs, list) else None,
                         codec=args.annotate_codec, copies=bool(args.annotate))
        print(f"fer-batch: wrote {len(written)} files into {folder}", file=sys.stderr)
    return 0


def _report(args) -> int:
    from pathlib import Path

    from fer_batch.report import write_report

    csv_path = Path(args.csv)
    output = args.output or csv_path.with_name((csv_path.stem if csv_path.suffix else csv_path.name) + ".report.html")
    try:
        written = write_report(csv_path, output, annotated=args.annotated)
    except (OSError, ValueError) as error:
        print(f"fer-batch: error: {error}", file=sys.stderr)
        return 2
    print(f"fer-batch: wrote {written}", file=sys.stderr)
    return 0


def _review(args) -> int:
    from fer_batch.review.decisions import apply_review
    from fer_batch.review.items import ReviewError, reviewed_path
    from fer_batch.review.server import serve

    if args.output and not args.apply:
        print("fer-batch: error: -o/--output is for --apply (the page itself writes only OUT.review.csv)",
              file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print("fer-batch: error: --port must lie in 0..65535 (0: any free port)", file=sys.stderr)
        return 2
    try:
        if args.apply:
            applied = apply_review(args.csv, args.output or reviewed_path(args.csv))
            print(f"fer-batch: wrote {applied.output}: {applied.format()}", file=sys.stderr)
            return 0
        return serve(args.csv, port=args.port, open_browser=args.browser)
    except ReviewError as error:
        print(f"fer-batch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while reading the CSV, before the page was served
        print("\nfer-batch: interrupted", file=sys.stderr)
        return 130


def _label(args) -> int:
    from fer_batch.config import UsageError
    from fer_batch.onnx import ModelError
    from fer_batch.runner import label_files
    from fer_batch.writer import OutputError

    if args.smooth < 0:
        print("fer-batch: error: --smooth must be 0 or more seconds", file=sys.stderr)
        return 2
    if args.stall_timeout < 0:
        print("fer-batch: error: --stall-timeout must be 0 (never) or more seconds", file=sys.stderr)
        return 2
    if args.resume and args.force:
        print("fer-batch: error: --resume and --force contradict each other; pick one", file=sys.stderr)
        return 2
    if args.int8:
        print("fer-batch: error: --int8 is gone: the bundled model's INT8 copy is the default now (--precision "
              "float for the float model)", file=sys.stderr)
        return 2
    if args.model and args.precision:
        print("fer-batch: error: --precision picks a copy of the bundled model; a --model file is used as given, so "
              "give one or the other", file=sys.stderr)
        return 2
    config = LabelConfig(model=args.model, precision=args.precision, detector=args.detector,
                         detector_precision=args.detector_precision, align=args.align,
                         every=args.every, detect_every=args.detect_every,
                         min_face=args.min_face, face_threshold=args.face_threshold, detect_size=args.detect_size,
                         threads=args.threads, workers=args.workers, engine=args.engine,
                         ray_address=args.ray_address, stall_timeout=args.stall_timeout, batch=args.batch,
                         resume=args.resume, force=args.force,
                         progress=not args.quiet, smooth=args.smooth, annotate=args.annotate, summary=args.summary,
                         annotate_codec=args.annotate_codec, report=args.report)
    try:
        summary = label_files(args.inputs, args.output, config)
    except (UsageError, OutputError, ModelError) as error:
        print(f"fer-batch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfer-batch: interrupted; {args.output} holds every finished item. Run the same command with "
              f"--resume to finish.", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"fer-batch: {summary.format()} -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
