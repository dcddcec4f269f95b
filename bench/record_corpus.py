"""Records the learning curves of `bench/data/corpus/`: real training runs, one JSON file each.

Five data sets that ship with the install (scikit-learn's digits as images,
the same digits read row by row, breast cancer and wine; character-level text
from the standard library's `pydoc_data` topics), MLPs, CNNs with batch norm,
LSTMs and GRUs, with and without dropout and weight decay, at varied learning
rates and batch sizes. Each file holds the per-epoch training and validation
loss and accuracy, the number of training and validation samples and the
run's settings; `bench/corpus_labels.py` labels the runs and splits them into
a tuning and a held-out half. The 12 runs named `digits-bench/...` are the
former 12-run benchmark of `bench/overfitting_detector.py`, recorded as it
trained them.

    python bench/record_corpus.py                  # records the runs not yet on disk
    python bench/record_corpus.py --only text/     # the runs whose name starts so
    python bench/record_corpus.py --list
"""

import argparse
import json
import pathlib
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kreg.datasets import load_digit_sequences  # noqa: E402

CORPUS = pathlib.Path(__file__).parent / "data" / "corpus"
TEXT_WINDOW = 24


def _split(x, y, train_size, seed):
    order = np.random.default_rng(seed).permutation(len(y))
    train, val = order[:train_size], order[train_size:]
    return (x[train], y[train]), (x[val], y[val])


def _standardized(bunch, train_size, seed):
    (x_train, y_train), (x_val, y_val) = _split(
        bunch.data.astype("float32"), bunch.target.astype("int32"), train_size, seed
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6  # statistics of the training part only
    return ((x_train - mean) / std, y_train), ((x_val - mean) / std, y_val)


def load_text(train_size, seed, val_size=1000):
    """Windows of `TEXT_WINDOW` characters of the pydoc topics and the character
    after each; training windows from the first 80% of the text, validation from
    the rest, so the two never overlap."""
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    codes = np.frombuffer(text.encode("ascii", "replace"), dtype="uint8").astype("int32")
    codes = np.clip(
        codes - 31, 0, 96
    )  # 0: control characters (newline, tab); 1-95: printable ASCII
    cut = int(0.8 * len(codes))
    rng = np.random.default_rng(seed)

    def windows(start, stop, count):
        starts = rng.integers(start, stop - TEXT_WINDOW - 1, size=count)
        x = np.stack([codes[s : s + TEXT_WINDOW] for s in starts])
        return x, codes[starts + TEXT_WINDOW]

    return windows(0, cut, train_size), windows(cut, len(codes), val_size)


def load(dataset, train_size, seed):
    from sklearn import datasets

    if dataset == "digits":
        (x_train, y_train), (x_val, y_val) = load_digit_sequences(train_size=train_size, seed=seed)
        return (x_train[..., None], y_train), (x_val[..., None], y_val)
    if dataset in ("digit-rows", "digits-bench"):
        return load_digit_sequences(train_size=train_size, seed=seed)
    if dataset == "cancer":
        return _standardized(datasets.load_breast_cancer(), train_size, seed)
    if dataset == "wine":
        return _standardized(datasets.load_wine(), train_size, seed)
    if dataset == "text":
        return load_text(train_size, seed)
    raise ValueError(dataset)


def mlp(input_shape, classes, width=256, depth=2, dropout=0.0, embed=False):
    layers = [keras.Input(input_shape)]
    if embed:
        layers.append(keras.layers.Embedding(97, 16))
    layers.append(keras.layers.Flatten())
    for _ in range(depth):
        layers.append(keras.layers.Dense(width, activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers + [keras.layers.Dense(classes, activation="softmax")])


def cnn_bn(input_shape, classes, channels=(32, 64), dropout=0.0, dense=128):
    inputs = keras.Input(input_shape)
    x = inputs if len(input_shape) == 3 else keras.layers.Reshape((*input_shape, 1))(inputs)
    for filters in channels:
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def rnn(input_shape, classes, cell="lstm", units=128, dropout=0.0, embed=False, consistent=True):
    layers = [keras.Input(input_shape)]
    if embed:
        layers.append(keras.layers.Embedding(97, 16))
    if dropout and consistent:
        from kreg.layers import ConsistentDropout

        layers.append(ConsistentDropout(dropout))
    layers.append({"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell](units))
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers + [keras.layers.Dense(classes, activation="softmax")])


def logistic(input_shape, classes):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


FAMILIES = {"mlp": mlp, "cnn_bn": cnn_bn, "rnn": rnn, "logistic": logistic}
CLASSES = {"digits": 10, "digit-rows": 10, "digits-bench": 10, "cancer": 2, "wine": 3, "text": 97}


def run(
    dataset, family, train_size, epochs, lr, batch, optimizer="adam", weight_decay=0.0, seed=0,
    **model,
):  # fmt: skip
    settings = {
        "dataset": dataset, "family": family, "model": model, "train_size": train_size, "epochs": epochs,
        "learning_rate": lr, "batch_size": batch, "optimizer": optimizer, "weight_decay": weight_decay,
    }  # fmt: skip
    # The seed draws the training/validation split and the initial weights. Only
    # a run at another seed than 0 names it, so the settings of the runs recorded
    # before seeds could be set stay as they were recorded.
    return {**settings, "seed": seed} if seed else settings


# name: settings. The names decide the tuning/held-out split (bench/corpus_labels.py).
RUNS = {
    # The former 12-run benchmark, as it trained them (Adam, batch 32, 60 epochs, seed 0).
    "digits-bench/MLP, no dropout": run("digits-bench", "mlp", 300, 60, 1e-3, 32, width=512),
    "digits-bench/MLP, dropout 0.5": run(
        "digits-bench", "mlp", 300, 60, 1e-3, 32, width=512, dropout=0.5
    ),
    "digits-bench/CNN+BN, no dropout": run("digits-bench", "cnn_bn", 300, 60, 1e-2, 32),
    "digits-bench/CNN+BN, dropout 0.3": run(
        "digits-bench", "cnn_bn", 300, 60, 3e-3, 32, dropout=0.3
    ),
    "digits-bench/LSTM, no dropout": run("digits-bench", "rnn", 300, 60, 3e-3, 32),
    "digits-bench/LSTM, dropout 0.3": run("digits-bench", "rnn", 300, 60, 3e-3, 32, dropout=0.3),
    "digits-bench/MLP, no dropout, 600 digits": run(
        "digits-bench", "mlp", 600, 60, 1e-3, 32, width=512
    ),
    "digits-bench/CNN+BN, no dropout, 600 digits": run("digits-bench", "cnn_bn", 600, 60, 3e-3, 32),
    "digits-bench/logistic, 1400 digits (control)": run(
        "digits-bench", "logistic", 1400, 60, 1e-3, 32
    ),
    "digits-bench/small MLP, dropout 0.5, 1400 digits (control)": run(
        "digits-bench", "mlp", 1400, 60, 2e-4, 32, width=64, dropout=0.5
    ),
    "digits-bench/small CNN+BN, dropout 0.3, 1400 digits (control)": run(
        "digits-bench", "cnn_bn", 1400, 60, 1e-4, 32, channels=(8, 16), dropout=0.3
    ),
    "digits-bench/small LSTM, 1400 digits (control)": run(
        "digits-bench", "rnn", 1400, 60, 5e-4, 32, units=32
    ),
    # Digits as 8x8 images.
    "digits/mlp256 lr1e-3 b32 n200": run("digits", "mlp", 200, 50, 1e-3, 32),
    "digits/mlp256 dropout0.5 wd1e-2 lr1e-3 b32 n200": run(
        "digits", "mlp", 200, 50, 1e-3, 32, weight_decay=1e-2, dropout=0.5
    ),
    "digits/mlp128 lr1e-2 b16 n300": run("digits", "mlp", 300, 50, 1e-2, 16, width=128),
    "digits/mlp64 lr3e-4 b128 n1000": run("digits", "mlp", 1000, 50, 3e-4, 128, width=64),
    "digits/mlp512 sgd lr5e-2 b32 n300": run(
        "digits", "mlp", 300, 50, 5e-2, 32, optimizer="sgd", width=512
    ),
    "digits/cnn_bn16-32 lr3e-3 b64 n400": run(
        "digits", "cnn_bn", 400, 40, 3e-3, 64, channels=(16, 32)
    ),
    "digits/cnn_bn16-32 dropout0.3 wd1e-3 lr3e-3 b32 n400": run(
        "digits", "cnn_bn", 400, 40, 3e-3, 32, weight_decay=1e-3, channels=(16, 32), dropout=0.3
    ),
    "digits/cnn_bn8-16 lr1e-3 b128 n1200": run(
        "digits", "cnn_bn", 1200, 40, 1e-3, 128, channels=(8, 16), dense=32
    ),
    "digits/cnn_bn32-64 lr3e-2 b16 n200": run("digits", "cnn_bn", 200, 40, 3e-2, 16),
    # Digits read row by row.
    "digit-rows/lstm64 lr3e-3 b32 n300": run("digit-rows", "rnn", 300, 50, 3e-3, 32, units=64),
    "digit-rows/gru64 lr3e-3 b32 n300": run(
        "digit-rows", "rnn", 300, 50, 3e-3, 32, cell="gru", units=64
    ),
    "digit-rows/gru64 dropout0.3 lr3e-3 b32 n300": run(
        "digit-rows", "rnn", 300, 50, 3e-3, 32, cell="gru", units=64, dropout=0.3
    ),
    "digit-rows/lstm32 lr1e-3 b64 n1000": run("digit-rows", "rnn", 1000, 40, 1e-3, 64, units=32),
    "digit-rows/gru128 lr1e-2 b64 n200": run("digit-rows", "rnn", 200, 50, 1e-2, 64, cell="gru"),
    "digit-rows/lstm16 lr1e-4 b128 n1200": run("digit-rows", "rnn", 1200, 30, 1e-4, 128, units=16),
    "digit-rows/lstm128 sgd lr1e-1 b32 n300": run(
        "digit-rows", "rnn", 300, 50, 1e-1, 32, optimizer="sgd"
    ),
    "digit-rows/gru64 wd1e-1 lr3e-3 b16 n300": run(
        "digit-rows", "rnn", 300, 50, 3e-3, 16, weight_decay=1e-1, cell="gru", units=64
    ),
    # Breast cancer: 30 features, 2 classes.
    "cancer/mlp256 lr1e-3 b16 n120": run("cancer", "mlp", 120, 80, 1e-3, 16),
    "cancer/mlp256 dropout0.5 lr1e-3 b16 n120": run(
        "cancer", "mlp", 120, 80, 1e-3, 16, dropout=0.5
    ),
    "cancer/mlp256 wd1e-1 lr1e-3 b16 n120": run(
        "cancer", "mlp", 120, 80, 1e-3, 16, weight_decay=1e-1
    ),
    "cancer/mlp64 lr1e-2 b32 n200": run("cancer", "mlp", 200, 80, 1e-2, 32, width=64),
    "cancer/logistic lr1e-3 b32 n300": run("cancer", "logistic", 300, 80, 1e-3, 32),
    "cancer/mlp512 lr3e-3 b8 n80": run("cancer", "mlp", 80, 60, 3e-3, 8, width=512),
    "cancer/mlp32 lr1e-4 b64 n300": run("cancer", "mlp", 300, 60, 1e-4, 64, width=32, depth=1),
    "cancer/mlp128 dropout0.2 sgd lr1e-2 b16 n150": run(
        "cancer", "mlp", 150, 80, 1e-2, 16, optimizer="sgd", width=128, dropout=0.2
    ),
    # Wine: 13 features, 3 classes.
    "wine/mlp256 lr1e-3 b8 n60": run("wine", "mlp", 60, 100, 1e-3, 8),
    "wine/mlp256 dropout0.5 lr1e-3 b8 n60": run("wine", "mlp", 60, 100, 1e-3, 8, dropout=0.5),
    "wine/mlp64 wd1e-2 lr3e-3 b16 n60": run(
        "wine", "mlp", 60, 100, 3e-3, 16, weight_decay=1e-2, width=64
    ),
    "wine/mlp512 lr1e-2 b4 n40": run("wine", "mlp", 40, 60, 1e-2, 4, width=512),
    "wine/logistic lr1e-2 b16 n80": run("wine", "logistic", 80, 100, 1e-2, 16),
    "wine/mlp16 lr1e-4 b32 n80": run("wine", "mlp", 80, 60, 1e-4, 32, width=16, depth=1),
    "wine/mlp128 lr3e-2 b60 n60": run("wine", "mlp", 60, 100, 3e-2, 60, width=128),
    # Character-level text: the next character after 24 (97 classes).
    "text/lstm128 lr3e-3 b64 n2000": run("text", "rnn", 2000, 25, 3e-3, 64, embed=True),
    "text/gru128 lr3e-3 b64 n2000": run("text", "rnn", 2000, 25, 3e-3, 64, cell="gru", embed=True),
    "text/lstm128 dropout0.3 lr3e-3 b64 n2000": run(
        "text", "rnn", 2000, 25, 3e-3, 64, embed=True, dropout=0.3, consistent=False
    ),
    "text/gru64 wd1e-2 lr1e-3 b32 n2000": run(
        "text", "rnn", 2000, 25, 1e-3, 32, weight_decay=1e-2, cell="gru", units=64, embed=True
    ),
    "text/mlp256 lr1e-3 b64 n3000": run("text", "mlp", 3000, 25, 1e-3, 64, embed=True),
    "text/gru32 lr1e-2 b128 n6000": run(
        "text", "rnn", 6000, 20, 1e-2, 128, cell="gru", units=32, embed=True
    ),
    # Second wave ("wave2/..."), written down and committed before any of it was
    # recorded. The first 50 runs' tuning half had no overfit run whose
    # validation minimum comes in the first 1-3 epochs, before the detector's
    # own noise estimate exists, and few noisy runs that plateau before a later
    # minimum; these recipes are meant to produce such runs on either half (the
    # split stays the hash of the name). Each is short: 25-50 epochs.
    # (i) A minimum in the first 1-3 epochs: wide MLPs (and a CNN, a GRU) at high
    # learning rates on small training sets, most with large or whole-set
    # batches (little gradient noise, so the training set is fitted, and the
    # validation loss left, within a few epochs).
    "wave2/cancer/mlp1024 lr1e-2 b60 n60": run("cancer", "mlp", 60, 30, 1e-2, 60, width=1024),
    "wave2/cancer/mlp512 lr3e-2 b16 n100": run("cancer", "mlp", 100, 30, 3e-2, 16, width=512),
    "wave2/cancer/mlp256 sgd lr1e-1 b100 n100": run(
        "cancer", "mlp", 100, 30, 1e-1, 100, optimizer="sgd"
    ),
    "wave2/wine/mlp1024 lr1e-2 b30 n30": run("wine", "mlp", 30, 30, 1e-2, 30, width=1024),
    "wave2/wine/mlp512 lr3e-2 b8 n50": run("wine", "mlp", 50, 30, 3e-2, 8, width=512),
    "wave2/digits/mlp1024 lr1e-2 b100 n100": run("digits", "mlp", 100, 30, 1e-2, 100, width=1024),
    "wave2/digits/mlp512x3 lr3e-3 b16 n100": run(
        "digits", "mlp", 100, 30, 3e-3, 16, width=512, depth=3
    ),
    "wave2/digits/cnn_bn32-64 lr3e-2 b100 n100": run("digits", "cnn_bn", 100, 30, 3e-2, 100),
    "wave2/text/mlp512 lr3e-3 b64 n800": run(
        "text", "mlp", 800, 25, 3e-3, 64, width=512, embed=True
    ),
    "wave2/text/mlp1024 lr1e-2 b128 n800": run(
        "text", "mlp", 800, 25, 1e-2, 128, width=1024, embed=True
    ),
    "wave2/digit-rows/gru128 lr3e-2 b100 n100": run(
        "digit-rows", "rnn", 100, 30, 3e-2, 100, cell="gru"
    ),
    # (ii) Noisy recurrent runs with dropout on small training sets, which may sit
    # on a noisy plateau before a later minimum (ConsistentDropout before the
    # recurrent layer and Dropout after it, as the recurrent runs above).
    "wave2/digits-bench/LSTM, dropout 0.3, 200 digits": run(
        "digits-bench", "rnn", 200, 50, 3e-3, 32, dropout=0.3
    ),
    "wave2/digits-bench/LSTM, dropout 0.5": run(
        "digits-bench", "rnn", 300, 50, 3e-3, 32, dropout=0.5
    ),
    "wave2/digits-bench/GRU, dropout 0.3": run(
        "digits-bench", "rnn", 300, 50, 3e-3, 32, cell="gru", dropout=0.3
    ),
    "wave2/digit-rows/gru64 dropout0.4 lr3e-3 b16 n200": run(
        "digit-rows", "rnn", 200, 50, 3e-3, 16, cell="gru", units=64, dropout=0.4
    ),
    "wave2/digit-rows/lstm64 dropout0.3 lr1e-2 b32 n200": run(
        "digit-rows", "rnn", 200, 50, 1e-2, 32, units=64, dropout=0.3
    ),
    # (iii) Recipes of the first wave again at seed 1 (another split, other
    # initial weights), some at another training-set size, shortened.
    "wave2/cancer/mlp256 lr1e-3 b16 n120 seed1": run("cancer", "mlp", 120, 40, 1e-3, 16, seed=1),
    "wave2/wine/mlp256 lr1e-3 b8 n60 seed1": run("wine", "mlp", 60, 60, 1e-3, 8, seed=1),
    "wave2/digits/mlp256 lr1e-3 b32 n300 seed1": run("digits", "mlp", 300, 40, 1e-3, 32, seed=1),
    "wave2/digits/cnn_bn16-32 lr3e-3 b32 n300 seed1": run(
        "digits", "cnn_bn", 300, 30, 3e-3, 32, channels=(16, 32), seed=1
    ),
    "wave2/digit-rows/gru64 lr3e-3 b32 n400 seed1": run(
        "digit-rows", "rnn", 400, 40, 3e-3, 32, cell="gru", units=64, seed=1
    ),
    "wave2/text/mlp256 lr1e-3 b64 n1500 seed1": run(
        "text", "mlp", 1500, 25, 1e-3, 64, embed=True, seed=1
    ),
}


def optimizer(settings):
    lr, decay = settings["learning_rate"], settings["weight_decay"]
    if settings["optimizer"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, weight_decay=decay or None)
    return keras.optimizers.AdamW(lr, weight_decay=decay) if decay else keras.optimizers.Adam(lr)


def record(name, settings, seed=None, callbacks=()):
    seed = settings.get("seed", 0) if seed is None else seed
    (x_train, y_train), (x_val, y_val) = load(settings["dataset"], settings["train_size"], seed)
    keras.utils.set_random_seed(seed)
    model = FAMILIES[settings["family"]](
        x_train.shape[1:], CLASSES[settings["dataset"]], **settings["model"]
    )
    model.compile(optimizer(settings), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, validation_data=(x_val, y_val), epochs=settings["epochs"],
        batch_size=settings["batch_size"], verbose=0, callbacks=list(callbacks),
    ).history  # fmt: skip
    return model, {
        "name": name,
        "settings": settings,
        "seed": seed,
        "backend": keras.backend.backend(),
        "train_samples": int(len(y_train)),
        "validation_samples": int(len(y_val)),
        "seconds": round(time.perf_counter() - start, 1),
        "history": {key: [float(v) for v in values] for key, values in history.items()},
    }


def path_of(name):
    return CORPUS / (
        name.replace("/", "__").replace(" ", "_").replace(",", "").replace("+", "") + ".json"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="record only the runs whose name starts with this"
    )
    parser.add_argument("--force", action="store_true", help="record again runs already on disk")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, settings in RUNS.items():
        if not name.startswith(args.only):
            continue
        path = path_of(name)
        if args.list:
            print(("recorded " if path.exists() else "missing  ") + name)
            continue
        if path.exists() and not args.force:
            continue
        _, result = record(name, settings)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(result, indent=0) + "\n")
        temporary.replace(path)
        print(f"{result['seconds']:6.1f}s  {name}", flush=True)


if __name__ == "__main__":
    main()
