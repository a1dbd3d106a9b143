"""Average the weights of several runs into one model of the same size (a "model soup", Wortsman et al., 2022).

Runs that started from the same model (``fer-train train --init``) and were trained with different seeds or recipes
end in one basin, where the mean of their weights is usually at least as good as each of them: an ensemble's
accuracy at one model's cost per face. Everything that is learnt is averaged (kernels, biases, batch-norm scales and
shifts); the batch norms' moving statistics are not - the mean of statistics is not the statistics of the mean
model - so they are measured again on Training faces, as training measures them (``calibrate_batch_norms``).

The output is a run folder like ``train``'s (``best.keras``, ``config.json``, ``state.json`` with the ingredients
and the average's PublicTest scores), so ``fer-train export`` turns it into a model with the same contract and
test-time settings as the runs' starting model, and the model card shows what was averaged. PublicTest decides
whether the average is better than its ingredients; PrivateTest is never looked at.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
CALIBRATION_FACES = 4096


def calibrate_batch_norms(model, faces: np.ndarray, augment=None, batch_size: int = 64, seed: int = 0) -> None:
    """Set every batch norm's moving mean and variance of ``model`` to what training would have given it: the mean,
    over batches of ``faces`` (N, 48, 48) uint8 augmented as in training (``augment``, an AugmentConfig), of each
    norm's batch statistics in training mode (dropout on, every norm normalising by its batch), as SWA's batch-norm
    update does. Statistics measured in inference mode instead (no dropout, unaugmented faces) are not what the
    layers after each norm learnt to expect: on two checkpoints of one run they cost 1 point of PublicTest."""
    import keras

    from training.augment import AugmentConfig, augment_batch

    augment = augment or AugmentConfig()
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.input, [norm.input for norm in norms])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(faces))
    sums = [[0.0, 0.0] for _ in norms]
    batches = 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        images = augment_batch(faces[order[start:start + batch_size]], augment, rng)[..., None]
        for total, inputs in zip(sums, probe(images, training=True)):
            inputs = np.asarray(keras.ops.convert_to_numpy(inputs), np.float64)
            axes = tuple(range(inputs.ndim - 1))
            total[0] = total[0] + inputs.mean(axis=axes)
            total[1] = total[1] + inputs.var(axis=axes)
        batches += 1
    if not batches:
        raise ValueError(f"batch-norm calibration needs {batch_size} faces or more, got {len(faces)}")
    for norm, (mean, variance) in zip(norms, sums):
        gamma, beta, _, _ = norm.get_weights()
        norm.set_weights([gamma, beta, (mean / batches).astype(np.float32), (variance / batches).astype(np.float32)])


def average_weights(models: list, names: list[str]) -> list[np.ndarray]:
    """The element-wise mean of the models' weights; ValueError naming the first model whose weights differ in
    shape from the first one's (another architecture or width)."""
    weights = [model.get_weights() for model in models]  # each a copy of every variable: fetched once
    reference = [w.shape for w in weights[0]]
    for own, name in zip(weights[1:], names[1:]):
        if [w.shape for w in own] != reference:
            raise ValueError(f"{name}: its weights differ in shape from {names[0]}'s (another architecture or "
                             f"width); only runs of one architecture can be averaged")
    return [np.mean(values, axis=0) for values in zip(*weights)]


def average_runs(runs: list[str | Path], out: str | Path, data: str | Path, ferplus_votes: str | Path | None = None,
                 seed: int = 1337, command: str | None = None) -> dict:
    """Average the best.keras of ``runs`` (run folders or .keras files) into the run folder ``out``; returns its
    state (the ingredients' and the average's PublicTest scores)."""
    import keras

    from training import data as fer_data
    from training.export import load_float32, resolve_model_path, training_summary
    from training.model import precision_policy
    from training.train import TrainConfig, choose_prior_power, public_test_scores, selection_score

    if len(runs) < 2:
        raise ValueError("average needs two or more runs")
    # The calibration runs dropout: its masks come from Keras' generators, seeded here (before the models are
    # loaded, which creates them) so the same command gives the same model.
    keras.utils.set_random_seed(seed)
    out = Path(out)
    if (out / "state.json").exists() or (out / "best.keras").exists():
        raise FileExistsError(f"{out}: holds a run already; pick another --out")
    paths = [resolve_model_path(run) for run in runs]
    dataset = fer_data.load(data, None, ferplus_votes)
    training = dataset.images[dataset.mask("Training")]
    rng = np.random.default_rng(seed)
    calibration = training[rng.permutation(len(training))[:CALIBRATION_FACES]]
    images, fer_labels = dataset.split("PublicTest")
    ferplus = fer_data.ferplus_labels(dataset.votes("PublicTest"))[0] if dataset.ferplus_votes is not None else None

    first_run = paths[0].parent
    config = TrainConfig.from_json(json.loads((first_run / "config.json").read_text())) \
        if (first_run / "config.json").exists() else TrainConfig(data=str(data), out=str(out))
    if ferplus is None and config.select == "ferplus":
        raise ValueError(f"{paths[0]} was chosen with --select ferplus: give --ferplus-votes fer2013new.csv")

    # Runs trained with --logit-adjust are scored, and the average exported, at their best output shift.
    priors = {tuple(json.loads((path.parent / "state.json").read_text()).get("class_prior", ()))
              if (path.parent / "state.json").exists() else () for path in paths}
    if len(priors) > 1:
        raise ValueError("the runs were trained with different class priors (with and without --logit-adjust, or on "
                         "other targets): their outputs mean different things")
    prior = np.asarray(priors.pop(), np.float64)

    def score(model) -> dict:
        probabilities = np.asarray(model.predict(images.astype(np.float32)[..., None], batch_size=512, verbose=0))
        shift = {}
        if prior.size and config.logit_adjust > 0:
            power, scores = choose_prior_power(config, probabilities, fer_labels, ferplus, np.log(prior))
            shift = {"prior_power": power}
        else:
            scores = public_test_scores(probabilities, fer_labels, ferplus)
        return {**{k: round(v, 5) for k, v in scores.items()}, "selection": round(selection_score(config, scores), 5),
                **shift}

    with precision_policy("float32"):
        models = [load_float32(path) for path in paths]
        ingredients, starts = [], []
        for path, model in zip(paths, models):
            # Each ingredient's own record (recipe, sessions, epochs, time) for the model card; where it started
            # from is kept once, as the average's own starting point.
            summary = training_summary(path, model)
            starts.append(summary.pop("started_from", None) or {})
            summary.pop("public_test_scores", None)
            ingredients.append({"model": str(path), "init_sha256": starts[-1].get("sha256"),
                                "public_test": score(model), "training": summary})
            log.info("%s: PublicTest %s", path, describe_scores(ingredients[-1]["public_test"]))
        origins = {ingredient["init_sha256"] for ingredient in ingredients}
        if len(origins) > 1:
            log.warning("the runs started from different models (%s): their average may be far worse than each",
                        ", ".join(sorted(str(s)[:12] for s in origins)))
        averaged = models[0]
        averaged.set_weights(average_weights(models, [str(p) for p in paths]))
        calibrate_batch_norms(averaged, calibration, config.augment, config.batch_size, seed)
        scores = score(averaged)
        log.info("the average: PublicTest %s", describe_scores(scores))
        out.mkdir(parents=True, exist_ok=True)
        averaged.save(out / "best.keras.tmp.keras")
        (out / "best.keras.tmp.keras").replace(out / "best.keras")

    from fer_batch.system import describe_hardware

    config.out = str(out)
    (out / "config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
    hardware = describe_hardware()
    state = {"epochs_done": sum(i["training"].get("epochs_trained") or 0 for i in ingredients), "best_epoch": None,
             "best_val_accuracy": scores["public_fer_accuracy"], "best_selection": scores["selection"],
             "best_scores": {k: v for k, v in scores.items() if k.startswith("public_")},
             "train_seconds": sum(i["training"].get("train_seconds") or 0 for i in ingredients),
             "hardware": hardware, "finished": True, "sessions": [],
             "averaged": {"command": command or "training.average.average_runs(...)", "runs": ingredients,
                          "calibration_faces": int(len(calibration)), "hardware": hardware}}
    if "prior_power" in scores:  # what export bakes into the logits, as for a logit-adjusted run of its own
        state.update(class_prior=prior.tolist(), prior_power=scores["prior_power"])
    if starts[0]:
        state["init"] = starts[0]  # the starting model: export keeps its test-time settings
    (out / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    return state


def describe_scores(scores: dict, separator: str = ", ") -> str:
    """PublicTest scores as one line: ``fer_accuracy 0.6147, ferplus_accuracy 0.8520, ...``."""
    return separator.join(f"{key.removeprefix('public_')} {value:.4f}" for key, value in scores.items())
