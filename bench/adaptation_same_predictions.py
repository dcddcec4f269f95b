"""Whether two versions of kreg predict alike with `OnlineAdapter`'s default.

For a change meant to keep the default's behaviour and cut its cost: each
version records the argmax predictions, and the shift test's count of shifts,
on grid streams (`adaptation_grid.py`: every architecture but the MLP, both
data sets, batch 4, 16 and 64, the continual, shifted i.i.d., shifted
class-sorted and clean Dirichlet 0.1 orders, training seed 0), then
`--compare` counts the cells where they differ.

    cd bench
    python adaptation_same_predictions.py --out /tmp/before.json   # with one version installed
    python adaptation_same_predictions.py --out /tmp/after.json    # with the other
    python adaptation_same_predictions.py --compare /tmp/before.json /tmp/after.json
"""

import argparse
import json

import _common  # noqa: F401  (first: it quiets TensorFlow before Keras starts)

import numpy as np  # noqa: E402
from adaptation_grid import corruption_of  # noqa: E402
from adaptation_grid import load  # noqa: E402
from adaptation_grid import stream  # noqa: E402
from adaptation_grid import trained  # noqa: E402

import kreg  # noqa: E402

STREAMS = (("shifted", "continual"), ("shifted", "iid"), ("clean", "dir0.1"), ("shifted", "sorted"))


def record(args):
    results = {}
    for data in ("digits16", "digits8"):
        train, (x_test, y_test) = load(data)
        for arch in ("cnn", "resnet", "mobilenet"):
            model = trained(arch, data, 0, train, args.epochs, args.cache)
            source = model.get_weights()
            for batch_size in (4, 16, 64):
                for shift, order in STREAMS:
                    cell = f"{arch}/{data}/{shift}/{order}/{batch_size}/0"
                    corruption = corruption_of(cell, data) if order != "continual" else "all"
                    x, y = stream(
                        x_test, y_test, data, shift, order, batch_size, 0, 4, 256, corruption
                    )
                    model.set_weights(source)
                    adapter = kreg.OnlineAdapter(model)
                    predicted = adapter.predict(x, batch_size=batch_size).argmax(-1)
                    results[cell] = {
                        "predictions": predicted.tolist(),
                        "accuracy": float(np.mean(predicted == y)),
                        "shifts": adapter._robust.shift_updates,
                    }
                    print(cell, f"{results[cell]['accuracy']:.3f}", results[cell]["shifts"])
    with open(args.out, "w") as f:
        json.dump(results, f)


def compare(before_path, after_path):
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    differing = 0
    for cell in before:
        changed = int(np.sum(np.array(before[cell]["predictions"]) != after[cell]["predictions"]))
        if changed or before[cell]["shifts"] != after[cell]["shifts"]:
            differing += 1
            print(
                f"{cell}: {changed} of {len(before[cell]['predictions'])} predictions, "
                f"shifts {before[cell]['shifts']} -> {after[cell]['shifts']}"
            )
    print(f"{differing} of {len(before)} cells differ")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cache", default="/tmp/kreg-bench-cache")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.out:
        record(args)
    else:
        parser.error("give --out to record or --compare BEFORE AFTER")


if __name__ == "__main__":
    main()
