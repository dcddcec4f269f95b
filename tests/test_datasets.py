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
