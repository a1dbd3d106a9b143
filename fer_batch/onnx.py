"""onnxruntime sessions built one way for every model: explicit threads, chosen providers, a quiet logger."""

from __future__ import annotations

import onnxruntime as ort

from fer_batch.system import available_cores


class ModelError(ValueError):
    """A model file that cannot be loaded or does not follow the expected contract."""


def make_session(model: str | bytes, threads: int = 0, providers: list[str] | None = None,
                 name: str = "model") -> ort.InferenceSession:
    """An InferenceSession for a path or the model's bytes.

    ``threads`` 0 means all usable cores for one operator at a time (intra-op); inter-op parallelism stays off
    because our graphs are chains. ``providers`` defaults to CPU; an unavailable one is a ModelError that lists
    what this onnxruntime build offers.
    """
    available = ort.get_available_providers()
    providers = providers or ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in available]
    if missing:
        raise ModelError(f"{name}: execution provider(s) {', '.join(missing)} not available; "
                         f"this onnxruntime offers {', '.join(available)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads sleep instead of spinning: on a few cores, spinning steals the CPU from the decoding
    # thread and slowed a 640x360 video run by a quarter (benchmarks/bench.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no warnings about unused initializers on every start
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for every kind of bad file
        label = model if isinstance(model, str) else name
        raise ModelError(f"{label}: not a loadable ONNX model ({type(error).__name__}: {error})") from error
