"""Training throughput of the default model on this CPU: fp32 vs bf16 mixed precision, with and without XLA.

    python benchmarks/train_speed.py            # prints one line per setting, images/s

Random 48x48 batches, 12 steps of batch 64 timed after 2 warm-up steps; each setting in a fresh process so
precision policies do not leak between them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = (("float32", False), ("float32", True), ("mixed_bfloat16", False), ("mixed_bfloat16", True))


def measure(policy: str, jit: bool, batch: int = 64, steps: int = 12) -> float:
    import keras
    import numpy as np

    from training.model import make_model

    keras.mixed_precision.set_global_policy(policy)
    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy",
                  jit_compile=jit)
    x = np.random.randint(0, 255, (batch * steps, 48, 48, 1)).astype("float32")
    y = np.random.randint(0, 7, batch * steps)
    model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - started)


def main() -> int:
    if len(sys.argv) == 3:  # child process: one setting
        print(f"{sys.argv[1]:>15} xla={sys.argv[2]:<5} {measure(sys.argv[1], sys.argv[2] == 'True'):7.1f} images/s")
        return 0
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": root}
    for policy, jit in SETTINGS:
        result = subprocess.run([sys.executable, __file__, policy, str(jit)], env=env, capture_output=True, text=True)
        print(result.stdout.strip() or result.stderr.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
