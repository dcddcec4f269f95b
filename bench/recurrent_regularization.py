"""Does kreg's recurrent regularization work? Validation loss on digit sequences.

Trains the same LSTM four ways (no dropout, Keras `recurrent_dropout`, kreg
`WeightDropLSTM` at the same rate, and kreg's recipe: consistent input dropout,
weight drop with mask groups, AR/TAR) on 400 digits read row by row, several
seeds, and prints a Markdown table of the best and final validation loss.

    python bench/recurrent_regularization.py --rate 0.25 --epochs 120
    python bench/recurrent_regularization.py --only recipe --epochs 60   # one variant
"""

import argparse

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402

from kreg.demo.recurrent import recurrent_regularization_study  # noqa: E402
from kreg.demo.recurrent import recurrent_variants  # noqa: E402
from kreg.demo.recurrent import summarize  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.25)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--mode", choices=["unit", "weight"], default="unit")
    parser.add_argument(
        "--only", nargs="+", help="run the variants whose names contain these words"
    )
    args = parser.parse_args()
    variants = [
        name
        for name in recurrent_variants(args.rate, args.units, args.mode)
        if not args.only or any(word.lower() in name.lower() for word in args.only)
    ]
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
        variants=variants,
        log=lambda line: print(line, flush=True),
    )
    print("\n" + summarize(results))


if __name__ == "__main__":
    main()
