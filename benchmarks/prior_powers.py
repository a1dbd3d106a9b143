"""PublicTest scores of a run trained with ``--logit-adjust`` at every output shift P, to see what each costs.

    python benchmarks/prior_powers.py RUN --data ../shared/data/fer2013/fer2013.csv.gz \
        --ferplus-votes ../shared/data/fer2013/fer2013new.csv

For P = 0, 0.1, ..., 1.5: softmax(log p + P log prior) on PublicTest (the run's best.keras, with mirror averaging
when the model it started from had it): FER+ accuracy, mean per-class recall, each class's recall, the selection
score and FER's accuracy; the run's own choice is marked, and so is the best selection among the shifts whose FER+
neutral recall is at least --neutral-floor (the rule 0.5's model was exported by). PrivateTest is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder trained with --logit-adjust")
    parser.add_argument("--data", required=True, help="fer2013.csv(.gz) or a `fer-train pack` file")
    parser.add_argument("--ferplus-votes", required=True, help="fer2013new.csv")
    parser.add_argument("--max-power", type=float, default=1.5)
    parser.add_argument("--neutral-floor", type=float, default=0.80)
    args = parser.parse_args(argv)

    from fer_batch.labels import EMOTIONS
    from training import data as fer_data
    from training.export import load_float32
    from training.losses import adjust_probabilities
    from training.model import precision_policy
    from training.train import TrainConfig, predict_faces, public_test_scores, selection_score

    state = json.loads((args.run / "state.json").read_text())
    if "class_prior" not in state:
        raise SystemExit(f"{args.run}: not trained with --logit-adjust (no class_prior in state.json)")
    config = TrainConfig.from_json(json.loads((args.run / "config.json").read_text()))
    dataset = fer_data.load(args.data, None, args.ferplus_votes)
    images, fer_labels = dataset.split("PublicTest")
    ferplus = fer_data.ferplus_labels(dataset.votes("PublicTest"))[0]
    with precision_policy("float32"):
        model = load_float32(args.run / "best.keras")
    probabilities = predict_faces(model, images.astype(np.float32)[..., None],
                                  flip=state.get("init", {}).get("test_time_flip_averaging", False))
    log_prior = np.log(np.asarray(state["class_prior"]))
    header = " ".join(f"{e[:7]:>7}" for e in EMOTIONS)
    print(f"{'P':>4} {'FER+':>6} {'mean':>6} {header} {'select':>7} {'FER':>6}")
    powers = np.round(np.arange(0, args.max_power + 1e-9, 0.1), 2)
    table = [public_test_scores(adjust_probabilities(probabilities, log_prior, p), fer_labels, ferplus) for p in powers]
    keeping = [i for i, scores in enumerate(table) if scores["public_ferplus_neutral_recall"] >= args.neutral_floor]
    best = max(keeping, key=lambda i: selection_score(config, table[i]), default=None)
    for index, (power, scores) in enumerate(zip(powers, table)):
        mark = "  <- the run's choice" if abs(power - state.get("prior_power", -1)) < 1e-6 else ""
        mark += f"  <- best with neutral >= {args.neutral_floor:g}" if index == best else ""
        print(f"{power:>4.1f} {scores['public_ferplus_accuracy']:>6.4f} {scores['public_ferplus_mean_recall']:>6.4f} "
              + " ".join(f"{scores[f'public_ferplus_{e}_recall']:>7.3f}" for e in EMOTIONS)
              + f" {selection_score(config, scores):>7.4f} {scores['public_fer_accuracy']:>6.4f}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
