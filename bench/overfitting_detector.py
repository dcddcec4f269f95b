"""Does OverfittingDetector call real recorded runs right, on runs it was not tuned on?

Replays the runs of `bench/data/corpus/` (recorded by `bench/record_corpus.py`)
epoch by epoch through the detector, no training. Each run carries a label
from its whole curve and a half (tuning or held-out), both given by
`bench/corpus_labels.py`, written before the detector ran on the corpus. The
defaults of the `"noise"` criterion (its band `threshold` and `patience`) are
chosen on the tuning half (`--tune`); every figure is printed for both halves,
and the held-out half is what the README quotes. Targets on the held-out half:

- 0 "overfitting" alarms on runs whose validation minimum lies in their last
  10% of epochs ("improving");
- overfit runs flagged at most 5 epochs after the validation minimum (where
  patience-10 early stopping stops 10 after it), the onset within 3 of it, and
  no alarm before the minimum;
- "saturated" reported on memorizing plateaus (label "saturated").

Prechelt's GL, PQ, UP and the p-value test are replayed on the same runs at
their default levels (`criterion=`), beside the default.

    python bench/overfitting_detector.py            # both halves, every criterion
    python bench/overfitting_detector.py --runs     # plus the default's table per run
    python bench/overfitting_detector.py --tune     # the grid on the tuning half
    python bench/overfitting_detector.py --variants # only its table of alternatives
"""

import argparse
import collections
import itertools
import json
import pathlib
import statistics
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from corpus_labels import label  # noqa: E402
from corpus_labels import split  # noqa: E402
from overfitting_variants import VARIANTS  # noqa: E402
from overfitting_variants import variant  # noqa: E402
from overfitting_variants import warm_up_variants  # noqa: E402
from record_corpus import CORPUS  # noqa: E402

from kreg.callbacks import OverfittingDetector  # noqa: E402
from kreg.callbacks import overfitting_criteria as criteria  # noqa: E402
from kreg.callbacks.overfitting_criteria import CRITERIA  # noqa: E402

MAX_DELAY, MAX_ONSET_ERROR = 5, 3


def load_corpus():
    runs = []
    for path in sorted(CORPUS.glob("*.json")):
        run = json.loads(path.read_text())
        history = run["history"]
        kind, minimum, sigma = label(history["loss"], history["val_loss"])
        runs.append(
            {**run, "label": kind, "minimum": minimum, "sigma": sigma, "half": split(run["name"])}
        )
    return runs


ACCURACY = {
    "monitor": "val_accuracy",
    "train_monitor": "accuracy",
    "mode": "max",
    "train_mode": "max",
}


def wave_of(run):
    """`"second"` for the runs added as `wave2/...` (bench/record_corpus.py), else `"first"`."""
    return "second" if run["name"].startswith("wave2/") else "first"


def replay(history, **kwargs):
    """Feeds a run's losses (or the curves `monitor` / `train_monitor` name) to a
    detector; returns its states per epoch and the (epoch, onset) of its first
    overfitting alarm, or (None, None)."""
    detector = OverfittingDetector(action=lambda *_: None, **kwargs)
    fired = onset = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN epochs are skipped with a warning
        curves = history[detector.train_monitor], history[detector.monitor]
        for epoch, (train, val) in enumerate(zip(*curves)):
            state = detector.update(epoch, train, val)
            if state == "overfitting" and fired is None:
                fired, onset = epoch, detector.onset_epoch
    return detector.states, fired, onset


def early_stopping_epoch(val, patience=10):
    """The epoch Keras's EarlyStopping(patience) stops at (min_delta 0), or None."""
    best, wait = float("inf"), 0
    for epoch, value in enumerate(val):
        if value < best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


def score(runs, binomial=False, **kwargs):
    """The figures of one detector setting on some runs (`binomial`: each run's
    validation sample count as `validation_samples`)."""
    figures = {"improving": 0, "improving alarms": 0, "overfit": 0, "flagged": 0, "early": 0, "met": 0,
               "delays": [], "onset errors": [], "saturated": 0, "saturated reported": 0,
               "saturated called overfitting": 0, "other alarms": 0, "other": 0}  # fmt: skip
    for run in runs:
        samples = {"validation_samples": run["validation_samples"]} if binomial else {}
        states, fired, onset = replay(run["history"], **samples, **kwargs)
        kind, minimum = run["label"], run["minimum"]
        if kind == "improving":
            figures["improving"] += 1
            figures["improving alarms"] += fired is not None
        elif kind == "overfit":
            figures["overfit"] += 1
            if fired is None:
                continue
            figures["flagged"] += 1
            delay, error = fired - minimum, onset - minimum
            figures["early"] += delay < 0
            figures["delays"].append(delay)
            figures["onset errors"].append(error)
            figures["met"] += 0 <= delay <= MAX_DELAY and abs(error) <= MAX_ONSET_ERROR
        elif kind == "saturated":
            figures["saturated"] += 1
            figures["saturated reported"] += "saturated" in states[minimum:]
            figures["saturated called overfitting"] += fired is not None
        else:
            figures["other"] += 1
            figures["other alarms"] += fired is not None
    return figures


def summary_row(name, figures):
    delays = figures["delays"]
    median = f"{statistics.median(delays):+.0f}" if delays else "-"
    errors = (
        statistics.median(abs(e) for e in figures["onset errors"])
        if figures["onset errors"]
        else "-"
    )
    return (
        f"| {name} | {figures['improving alarms']}/{figures['improving']} | "
        f"{figures['flagged']}/{figures['overfit']} | {figures['met']}/{figures['overfit']} | "
        f"{figures['early']} | {median} | {errors} | "
        f"{figures['saturated reported']}/{figures['saturated']} | "
        f"{figures['saturated called overfitting']}/{figures['saturated']} | "
        f"{figures['other alarms']}/{figures['other']} |"
    )


HEADER = (
    "| detector | overfitting alarms on improving runs | overfit runs flagged | flagged within 5, onset within 3 "
    "| flagged before the minimum | median delay | median onset error | saturated runs reported saturated "
    "| saturated runs called overfitting | alarms on the other runs |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def objective(figures):
    """What the tuning grid maximizes: runs called right, a false alarm on an
    improving run (the target that must be 0) weighing most."""
    return (
        figures["met"]
        + figures["saturated reported"]
        - 3 * figures["improving alarms"]
        - figures["early"]
        - figures["other alarms"]
    )


def tune(runs):
    print("Grid on the tuning half (criterion='noise'):\n")
    print(HEADER)
    results = []
    default_confirm, default_residuals = criteria.CONFIRM, criteria.MIN_RESIDUALS
    for residuals, confirm, threshold, patience in itertools.product(
        (2, 3, 4, 5), (1, 2, 3), (0.5, 0.75, 1.0, 1.5, 2.0, 3.0), (3, 5, 8)
    ):
        criteria.CONFIRM, criteria.MIN_RESIDUALS = confirm, residuals
        figures = score(runs, threshold=threshold, patience=patience)
        # Ties go to the shorter median delay (target (b)), then the most
        # residuals (the surer noise), the longest patience, the smallest threshold.
        delay = statistics.median(figures["delays"]) if figures["delays"] else float("inf")
        results.append(
            (
                objective(figures),
                -delay,
                residuals,
                patience,
                -threshold,
                confirm,
                threshold,
                patience,
            )
        )
        print(
            summary_row(
                f"judged from epoch {residuals + 4}, {confirm} epochs above, "
                f"threshold {threshold}, patience {patience}",
                figures,
            )
        )
    criteria.CONFIRM, criteria.MIN_RESIDUALS = default_confirm, default_residuals
    best = max(results)
    print(
        f"\nbest on the tuning half: judged from validated epoch {best[2] + 4}, {best[5]} epochs "
        f"above, threshold {best[6]}, patience {best[7]} (objective {best[0]}, median delay {-best[1]:+.1f})"
    )
    print("\nDelay against false alarms on the tuning half (the defaults, threshold varied):\n")
    print(HEADER)
    for threshold in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0):
        print(summary_row(f"threshold {threshold}", score(runs, threshold=threshold)))
    alternatives(runs)


def alternatives(runs):
    """The variants of bench/overfitting_variants.py, scored on `runs` (the tuning half)."""
    print("\nAlternatives (bench/overfitting_variants.py) on the tuning half:\n")
    print("| variant | objective " + HEADER.split("| detector ")[1].split("\n")[0])
    print("| --- " * 11 + "|")
    specs = {"default": {}, **warm_up_variants(runs), **VARIANTS}
    for residuals in (criteria.MIN_RESIDUALS, 5):
        for name, spec in specs.items():
            with variant(spec, residuals):
                figures = score(runs, threshold=spec.get("threshold"))
            row = summary_row(f"{name}, judged from epoch {residuals + 4}", figures)
            print(row.replace(" |", f" | {objective(figures)} |", 1))


def run_table(runs):
    print(
        "| run | half | label | epochs | validation minimum | label noise | first state (epoch) | overfitting alarm | onset | patience-10 stop |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    show = lambda epoch: "-" if epoch is None else str(epoch + 1)  # noqa: E731
    for run in runs:
        history = run["history"]
        states, fired, onset = replay(history)
        first = next(((s, e) for e, s in enumerate(states) if s != "learning"), None)
        first = "-" if first is None else f"{first[0]} ({first[1] + 1})"
        sigma = "-" if run["sigma"] is None else f"{run['sigma']:.3g}"
        print(
            f"| {run['name']} | {run['half']} | {run['label']} | {len(history['val_loss'])} | {show(run['minimum'])} "
            f"| {sigma} | {first} | {show(fired)} | {show(onset)} | {show(early_stopping_epoch(history['val_loss']))} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="print the grid on the tuning half")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="print only the alternatives' table on the tuning half (part of --tune)",
    )
    parser.add_argument(
        "--runs", action="store_true", help="print the default detector's table per run"
    )
    parser.add_argument(
        "--accuracy",
        action="store_true",
        help="replay val_accuracy: its noise from the curve, or binomial over the samples",
    )
    args = parser.parse_args()
    runs = load_corpus()
    halves = {half: [run for run in runs if run["half"] == half] for half in ("tuning", "held-out")}
    labels = {
        half: dict(sorted(collections.Counter(run["label"] for run in part).items()))
        for half, part in halves.items()
    }
    print(
        f"{len(runs)} runs: "
        + "; ".join(f"{half} {len(part)} {labels[half]}" for half, part in halves.items())
        + "\n"
    )
    if args.tune:
        tune(halves["tuning"])
        return
    if args.variants:
        alternatives(halves["tuning"])
        return
    if args.accuracy:
        for half, part in halves.items():
            print(f"\n{half} half, monitor val_accuracy (labels from the loss curves):\n")
            print(HEADER)
            print(summary_row("noise from the curve", score(part, **ACCURACY)))
            print(summary_row("binomial, validation_samples", score(part, True, **ACCURACY)))
        return
    parts = dict(halves)
    for wave in ("first", "second"):  # the held-out half by wave of the corpus
        parts[f"held-out, {wave} wave"] = [r for r in halves["held-out"] if wave_of(r) == wave]
    for half, part in parts.items():
        print(f"\n{half} half ({len(part)} runs):\n")
        print(HEADER)
        for criterion in CRITERIA:
            print(
                summary_row(
                    criterion + (" (default)" if criterion == "noise" else ""),
                    score(part, criterion=criterion),
                )
            )
        stops = [
            early_stopping_epoch(r["history"]["val_loss"]) for r in part if r["label"] == "overfit"
        ]
        delays = [
            stop - r["minimum"]
            for stop, r in zip(stops, [r for r in part if r["label"] == "overfit"])
            if stop is not None
        ]
        print(f"\npatience-10 early stopping on the overfit runs: stops {len(delays)}/{len(stops)}, "
              f"median {statistics.median(delays) if delays else '-'} epochs after the minimum")  # fmt: skip
    if args.runs:
        print()
        run_table(runs)


if __name__ == "__main__":
    main()
