"""Does kreg's recurrent regularization work? Validation loss on digit sequences.

Trains the same LSTM three ways (no dropout, Keras `recurrent_dropout`, kreg
`WeightDropLSTM` at the same rate) on 400 digits read row by row, several seeds,
and prints a Markdown table of the best and final validation loss.

    python bench/recurrent_regularization.py --rate 0.25 --epochs 120
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from kreg.demo.recurrent import recurrent_regularization_study  # noqa: E402
from kreg.demo.recurrent import summarize  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.25)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--mode", choices=["unit", "weight"], default="unit")
    args = parser.parse_args()
    print(
        f"backend={keras.backend.backend()} LSTM({args.units}), rate {args.rate}, "
        f"weight_dropout_mode={args.mode!r}, {args.epochs} epochs, {args.train_size} training digits, {args.seeds} seeds",
        flush=True,
    )
    results = recurrent_regularization_study(
        rate=args.rate,
        units=args.units,
        epochs=args.epochs,
        seeds=tuple(range(args.seeds)),
        train_size=args.train_size,
        mode=args.mode,
        log=lambda line: print(line, flush=True),
    )
    print("\n" + summarize(results))


if __name__ == "__main__":
    main()
