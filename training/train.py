"""Train a model on FER-2013 into a run folder, resumably.

A run folder holds ``config.json`` (the recipe), ``state.json`` (epochs done, best PublicTest accuracy),
``last.keras`` (model + optimizer, written every epoch, for ``--resume``), ``best.keras`` (the checkpoint with the
best PublicTest accuracy: PrivateTest is never looked at), ``log.csv`` (one row per epoch) and ``curves.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from training import data as fer_data
from training.augment import AugmentConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: str
    ferplus: str | None = None  # fer2013new.csv: train and select on FER+ majority labels instead of FER's
    ferplus_votes: str | None = None  # fer2013new.csv: its vote distributions as (part of) the training targets
    ferplus_weight: float = 0.0  # how far each Training target moves from the FER label to FER+'s distribution
    teachers: tuple[str, ...] = ()  # distillation: .onnx/.keras files or run folders whose probabilities to learn
    teacher_weight: float = 0.0  # how far each Training target moves towards the teachers' probabilities
    arch: str = "vgg"
    widths: tuple[int, ...] = (32, 64, 128, 256)
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd (Nesterov momentum) or adam
    learning_rate: float = 0.05  # peak, reached after the warm-up, then cosine decay to zero
    warmup_epochs: int = 3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    class_weights: bool = False
    class_weight_power: float = 1.0  # class weights = (class share of the targets' top classes) ** -power
    init: str | None = None  # warm start: an exported fer-batch .onnx whose weights the run starts from
    select: str = "fer"  # checkpoint choice on PublicTest: fer (FER labels' accuracy) or ferplus (see SELECTIONS)
    patience: int = 15  # epochs without a better PublicTest accuracy before stopping
    seed: int = 1337
    precision: str = "auto"  # auto, bf16 or fp32
    logit_adjust: float = 0.0  # tau of the logit-adjusted loss (training/losses.py); 0: plain cross-entropy
    neutral_floor: float = 0.0  # the output shift is chosen among those keeping PublicTest neutral recall >= this
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def seed_baseline(cls, data: str, out: str, **overrides) -> TrainConfig:
        """The seed project's recipe: its CNN, Adam 1e-4, batch 64, 30 epochs, no augmentation or smoothing."""
        recipe = dict(arch="seed", epochs=30, batch_size=64, optimizer="adam", learning_rate=1e-4,
                      warmup_epochs=0, weight_decay=0.0, label_smoothing=0.0, patience=30, precision="fp32",
                      augment=AugmentConfig.none(), constant_lr=True)
        recipe.update(overrides)
        constant = recipe.pop("constant_lr")
        config = cls(data=data, out=out, **recipe)
        config.warmup_epochs = -1 if constant else config.warmup_epochs
        return config

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in values.get("augment", {}).items()})
        values["widths"] = tuple(values.get("widths", (32, 64, 128, 256)))
        values["teachers"] = tuple(values.get("teachers", ()))
        return cls(**values)


SELECTIONS = {
    "fer": "accuracy on FER-2013's labels",
    "ferplus": "mean of accuracy and mean per-class recall on FER+'s majority labels (needs FER+ votes)",
}


def cpu_has_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _precision_policy(precision: str) -> str:
    """auto: bf16 mixed precision on an accelerator or a CPU with native bf16; fp32 elsewhere (bf16 emulated on
    an AVX2 CPU trains at a ninth of fp32's speed: ``python benchmarks/train_speed.py``)."""
    if precision == "auto":
        precision = "bf16" if cpu_has_bf16() or _accelerator() else "fp32"
    return {"bf16": "mixed_bfloat16", "fp32": "float32"}[precision]


def _accelerator() -> str | None:
    """The GPU/TPU Keras will train on, if any (JAX or TensorFlow backend)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        platform = jax.devices()[0].platform
        return None if platform == "cpu" else platform
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else None
    return None


def training_targets(config: TrainConfig, dataset: fer_data.Dataset, run: Path) -> np.ndarray:
    """The Training split's soft targets (N, 7): FER labels, moved towards FER+ votes and the teachers (see
    training/targets.py). Teacher probabilities are computed once and kept in the run folder."""
    from training import targets

    mask = dataset.mask("Training")
    votes = dataset.votes("Training") if config.ferplus_weight > 0 else None
    teacher = None
    if config.teachers:
        public_images, public_labels = dataset.split("PublicTest")
        teacher = targets.teacher_targets(list(config.teachers), dataset.images[mask], public_images, public_labels,
                                          cache=run / "teachers.npz").training
    return targets.mix_targets(dataset.labels[mask], votes, config.ferplus_weight, teacher, config.teacher_weight)


def make_datasets(config: TrainConfig, dataset: fer_data.Dataset, run: Path):
    """Augmented, shuffled Training batches of soft targets (with sample weights), and the steps per epoch.

    NumPy and OpenCV on the host, so any Keras backend trains the same recipe (no tf.data: a lent GPU has JAX and
    no TensorFlow).
    """
    import keras

    from fer_batch.system import available_cores
    from training.augment import augment_batch, mix_batch

    num_classes = len(fer_data.EMOTIONS)
    training = dataset.mask("Training")
    train_x = dataset.images[training]
    train_y = training_targets(config, dataset, run)
    weights = np.ones(num_classes, dtype=np.float32)
    top = train_y.argmax(axis=1)  # each face's class as its targets say (FER+'s votes where they are mixed in)
    if config.class_weights:
        counts = np.bincount(top, minlength=num_classes).astype(np.float32)
        weights = (counts.sum() / (num_classes * np.maximum(counts, 1))) ** config.class_weight_power
        weights = (weights / weights[top].mean()).astype(np.float32)  # the mean sample weight stays 1
        log.info("class weights: %s", dict(zip(fer_data.EMOTIONS, np.round(weights, 3).tolist())))
    sample_weights = weights[top]
    steps = len(train_x) // config.batch_size
    prior = class_prior(train_y)

    class Batches(keras.utils.PyDataset):
        """One epoch of augmented batches; the order and augmentation of epoch e depend only on (seed, e), so a
        resumed run sees what an uninterrupted one would have."""

        def __init__(self):
            # Threads prepare batches ahead where cores are spare (OpenCV and NumPy release the GIL); on two
            # cores the model's step needs both.
            super().__init__(workers=1 if available_cores() <= 2 else 4, use_multiprocessing=False)
            self.epoch = 0
            self.order = self._order(0)

        def _order(self, epoch: int) -> np.ndarray:
            return np.random.default_rng((config.seed, epoch)).permutation(len(train_x))

        def set_epoch(self, epoch: int) -> None:
            self.epoch, self.order = epoch, self._order(epoch)

        def __len__(self):
            return steps

        def __getitem__(self, index):
            rows = self.order[index * config.batch_size:(index + 1) * config.batch_size]
            rng = np.random.default_rng((config.seed, self.epoch, index))
            images = augment_batch(train_x[rows], config.augment, rng)
            images, targets = mix_batch(images, train_y[rows], config.augment, rng)
            return images[..., None], targets, sample_weights[rows]

        def on_epoch_end(self):
            self.set_epoch(self.epoch + 1)

    batches = Batches()
    batches.prior = prior  # the targets' class shares: what the logit-adjusted loss and the output shift use
    return batches, steps


def class_prior(targets: np.ndarray) -> np.ndarray:
    """Each class's share of the (soft) Training targets, float64, every share above zero."""
    prior = np.maximum(targets.astype(np.float64).mean(axis=0), 1e-6)
    return prior / prior.sum()


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    import keras

    if config.warmup_epochs < 0:
        schedule = config.learning_rate
    else:
        warmup = max(config.warmup_epochs * steps_per_epoch, 0)
        decay = max(config.epochs * steps_per_epoch - warmup, 1)
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else config.learning_rate, decay_steps=decay, alpha=0.0,
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True,
                                         weight_decay=config.weight_decay or None)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay) if config.weight_decay \
            else keras.optimizers.Adam(schedule)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd or adam")
    if config.weight_decay:
        # Decay the kernels only: shrinking batch-norm scales and biases only fights the normalisation.
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def _make_run_callback(run: Path, config: TrainConfig, state: dict):
    import keras

    class RunFolder(keras.callbacks.Callback):
        """Per epoch: append log.csv, save last.keras, keep best.keras by PublicTest accuracy, stop early."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch + 1, "seconds": round(time.time() - self.started, 1),
                   "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                   **{k: round(float(v), 5) for k, v in logs.items() if k != "learning_rate"}}
            _append_csv(run / "log.csv", row)
            val_accuracy = float(logs.get("val_accuracy", 0.0))
            score = float(logs.get("selection", val_accuracy))  # what config.select chooses by
            state["epochs_done"] = epoch + 1
            state["train_seconds"] = state.get("train_seconds", 0.0) + row["seconds"]
            if score > state.get("best_selection", state.get("best_val_accuracy", -1.0)):
                state.update(best_val_accuracy=val_accuracy, best_selection=score, best_epoch=epoch + 1,
                             best_scores={k: round(float(v), 5) for k, v in logs.items() if k.startswith("public_")})
                if "prior_power" in logs:  # the output shift chosen with this checkpoint: what export bakes in
                    state["prior_power"] = float(logs["prior_power"])
                self.model.save(run / "best.keras.tmp.keras")  # replaced whole: a kill never leaves half a file
                (run / "best.keras.tmp.keras").replace(run / "best.keras")
            # last.keras is written after best.keras and before state.json: a crash leaves a consistent pair.
            self.model.save(run / "last.keras.tmp.keras")
            (run / "last.keras.tmp.keras").replace(run / "last.keras")
            write_json(run / "state.json", state)
            stopping = epoch + 1 - state["best_epoch"] >= config.patience
            if stopping:
                log.info("no better PublicTest accuracy for %d epochs: stopping early", config.patience)
                self.model.stop_training = True
            # The plot costs ~0.2 s: every epoch when epochs are slow (CPU), every 10th on a GPU's 2-3 s epochs.
            if row["seconds"] >= 20 or (epoch + 1) % 10 == 0 or epoch + 1 == config.epochs or stopping:
                plot_curves(run / "log.csv", run / "curves.png")

    return RunFolder()


def public_test_scores(probabilities: np.ndarray, fer_labels: np.ndarray, ferplus: np.ndarray | None) -> dict:
    """PublicTest figures from a model's probabilities: FER accuracy, and where FER+ majority labels are given
    (-1 where a face has none: see training.data.ferplus_labels) FER+ accuracy, mean per-class recall and every
    class's recall (``public_ferplus_<emotion>_recall``)."""
    from training.metrics import per_class_recall

    predicted = probabilities.argmax(axis=1)
    scores = {"public_fer_accuracy": float((predicted == fer_labels).mean())}
    if ferplus is not None:
        keep = ferplus >= 0
        recall = per_class_recall(ferplus[keep], predicted[keep])
        scores.update(public_ferplus_accuracy=float((predicted[keep] == ferplus[keep]).mean()),
                      public_ferplus_mean_recall=float(np.nanmean(recall)),
                      **{f"public_ferplus_{emotion}_recall": float(value)
                         for emotion, value in zip(fer_data.EMOTIONS, recall)})
    return scores


def selection_score(config: TrainConfig, scores: dict) -> float:
    if config.select == "ferplus":
        return (scores["public_ferplus_accuracy"] + scores["public_ferplus_mean_recall"]) / 2
    return scores["public_fer_accuracy"]


PRIOR_POWER_STEP = 0.1  # the grid of output shifts tried on PublicTest: 0, 0.1, ..., tau


def choose_prior_power(config: TrainConfig, probabilities: np.ndarray, fer_labels: np.ndarray,
                       ferplus: np.ndarray | None, log_prior: np.ndarray) -> tuple[float, dict]:
    """The output shift P in [0, tau] (softmax(log p + P log prior)) with the best selection score on PublicTest,
    among the shifts that keep FER+ neutral recall >= ``config.neutral_floor`` (all of them, if none does);
    returns P and the scores at P."""
    from training.losses import adjust_probabilities

    best = None
    for power in np.round(np.arange(0.0, config.logit_adjust + 1e-9, PRIOR_POWER_STEP), 2):
        scores = public_test_scores(adjust_probabilities(probabilities, log_prior, power), fer_labels, ferplus)
        keeps = scores.get("public_ferplus_neutral_recall", 1.0) >= config.neutral_floor
        key = (keeps, selection_score(config, scores))
        if best is None or key > best[0]:
            best = (key, float(power), scores)
    return best[1], best[2]


def predict_faces(model, batch: np.ndarray, flip: bool = False) -> np.ndarray:
    """A Keras model's probabilities (float32) for a batch (N, 48, 48, 1), averaged with the mirror images' where
    ``flip`` (as an export with mirror averaging computes them)."""
    probabilities = np.asarray(model.predict(batch, batch_size=512, verbose=0), np.float32)
    if flip:
        probabilities = (probabilities + np.asarray(model.predict(batch[:, :, ::-1], batch_size=512, verbose=0),
                                                    np.float32)) / 2
    return probabilities


def _make_scores_callback(config: TrainConfig, dataset: fer_data.Dataset, prior: np.ndarray, flip: bool = False):
    """Per epoch, before the run folder's callback: PublicTest's figures into the logs (log.csv) from one pass over
    it - ``val_loss`` and ``val_accuracy`` on FER's labels (what Keras' own validation would give), FER+'s figures,
    and the score that chooses the checkpoint (``selection``). With ``--logit-adjust`` the figures are those of the
    best output shift (``prior_power``, see choose_prior_power), the one export bakes in. ``flip``: each face's
    probabilities averaged with its mirror image's, as the exported model will compute them (a run that starts
    from a model with mirror averaging exports with it)."""
    import keras

    images, fer_labels = dataset.split("PublicTest")
    ferplus = None
    if dataset.ferplus_votes is not None:
        ferplus, _ = fer_data.ferplus_labels(dataset.votes("PublicTest"))
    elif config.select == "ferplus":
        raise ValueError("--select ferplus needs FER+ votes: give --ferplus-votes fer2013new.csv")
    batch = images.astype(np.float32)[..., None]
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    one_hot = np.eye(len(fer_data.EMOTIONS), dtype=np.float32)[fer_labels]

    class Scores(keras.callbacks.Callback):
        def score(self) -> dict:
            probabilities = predict_faces(self.model, batch, flip)
            shift = {}
            if config.logit_adjust > 0:
                from training.losses import adjust_probabilities

                power, scores = choose_prior_power(config, probabilities, fer_labels, ferplus, np.log(prior))
                probabilities = adjust_probabilities(probabilities, np.log(prior), power)  # for val_loss
                shift = {"prior_power": power}
            else:
                scores = public_test_scores(probabilities, fer_labels, ferplus)
            return {"val_accuracy": scores["public_fer_accuracy"],
                    "val_loss": float(keras.ops.convert_to_numpy(loss(one_hot, probabilities))), **scores,
                    "selection": selection_score(config, scores), **shift}

        def on_train_begin(self, logs=None):
            log.info("PublicTest before this session: %s", ", ".join(
                f"{key} {value:.4f}" for key, value in self.score().items()))

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs.update(self.score())

    return Scores()


def train(config: TrainConfig, resume: bool = False, command: str | None = None) -> Path:
    """Train per ``config`` into ``config.out``; with ``resume``, continue from ``last.keras``. Returns the folder.
    ``command`` (the command line, for the record) defaults to a description of this call."""
    import keras

    run = Path(config.out)
    state: dict = {}
    if resume:
        if not (run / "state.json").exists() or not (run / "last.keras").exists():
            raise FileNotFoundError(f"{run}: nothing to resume (no state.json / last.keras)")
        config = TrainConfig.from_json(json.loads((run / "config.json").read_text()))
        state = json.loads((run / "state.json").read_text())
        _truncate_log(run / "log.csv", state["epochs_done"])
        log.info("resuming %s after epoch %d (best PublicTest accuracy %.4f at epoch %d)", run,
                 state["epochs_done"], state["best_val_accuracy"], state["best_epoch"])
    else:
        if (run / "state.json").exists():
            raise FileExistsError(f"{run}: holds a run already; use --resume to continue it or pick another --out")
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / "config.json", config.to_json())
        from fer_batch.system import describe_hardware

        state = {"epochs_done": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "train_seconds": 0.0,
                 "hardware": describe_hardware()}
        if config.logit_adjust < 0 or not 0.0 <= config.neutral_floor <= 1.0:
            raise ValueError(f"--logit-adjust {config.logit_adjust:g} / --neutral-floor {config.neutral_floor:g}: "
                             "give tau >= 0 and a recall between 0 and 1")

    keras.utils.set_random_seed(config.seed + state["epochs_done"])
    policy = _precision_policy(config.precision)
    keras.mixed_precision.set_global_policy(policy)
    from fer_batch.system import describe_hardware

    # Each invocation (the first and every --resume) and where it ran: the model card's training section.
    state.setdefault("sessions", []).append({
        "from_epoch": state["epochs_done"],
        "command": command or f"training.train.train(<config of {run}>, resume={resume})",
        "backend": keras.backend.backend(), "device": _accelerator() or "cpu", "precision": policy,
        "hardware": describe_hardware()})
    started = time.time()
    dataset = fer_data.load(config.data, config.ferplus, config.ferplus_votes)
    log.info("loaded %s in %.1f s: %s", dataset.source, time.time() - started, dataset.counts())
    train_data, steps = make_datasets(config, dataset, run)
    train_data.set_epoch(state["epochs_done"])
    if config.logit_adjust > 0:
        state["class_prior"] = [round(float(share), 6) for share in train_data.prior]
        log.info("logit-adjusted loss, tau %g; class prior %s", config.logit_adjust,
                 dict(zip(fer_data.EMOTIONS, state["class_prior"])))
    from training import losses  # registers the logit-adjusted loss before last.keras is loaded

    if resume:
        model = keras.models.load_model(run / "last.keras")
        optimizer = model.optimizer  # its step count and momentum carry on
    else:
        from training.model import make_model

        model = make_model(arch=config.arch, widths=config.widths)
        if config.init:
            from training.warmstart import CALIBRATION_FACES, keras_from_onnx

            rng = np.random.default_rng(config.seed)
            faces = dataset.images[dataset.mask("Training")]
            start = keras_from_onnx(config.init, faces[rng.permutation(len(faces))[:CALIBRATION_FACES]])
            if (start.arch, start.widths) != (config.arch, config.widths):
                raise ValueError(f"{config.init}: a {start.arch} of widths {list(start.widths)}; this run asks for "
                                 f"{config.arch} widths {list(config.widths)} (leave --widths out to keep the file's)")
            model.set_weights(start.model.get_weights())
            state["init"] = start.record()
            write_json(run / "state.json", state)
        optimizer = make_optimizer(config, steps)
    # On TensorFlow, XLA is slower than oneDNN on CPU (benchmarks/train_speed.py); JAX always compiles.
    if config.logit_adjust > 0:
        loss = losses.LogitAdjustedCrossentropy(np.log(train_data.prior), config.logit_adjust, config.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                  jit_compile=keras.backend.backend() != "tensorflow")
    log.info("model %s: %d parameters, backend %s on %s, precision %s, %d steps per epoch", model.name,
             model.count_params(), keras.backend.backend(), _accelerator() or "cpu", policy, steps)
    # PublicTest is scored as the exported model will run: with mirror averaging where the starting model had it.
    flip = bool(state.get("init", {}).get("test_time_flip_averaging", False))
    if state["epochs_done"] < config.epochs:
        model.fit(train_data, epochs=config.epochs, initial_epoch=state["epochs_done"],
                  callbacks=[_make_scores_callback(config, dataset, train_data.prior, flip),
                             _make_run_callback(run, config, state)],
                  shuffle=False,
                  verbose=1 if sys.stderr.isatty() else 2)
    state["finished"] = True
    write_json(run / "state.json", state)
    log.info("done: best PublicTest accuracy %.4f at epoch %d; %s", state["best_val_accuracy"],
             state["best_epoch"], run / "best.keras")
    return run


def write_json(path: Path, values: dict) -> None:
    """``values`` as indented JSON at ``path``, replaced whole (a kill never leaves half a file)."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(values, indent=2) + "\n")
    temporary.replace(path)


def _append_csv(path: Path, row: dict) -> None:
    """One row under the file's own header (a run resumed by another version keeps its columns), or a new file."""
    header = None
    if path.exists():
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), None)
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header or list(row), extrasaction="ignore")
        if not header:
            writer.writeheader()
        writer.writerow(row)


def _truncate_log(path: Path, epochs: int) -> None:
    """Drop log rows past the last saved epoch (an epoch that was logged but whose checkpoint never landed)."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) > epochs:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[:epochs])


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot_curves(log_csv: Path, png: Path) -> None:
    """Loss and accuracy per epoch, Training vs PublicTest, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_csv)
    epochs = [int(r["epoch"]) for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "Training"), (f"val_{metric}", "PublicTest")):
            values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
            if values:
                axis.plot(epochs[: len(values)], values, marker=".", label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    best = max(rows, key=lambda r: float(r.get("val_accuracy") or 0))
    figure.suptitle(f"best PublicTest accuracy {float(best.get('val_accuracy') or 0):.4f} at epoch {best['epoch']}")
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def describe_recipe(config: TrainConfig) -> str:
    """One line for the model card and ONNX metadata."""
    schedule = "constant" if config.warmup_epochs < 0 else f"{config.warmup_epochs}-epoch warm-up + cosine"
    targets = "FER-2013 labels" if not config.ferplus else "FER+ majority labels"
    if config.ferplus_weight:
        targets += f", moved {config.ferplus_weight} towards FER+ vote distributions"
    if config.logit_adjust:
        targets += (f"; logit-adjusted loss, tau {config.logit_adjust:g} (output shift chosen on PublicTest"
                    + (f", neutral recall >= {config.neutral_floor:g}" if config.neutral_floor else "") + ")")
    if config.teachers:
        targets += (f", moved {config.teacher_weight} towards the mean of {len(config.teachers)} teacher(s) "
                    f"({', '.join(config.teachers)})")
    return (f"targets: {targets}; "
            f"{config.arch} widths {list(config.widths)}; {config.optimizer} lr {config.learning_rate} ({schedule}), "
            f"weight decay {config.weight_decay}, batch {config.batch_size}, up to {config.epochs} epochs, "
            f"label smoothing {config.label_smoothing}, class weights {config.class_weights}, seed {config.seed}, "
            f"augment {asdict(config.augment)}")

