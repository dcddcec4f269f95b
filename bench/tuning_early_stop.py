"""Does ending overfitting trials early save training without losing the best model?

Runs the same keras-tuner RandomSearch twice over kreg's CNNHyperModel on
scikit-learn's digits (the shipped `load_digit_sequences` split): plain, and with
`kreg.tuning.OverfittingPruning` ending each trial once, at its pace, it cannot
reach the search's best (sooner once `OverfittingDetector` sees it overfit). Same trials (oracle seed), same per-trial initialization
(hypermodel seed), same epochs budget, so the plain search is also every pruned
trial run to its full length (the script checks that each trial id has the same
hyperparameters in both). Prints each trial's best validation accuracy and epochs
in both searches, then:

- the best validation accuracy of each search, the epochs trained and their ratio;
- wrongly pruned trials: pruned trials whose full-length best beats the pruned
  search's best (the search would have picked another model without pruning);
- batch norm against the other norms: the best batch-norm trial's accuracy
  against the best trial of any other norm, in each search.

    KERAS_BACKEND=tensorflow python bench/tuning_early_stop.py --trials 12 --epochs 100
    (--no-precise-batch-norm: batch-norm trials validated with their moving statistics)

`--record curves.json` also saves every plain trial's per-epoch logs;
`--replay curves.json` then trains nothing: it feeds those logs, trial by trial
in the search's order, to `kreg.tuning.pruning_detector` (the same detector
`OverfittingPruning` adds) and prints the pruned search that would have run.
A pruned trial trains exactly as the plain one up to its last epoch (same
seeds), so the replay gives the figures of a real pruned search in seconds,
for any detector arguments.
"""

import argparse
import copy
import json
import tempfile
import time
import types

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import keras_tuner  # noqa: E402

from kreg.datasets import load_digit_sequences  # noqa: E402
from kreg.tuning import CNNHyperModel  # noqa: E402
from kreg.tuning import OverfittingPruning  # noqa: E402
from kreg.tuning import pruning_detector  # noqa: E402


class CountingRandomSearch(keras_tuner.RandomSearch):
    """Plain RandomSearch that counts the epochs each trial trains."""

    def __init__(self, *args, **kwargs):
        self.trial_epochs = {}
        self.curves = {}
        super().__init__(*args, **kwargs)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        self.trial_epochs[trial.trial_id] = self.trial_epochs.get(trial.trial_id, 0) + 1
        self.curves.setdefault(trial.trial_id, []).append(
            {k: float(v) for k, v in (logs or {}).items()}
        )

    @property
    def total_epochs(self):
        return sum(self.trial_epochs.values())


class PrunedRandomSearch(OverfittingPruning, keras_tuner.RandomSearch):
    pass


class Progress(keras.callbacks.Callback):
    def __init__(self, label):
        super().__init__()
        self.label = label

    def on_train_end(self, logs=None):
        print(
            f"  [{self.label}] trial done after {len(self.model.history.epoch)} epochs", flush=True
        )


def run(label, tuner_class, args, data, directory, **tuner_kwargs):
    (x, y), (x_val, y_val) = data
    hypermodel = CNNHyperModel(
        input_shape=(8, 8),
        num_classes=10,
        filters=tuple(args.filters),
        dense_units=args.dense_units,
        seed=args.seed,
        precise_batch_norm=args.precise_batch_norm,
    )
    tuner = tuner_class(
        hypermodel,
        objective="val_accuracy",
        max_trials=args.trials,
        seed=args.seed,
        directory=directory,
        project_name=label,
        overwrite=True,
        **tuner_kwargs,
    )
    start = time.perf_counter()
    tuner.search(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=0,
        callbacks=[Progress(label)],
    )
    seconds = time.perf_counter() - start
    trials = {t.trial_id: t for t in tuner.oracle.trials.values()}
    best = tuner.oracle.get_best_trials(1)[0]
    return {
        "tuner": tuner,
        "trials": trials,
        "best_score": best.score,
        "best_words": hypermodel.space.describe(best.hyperparameters),
        "epochs": tuner.total_epochs,
        "seconds": seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=100)
    # keras-tuner treats seed=0 as "no seed" (`seed or random.randint(...)`): start at 1.
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--filters", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--dense-units", type=int, default=128)
    # None: OverfittingDetector's own default, so the bench measures the detector users get.
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--smoothing", type=float, default=None)
    parser.add_argument(
        "--start-from-epoch", type=int, default=None, help="detector warm-up epochs"
    )
    parser.add_argument(
        "--objective-patience",
        type=int,
        default=None,
        help="epochs without a new best val_accuracy before a trial may end (default: 2x patience)",
    )
    parser.add_argument(
        "--pruned-only",
        action="store_true",
        help="run only the pruned search (each trial trains as in a plain run of the same arguments)",
    )
    parser.add_argument("--record", metavar="JSON", help="save the plain trials' per-epoch logs")
    parser.add_argument(
        "--replay",
        metavar="JSON",
        help="replay recorded logs through the pruning detector; no training",
    )
    parser.add_argument(
        "--no-precise-batch-norm",
        dest="precise_batch_norm",
        action="store_false",
        help="validate batch-norm trials with their moving statistics (kreg before PreciseBatchNorm)",
    )
    args = parser.parse_args()
    detector_kwargs = {
        key: value
        for key, value in (
            ("patience", args.patience),
            ("smoothing", args.smoothing),
            ("start_from_epoch", args.start_from_epoch),
            ("objective_patience", args.objective_patience),
        )
        if value is not None
    }
    if args.replay:
        replay(args.replay, detector_kwargs)
        return
    print(
        f"backend={keras.backend.backend()} keras={keras.__version__} "
        f"keras-tuner={keras_tuner.__version__}; CNNHyperModel filters={args.filters} "
        f"dense={args.dense_units}; digits, {args.train_size} training; RandomSearch "
        f"{args.trials} trials x {args.epochs} epochs, seed {args.seed}; detector "
        f"arguments {detector_kwargs or 'defaults'}; "
        f"precise batch norm {'on' if args.precise_batch_norm else 'off'}",
        flush=True,
    )
    data = load_digit_sequences(train_size=args.train_size, seed=args.seed)
    with tempfile.TemporaryDirectory() as directory:
        plain = None
        if not args.pruned_only:
            print("plain RandomSearch:", flush=True)
            plain = run("plain", CountingRandomSearch, args, data, directory)
            if args.record:
                with open(args.record, "w") as f:
                    json.dump(
                        {
                            "arguments": vars(args),
                            "trials": {
                                trial_id: {
                                    "hyperparameters": trial.hyperparameters.values,
                                    "logs": plain["tuner"].curves[trial_id],
                                }
                                for trial_id, trial in sorted(plain["trials"].items())
                            },
                        },
                        f,
                    )
        print("RandomSearch + OverfittingPruning:", flush=True)
        pruned = run(
            "pruned", PrunedRandomSearch, args, data, directory, detector_kwargs=detector_kwargs
        )

    if plain is None:
        report_pruned(pruned)
    else:
        report(plain, pruned)


def report_pruned(pruned):
    """The pruned search alone: compare with a plain run's per-trial bests by hand."""
    tuner = pruned["tuner"]
    print("\n| trial | regularization | pruned: best val acc | epochs | pruned after epoch |")
    print("| --- | --- | --- | --- | --- |")
    for trial_id, trial in sorted(pruned["trials"].items()):
        print(
            f"| {trial_id} | {tuner.hypermodel.space.describe(trial.hyperparameters)} | {trial.score:.4f} "
            f"| {tuner.trial_epochs.get(trial_id, 0)} | {tuner.pruned_trials.get(trial_id, '')} |"
        )
    print(
        f"pruned: best val accuracy {pruned['best_score']:.4f} ({pruned['best_words']}), "
        f"{pruned['epochs']} epochs, {pruned['seconds']:.0f} s, {len(tuner.pruned_trials)} "
        f"of {len(pruned['trials'])} trials pruned"
    )


def replay(path, detector_kwargs):
    """The pruned search that the recorded plain trials would have made, in trial order."""
    with open(path) as f:
        recorded = json.load(f)
    # The direction given: a replay has no compiled metric to read it from
    # (mode="auto" reads it there, kreg.callbacks.monitoring.monitor_direction).
    template = pruning_detector(
        objective=keras_tuner.Objective("val_accuracy", "max"), verbose=0, **detector_kwargs
    )
    rows, epochs_total, epochs_plain = [], 0, 0
    for trial_id, trial in sorted(recorded["trials"].items()):
        logs = trial["logs"]
        detector = copy.deepcopy(template)  # as keras-tuner does; the search's record is shared
        model = types.SimpleNamespace(stop_training=False, metrics=[])
        detector.set_model(model)
        detector.set_params({"epochs": len(logs)})
        detector.on_train_begin()
        ran = len(logs)
        for epoch, epoch_logs in enumerate(logs):
            detector.on_epoch_end(epoch, dict(epoch_logs))
            if model.stop_training:
                ran = epoch + 1
                break
        detector.on_train_end()
        accuracy = [epoch_logs["val_accuracy"] for epoch_logs in logs]
        rows.append(
            (
                trial_id,
                trial["hyperparameters"].get("norm"),
                ran,
                len(logs),
                max(accuracy[:ran]),
                max(accuracy),
            )
        )
        epochs_total += ran
        epochs_plain += len(logs)
    best = max(row[4] for row in rows)
    plain_best = max(row[5] for row in rows)
    wrong = [row[0] for row in rows if row[2] < row[3] and row[5] > best]
    print(
        f"replay of {path} ({recorded['arguments']['trials']} trials, seed {recorded['arguments']['seed']}); "
        f"detector arguments {detector_kwargs or 'defaults'}"
    )
    print(
        "\n| trial | norm | plain best | pruned best | epochs | full length beats the pruned best |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for trial_id, norm, ran, length, pruned_best, full_best in rows:
        was_pruned = ran < length
        print(
            f"| {trial_id} | {norm} | {full_best:.4f} | {pruned_best:.4f} | {ran}{'' if was_pruned else ' (not pruned)'} "
            f"| {('**yes**' if full_best > best else 'no') if was_pruned else ''} |"
        )
    print(f"\nepochs ratio (pruned / plain): {epochs_total / epochs_plain:.2f} (target <= 0.50)")
    print(
        f"best val accuracy difference (plain - pruned): {100 * (plain_best - best):+.2f} points (target <= 0.5)"
    )
    print(f"wrongly pruned: {len(wrong)} of {len(rows)} trials {wrong} (target 0 of >= 12)")


def _norm_of(trial):
    return trial.hyperparameters.values.get("norm")


def _best_by_norm(trials):
    """(best batch-norm score, best score of any other norm) over completed trials."""
    batch = [t.score for t in trials.values() if t.score is not None and _norm_of(t) == "batch"]
    other = [t.score for t in trials.values() if t.score is not None and _norm_of(t) != "batch"]
    return max(batch, default=float("nan")), max(other, default=float("nan"))


def report(plain, pruned):
    space = plain["tuner"].hypermodel.space
    print(
        "\n| trial | regularization | plain: best val acc | epochs | pruned: best val acc | epochs | pruned, full length beats the pruned search's best |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    wrongly_pruned = []
    for trial_id, trial in sorted(plain["trials"].items()):
        other = pruned["trials"][trial_id]
        if other.hyperparameters.values != trial.hyperparameters.values:
            raise RuntimeError(
                f"trial {trial_id} differs between the searches: the comparison is void"
            )
        was_pruned = trial_id in pruned["tuner"].pruned_trials
        beats = was_pruned and trial.score > pruned["best_score"]
        if beats:
            wrongly_pruned.append(trial_id)
        print(
            f"| {trial_id} | {space.describe(trial.hyperparameters)} | {trial.score:.4f} "
            f"| {plain['tuner'].trial_epochs.get(trial_id, 0)} | {other.score:.4f} "
            f"| {pruned['tuner'].trial_epochs.get(trial_id, 0)}{' (pruned)' if was_pruned else ''} "
            f"| {'**yes**' if beats else 'no' if was_pruned else ''} |"
        )
    gap = 100 * (plain["best_score"] - pruned["best_score"])
    ratio = pruned["epochs"] / plain["epochs"]
    n_pruned = len(pruned["tuner"].pruned_trials)
    print()
    print(
        f"plain : best val accuracy {plain['best_score']:.4f} ({plain['best_words']}), "
        f"{plain['epochs']} epochs, {plain['seconds']:.0f} s"
    )
    print(
        f"pruned: best val accuracy {pruned['best_score']:.4f} ({pruned['best_words']}), "
        f"{pruned['epochs']} epochs, {pruned['seconds']:.0f} s, {n_pruned} "
        f"of {len(pruned['trials'])} trials pruned"
    )
    print(f"best val accuracy difference (plain - pruned): {gap:+.2f} points (target <= 0.5)")
    print(f"epochs ratio (pruned / plain): {ratio:.2f} (target <= 0.50)")
    print(f"time ratio (pruned / plain): {pruned['seconds'] / plain['seconds']:.2f}")
    print(
        f"wrongly pruned: {len(wrongly_pruned)} of {len(plain['trials'])} trials "
        f"({n_pruned} pruned) {wrongly_pruned} (target 0 of >= 12)"
    )
    for label, search in (("plain", plain), ("pruned", pruned)):
        batch, other = _best_by_norm(search["trials"])
        print(
            f"{label}: best batch-norm trial {batch:.4f}, best other norm {other:.4f}: "
            f"{100 * (batch - other):+.2f} points (target >= -2)"
        )


if __name__ == "__main__":
    main()
