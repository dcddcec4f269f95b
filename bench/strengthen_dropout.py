"""Does OverfittingDetector(action="strengthen") improve the best validation loss over "warn"?

Retrains the runs of the detector corpus (`bench/record_corpus.py`) whose
model has kreg dropout with an adjustable rate (`ConsistentDropout` built at a
rate > 0), twice each with the same seed, data and epochs: once with the
detector only warning, once raising every adjustable rate by 0.1 each time it
detects overfitting or saturation (and lowering it on underfitting). Prints,
per run, whether and when the warning detector triggered, the best validation
loss and its epoch under each action, the rates at the end, and the ratio of
the best validation losses (below 1: strengthen helped).

    python bench/strengthen_dropout.py
    python bench/strengthen_dropout.py --only digit-rows/
"""

import argparse
import pathlib
import sys
import warnings

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from record_corpus import RUNS  # noqa: E402
from record_corpus import record  # noqa: E402

from kreg.callbacks import OverfittingDetector  # noqa: E402
from kreg.layers.adjustable_rates import AdjustableRates  # noqa: E402


def adjustable(settings):
    """Whether the corpus run's model has a kreg dropout rate the detector can raise."""
    model = settings["model"]
    return (
        settings["family"] == "rnn"
        and model.get("dropout", 0) > 0
        and model.get("consistent", True)
    )


def rates(model):
    return {
        f"{layer.name}.{name}": round(layer.get_rate(name), 2)
        for layer in model.layers
        if isinstance(layer, AdjustableRates)
        for name in layer.adjustable_rates
    }


def train(name, action):
    detector = OverfittingDetector(action=action, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model, result = record(name, RUNS[name], callbacks=[detector])
    val = result["history"]["val_loss"]
    states = result["history"]["overfitting_state"]
    first = next((epoch for epoch, code in enumerate(states) if code in (1.0, 3.0)), None)
    return min(val), int(np.argmin(val)), first, rates(model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="the corpus runs whose name starts with this")
    args = parser.parse_args()
    names = [
        name
        for name, settings in RUNS.items()
        if name.startswith(args.only) and adjustable(settings)
    ]
    print(
        f"backend={keras.backend.backend()}; {len(names)} corpus runs with adjustable kreg dropout\n",
        flush=True,
    )
    print(
        "| run | warn: first overfitting/saturated epoch | best val loss, warn (epoch) "
        "| best val loss, strengthen (epoch) | rates at the end | strengthen / warn |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = []
    for name in names:
        warn, warn_epoch, first, _ = train(name, "warn")
        strong, strong_epoch, _, final_rates = train(name, "strengthen")
        if first is not None:
            ratios.append(strong / warn)
        print(
            f"| {name} | {'-' if first is None else first + 1} | {warn:.4f} ({warn_epoch + 1}) | "
            f"{strong:.4f} ({strong_epoch + 1}) | {final_rates} | {strong / warn:.3f} |",
            flush=True,
        )
    if ratios:
        print(
            f"\ngeometric mean of strengthen / warn over the {len(ratios)} runs where it triggered: "
            f"{float(np.exp(np.mean(np.log(ratios)))):.3f}"
        )


if __name__ == "__main__":
    main()
