"""Small datasets that ship with the install (no download), for demos and benchmarks."""

import numpy as np


def load_digit_sequences(train_size=400, seed=0):
    """scikit-learn's 8x8 digits, each read as a sequence of 8 rows of 8 pixels.

    A recurrent model sees one row per timestep, so it has to carry what it saw
    through time to classify the digit. With a few hundred training sequences a
    large LSTM overfits within a few dozen epochs: a small, fast test bed for
    recurrent regularization.

    Args:
        train_size: Number of training sequences; the other of the 1797 digits
            form the validation set.
        seed: Seed of the shuffle that splits the two.

    Returns:
        `(x_train, y_train), (x_val, y_val)`, with `x` float32 of shape
        `(n, 8, 8)` scaled to `[0, 1]` and `y` int32 class labels 0-9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    if not 0 < train_size < n:
        raise ValueError(
            "Invalid value received for argument `train_size`. Expected an integer "
            f"in [1, {n - 1}]. Received: train_size={train_size}"
        )
    x = (digits.images / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(n)
    train, val = order[:train_size], order[train_size:]
    return (x[train], y[train]), (x[val], y[val])
