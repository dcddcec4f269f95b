"""Small datasets that ship with the install (no download), for demos and benchmarks."""

import numpy as np

from kreg._extras import require
from kreg._validation import check_choice


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
    return _split_digits(train_size, seed)


def load_digit_images(train_size=1200, seed=0):
    """scikit-learn's 8x8 digits as one-channel images, for small CNNs.

    Args:
        train_size: Number of training images; the other of the 1797 digits form
            the test set.
        seed: Seed of the shuffle that splits the two.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, with `x` float32 of shape
        `(n, 8, 8, 1)` scaled to `[0, 1]` and `y` int32 class labels 0-9.
    """
    (x_train, y_train), (x_test, y_test) = _split_digits(train_size, seed)
    return (x_train[..., None], y_train), (x_test[..., None], y_test)


def _split_digits(train_size, seed):
    load_digits = require("sklearn.datasets", extra="demo", feature="kreg.datasets").load_digits

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


# Covariate shift: the corruptions of CIFAR-10-C / ImageNet-C (Hendrycks &
# Dietterich, 2019) that make sense on 8x8 digits, at five severities each.
CORRUPTIONS = ("noise", "blur", "contrast", "brightness")
_SEVERITY = {
    "noise": (0.08, 0.15, 0.25, 0.35, 0.5),  # std of added Gaussian noise
    "blur": (0.4, 0.6, 0.8, 1.0, 1.3),  # std of the Gaussian blur, in pixels
    "contrast": (0.75, 0.6, 0.45, 0.3, 0.2),  # factor on each image's deviations
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to every pixel
}


def corrupt_images(images, corruption, severity, seed=0):
    """Applies one corruption at one severity to images scaled to `[0, 1]`.

    Args:
        images: Float array `(n, height, width, channels)` in `[0, 1]`.
        corruption: One of `"noise"`, `"blur"`, `"contrast"`, `"brightness"`.
        severity: Integer 1 (mild) to 5 (severe).
        seed: Seed of the noise.

    Returns:
        The corrupted images, float32, clipped to `[0, 1]`.
    """
    check_choice("corruption", corruption, CORRUPTIONS)
    check_choice("severity", severity, (1, 2, 3, 4, 5))
    amount = _SEVERITY[corruption][severity - 1]
    images = np.asarray(images, np.float32)
    if corruption == "noise":
        out = images + np.random.default_rng(seed).normal(0.0, amount, images.shape)
    elif corruption == "blur":
        out = _gaussian_blur(images, amount)
    elif corruption == "contrast":
        mean = images.mean(axis=(1, 2, 3), keepdims=True)
        out = (images - mean) * amount + mean
    else:
        out = images + amount
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _gaussian_blur(images, sigma):
    radius = max(1, int(np.ceil(2 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    rows = sum(t * padded[:, i : i + height] for i, t in enumerate(taps))
    return sum(t * rows[:, :, i : i + width] for i, t in enumerate(taps))
