"""Character-level LSTM language model: kreg's recurrent regularizers, AWD-LSTM style.

The text that ships with every Python (`pydoc_data.topics`, the help topics, ~465 KB):
a fixed slice of it (its first characters), the first 80% for training and the last
20% for validation.
Every variant trains the same model (embedding, one LSTM, softmax over the
characters) for the same epochs from the same seed; the table reports validation
bits per character (the validation cross-entropy in bits) at its best epoch and at
the last, and the training-step time of each variant relative to the plain LSTM,
timed afterwards in interleaved rounds in this process (machine noise hits all
variants alike).

Variants, in order (later ones use the mask group count `k` that gave the best
validation bits per character among the weight-drop runs):

    none                      plain LSTM
    recurrent_dropout         keras.layers.LSTM(recurrent_dropout=r)
    weight drop, each k       kreg.WeightDropLSTM(weight_dropout=r, mask_groups=k), k in --groups
    + embedding dropout       ... and kreg.EmbeddingDropout(rate=e)
    + AR/TAR                  ... and kreg.ActivationRegularization(ar, tar)
    zoneout                   kreg.ZoneoutLSTM(cell_zoneout, hidden_zoneout) alone
    full kreg recipe          embedding dropout, ConsistentDropout on the LSTM's
                              input and output, weight drop (best k), AR/TAR

    python bench/char_lm.py                       # the documented run (docs/BENCHMARKS.md)
    python bench/char_lm.py --chars 20000 --epochs 2 --units 64   # a smoke run
    python bench/char_lm.py --variants none full --full-groups 1  # the full recipe at k=1 only
"""

import argparse
import math
import os
import statistics
import sys
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from weight_drop_speed import time_steps  # noqa: E402


def load_text(chars):
    """The first `chars` characters of the help topics, in the module's order."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    if chars > len(text):
        raise ValueError(f"--chars {chars}: pydoc_data.topics has {len(text)} characters")
    return text[:chars]


def windows(ids, length):
    """Non-overlapping `(inputs, next characters)` windows of `length` steps."""
    count = (len(ids) - 1) // length
    x = np.stack([ids[i * length : (i + 1) * length] for i in range(count)])
    y = np.stack([ids[i * length + 1 : (i + 1) * length + 1] for i in range(count)])
    return x.astype("int32"), y.astype("int32")


def char_data(chars, length, validation_fraction):
    text = load_text(chars)
    vocabulary = sorted(set(text))
    index = {c: i for i, c in enumerate(vocabulary)}
    ids = np.array([index[c] for c in text])
    split = int(len(ids) * (1 - validation_fraction))
    return len(vocabulary), windows(ids[:split], length), windows(ids[split:], length)


def build(variant, vocabulary, args, k=1):
    """The language model of `variant`: embedding, one LSTM, softmax over chars."""
    r, units, embedding = args.rate, args.units, args.embedding
    inputs = keras.Input((None,), dtype="int32")
    if variant in ("+ embedding dropout", "+ AR/TAR", "full kreg recipe"):
        x = kreg.EmbeddingDropout(vocabulary, embedding, rate=args.embedding_dropout)(inputs)
    else:
        x = keras.layers.Embedding(vocabulary, embedding)(inputs)
    if variant == "full kreg recipe":
        x = kreg.ConsistentDropout(args.input_dropout)(x)
    if variant == "none":
        h = keras.layers.LSTM(units, return_sequences=True)(x)
    elif variant == "recurrent_dropout":
        h = keras.layers.LSTM(units, recurrent_dropout=r, return_sequences=True)(x)
    elif variant == "zoneout":
        h = kreg.ZoneoutLSTM(
            units,
            cell_zoneout=args.cell_zoneout,
            hidden_zoneout=args.hidden_zoneout,
            return_sequences=True,
        )(x)
    else:
        h = kreg.WeightDropLSTM(units, weight_dropout=r, mask_groups=k, return_sequences=True)(x)
    if variant in ("+ AR/TAR", "full kreg recipe"):
        h = kreg.ActivationRegularization(ar=args.ar, tar=args.tar)(h)
    if variant == "full kreg recipe":
        h = kreg.ConsistentDropout(args.output_dropout)(h)
    model = keras.Model(inputs, keras.layers.Dense(vocabulary)(h))
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def train(variant, data, args, k=1, seed=0):
    vocabulary, (x, y), (x_val, y_val) = data
    keras.utils.set_random_seed(seed)
    model = build(variant, vocabulary, args, k)
    start = time.perf_counter()
    history = model.fit(
        x, y, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=args.batch, verbose=0
    ).history
    bits = [loss / math.log(2) for loss in history["val_loss"]]
    return {
        "best": min(bits),
        "best_epoch": int(np.argmin(bits)) + 1,
        "final": bits[-1],
        "seconds": time.perf_counter() - start,
    }


def step_time_ratios(specs, data, args):
    """Median training-step time of each variant over interleaved rounds, / plain."""
    vocabulary, (x, y), _ = data
    x, y = x[: args.batch], y[: args.batch]
    models = {}
    for name, (variant, k) in specs.items():
        keras.utils.set_random_seed(0)
        models[name] = build(variant, vocabulary, args, k)
        time_steps(models[name], x, y, 2)  # trace and warm up
    times = {name: [] for name in models}
    for _ in range(args.timing_rounds):
        for name, model in models.items():
            times[name].append(time_steps(model, x, y, 3))
    medians = {name: statistics.median(values) for name, values in times.items()}
    plain = medians["none"]
    return {name: (median * 1e3, median / plain) for name, median in medians.items()}


VARIANT_KEYS = ("none", "recurrent_dropout", "weight_drop", "embedding", "artar", "zoneout", "full")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=20_000, help="characters of text used")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.2, help="the last part, for validation"
    )
    parser.add_argument("--length", type=int, default=64, help="timesteps per training window")
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=4e-3)
    parser.add_argument(
        "--rate", type=float, default=0.25, help="recurrent_dropout and weight_dropout"
    )
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 4], help="mask_groups tried")
    parser.add_argument("--embedding-dropout", type=float, default=0.1)
    parser.add_argument("--input-dropout", type=float, default=0.1)
    parser.add_argument("--output-dropout", type=float, default=0.25)
    parser.add_argument("--ar", type=float, default=2.0)
    parser.add_argument("--tar", type=float, default=1.0)
    parser.add_argument("--cell-zoneout", type=float, default=0.5)
    parser.add_argument("--hidden-zoneout", type=float, default=0.05)
    parser.add_argument("--timing-rounds", type=int, default=7)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANT_KEYS,
        default=list(VARIANT_KEYS),
        help="which variants to run (none always runs: it is the baseline)",
    )
    parser.add_argument(
        "--full-groups",
        type=int,
        nargs="*",
        default=[],
        help="also run the full recipe with these mask_groups (besides the best k)",
    )
    args = parser.parse_args()

    data = char_data(args.chars, args.length, args.validation_fraction)
    vocabulary, (x, _), (x_val, _) = data
    print(
        f"backend={keras.backend.backend()} keras={keras.__version__}; {args.chars} characters of "
        f"pydoc_data.topics ({vocabulary} symbols), {len(x)} training and {len(x_val)} validation "
        f"windows of {args.length}; LSTM({args.units}), embedding {args.embedding}, batch {args.batch}, "
        f"{args.epochs} epochs, {args.seeds} seed(s)",
        flush=True,
    )
    results = {}

    def run(name, variant, k=1):
        runs = [train(variant, data, args, k, seed) for seed in range(args.seeds)]
        results[name] = {
            key: statistics.mean(run[key] for run in runs) for key in ("best", "final", "seconds")
        } | {"best_epoch": runs[0]["best_epoch"], "spec": (variant, k)}
        r = results[name]
        print(
            f"  {name:34s} best {r['best']:.4f} bpc (epoch {r['best_epoch']}), final {r['final']:.4f}, "
            f"{r['seconds']:.0f}s",
            flush=True,
        )

    wanted = set(args.variants) | {"none"}
    run("none", "none")
    if "recurrent_dropout" in wanted:
        run(f"recurrent_dropout={args.rate}", "recurrent_dropout")
    if "weight_drop" in wanted:
        for k in args.groups:
            run(f"weight drop {args.rate}, k={k}", "weight drop", k)
        best_k = min(args.groups, key=lambda k: results[f"weight drop {args.rate}, k={k}"]["best"])
    else:
        best_k = args.groups[0]
    if "embedding" in wanted:
        run(f"weight drop k={best_k} + embedding dropout", "+ embedding dropout", best_k)
    if "artar" in wanted:
        run(f"weight drop k={best_k} + emb. dropout + AR/TAR", "+ AR/TAR", best_k)
    if "zoneout" in wanted:
        run("zoneout", "zoneout")
    if "full" in wanted:
        for k in dict.fromkeys([best_k, *args.full_groups]):
            run(f"full kreg recipe (k={k})", "full kreg recipe", k)

    print("timing training steps (interleaved rounds)...", flush=True)
    timing = step_time_ratios({name: r["spec"] for name, r in results.items()}, data, args)
    print("\n| variant | best val bpc (epoch) | final val bpc | ms/step | step time vs plain |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        ms, ratio = timing[name]
        print(
            f"| {name} | {r['best']:.4f} ({r['best_epoch']}) | {r['final']:.4f} | {ms:.0f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
