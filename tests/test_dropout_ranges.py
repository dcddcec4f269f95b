"""The usual dropout ranges are one table, read by the tuner and the linter alike."""

import keras
import pytest

import kreg
from kreg.dropout_ranges import USUAL_DROPOUT_RANGES
from kreg.dropout_ranges import early_conv_count
from kreg.rules import _roles
from kreg.rules import early_conv_dropout


def test_tuner_and_linter_read_one_table():
    from kreg.tuning import DEFAULT_DROPOUT_RANGES

    assert DEFAULT_DROPOUT_RANGES is USUAL_DROPOUT_RANGES
    assert _roles.USUAL_RATES == {r.replace("_", " "): v for r, v in USUAL_DROPOUT_RANGES.items()}
    assert early_conv_dropout.MAX_RATE == USUAL_DROPOUT_RANGES["early_conv"][1]


@pytest.mark.integration
def test_table_is_well_formed_and_importable_without_keras_tuner():
    assert set(USUAL_DROPOUT_RANGES) == {"early_conv", "late_conv", "dense", "recurrent"}
    for low, high in USUAL_DROPOUT_RANGES.values():
        assert 0.0 <= low <= high < 1.0
    import subprocess
    import sys

    code = "import sys, kreg.dropout_ranges, kreg.rules; assert 'keras_tuner' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _rules(model):
    return {f.rule for f in kreg.diagnose(model) if f.severity != "info"}


def _cnn(rate_after_first, rate_after_last):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.Dropout(rate_after_first),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.Dropout(rate_after_last),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _mlp(rate):
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(rate),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _rnn(rate):
    return keras.Sequential(
        [
            keras.Input((5, 4)),
            keras.layers.LSTM(8, dropout=rate),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


@pytest.mark.parametrize("step", [0.0, 0.05])
def test_linter_warns_exactly_above_each_upper_bound(step):
    high = {role: rates[1] + step for role, rates in USUAL_DROPOUT_RANGES.items()}
    above = step > 0
    assert ("early-conv-dropout" in _rules(_cnn(high["early_conv"], 0.2))) == above
    assert ("dropout-rate-range" in _rules(_cnn(0.0, high["late_conv"]))) == above
    assert ("dropout-rate-range" in _rules(_mlp(high["dense"]))) == above
    assert ("dropout-rate-range" in _rules(_rnn(high["recurrent"]))) == above


def test_early_convs_are_the_first_half():
    assert [early_conv_count(n) for n in (1, 2, 3, 4, 5)] == [1, 1, 1, 2, 2]
