import numpy as np
import pytest

from kreg.datasets import load_digit_sequences


def test_digit_sequences_split_shapes_and_ranges():
    (x_train, y_train), (x_val, y_val) = load_digit_sequences(train_size=300, seed=1)
    assert x_train.shape == (300, 8, 8) and x_val.shape == (1497, 8, 8)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(np.unique(y_train)) == set(range(10))
    # The two sets are disjoint: no training image reappears in validation.
    train_rows = {row.tobytes() for row in x_train.reshape(300, -1)}
    assert sum(row.tobytes() in train_rows for row in x_val.reshape(len(x_val), -1)) < 5


def test_same_seed_same_split_other_seed_other_split():
    (a, _), _ = load_digit_sequences(seed=3)
    (b, _), _ = load_digit_sequences(seed=3)
    (c, _), _ = load_digit_sequences(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("train_size", [0, 1797, -5])
def test_train_size_out_of_range(train_size):
    with pytest.raises(ValueError, match=rf"`train_size`.*train_size={train_size}"):
        load_digit_sequences(train_size=train_size)


def test_digit_images_have_one_channel():
    from kreg.datasets import load_digit_images

    (x_train, y_train), (x_test, y_test) = load_digit_images(train_size=1000)
    assert x_train.shape == (1000, 8, 8, 1) and x_test.shape == (797, 8, 8, 1)
    assert y_train.shape == (1000,) and y_test.dtype == np.int32


def test_corruptions_grow_with_severity_and_keep_the_range():
    from kreg.datasets import CORRUPTIONS
    from kreg.datasets import corrupt_images
    from kreg.datasets import load_digit_images

    _, (x, _) = load_digit_images()
    for corruption in CORRUPTIONS:
        distances = []
        for severity in range(1, 6):
            shifted = corrupt_images(x, corruption, severity)
            assert shifted.shape == x.shape and shifted.dtype == np.float32
            assert 0.0 <= shifted.min() and shifted.max() <= 1.0
            distances.append(np.abs(shifted - x).mean())
        assert all(a < b for a, b in zip(distances, distances[1:])), (corruption, distances)
    blurred = corrupt_images(x, "blur", 3)
    np.testing.assert_allclose(blurred.mean(), x.mean(), rtol=0.05)  # blur keeps the ink


def test_unknown_corruption_or_severity():
    from kreg.datasets import corrupt_images

    with pytest.raises(ValueError, match="corruption.*'fog'"):
        corrupt_images(np.zeros((1, 8, 8, 1)), "fog", 1)
    with pytest.raises(ValueError, match="severity.*6"):
        corrupt_images(np.zeros((1, 8, 8, 1)), "noise", 6)
