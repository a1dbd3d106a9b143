"""A run's settings and the errors that stop a run before it starts: the module every other one may import.

:class:`LabelConfig` holds what ``fer-batch label`` was asked to do; the runner and every engine (in-process,
worker processes, Ray) read it from here, so no engine imports the runner. ``fer_batch.runner`` re-exports both
names for library callers.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("local", "ray")


class UsageError(Exception):
    """Bad arguments: a missing input, nothing to label, and the like (exit status 2)."""


@dataclass
class LabelConfig:
    model: str | None = None  # a model file, used as given; None: the bundled model, in `precision`
    precision: str | None = None  # with model None: "int8" (None: the default, emotion-int8.onnx) or "float"
    detector: str = "retinaface"
    detector_precision: str = "int8"  # RetinaFace's copy: "int8" (models/retinaface-int8.onnx) or "float" (up to 0.4's)
    align: bool = False  # level the eyes on the landmarks (measured less accurate than the box crop)
    every: int = 1  # analyse every Nth video frame
    detect_every: int = 8  # videos: the whole frame searched every Nth analysed frame, around known faces between
    min_face: float = 20.0  # px, in the original image
    face_threshold: float = 0.8
    detect_size: int = 640  # the detector sees images shrunk to this long side
    threads: int = 0  # onnxruntime threads per model and worker; 0 = the cores divided among the workers
    workers: int = 0  # worker processes; 0 = auto (the cores this process may use); 1 = in this process
    lanes: int = 0  # model batches one process runs at once; 0 = auto (in_process_lanes, or 1 with threads given)
    engine: str = "local"  # "local" (this machine) or "ray" (a Ray cluster, through Ray Data)
    ray_address: str | None = None  # a running Ray cluster (default: RAY_ADDRESS, else a local one)
    stall_timeout: float = 300.0  # seconds a worker's unit may send nothing before the worker is stopped; 0: never
    providers: list[str] | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True
    batch: int = 4  # items per detector/classifier call (4 measured 2-4 % faster than 8 on 2 cores)
    prefetch: int = 16  # decoded items waiting for the models
    smooth: float = 0.0  # seconds of exponential smoothing along each track (0: raw probabilities)
    track_gap: float = 1.0  # seconds a track survives without a detection
    annotate: str | None = None  # folder for annotated copies and timeline plots
    summary: bool = True  # write OUT.summary.csv next to the CSV
    annotate_codec: str = "h264"  # codec of annotated videos
    report: str | None = None  # write an HTML report here after the run

    def recognizer_options(self, threads: int | None = None) -> dict:
        """EmotionRecognizer's keyword arguments (picklable, for worker processes and Ray actors)."""
        return dict(model=self.model, precision=self.precision, detector=self.detector,
                    detector_precision=self.detector_precision, align=self.align,
                    face_threshold=self.face_threshold, min_face=self.min_face, detect_size=self.detect_size,
                    threads=self.threads if threads is None else threads, providers=self.providers)
