"""The shared argument checks: which values each accepts, at its bounds."""

import math
import re

import keras
import numpy as np
import pytest

from kreg._validation import check_between
from kreg._validation import check_finite
from kreg._validation import keras_keywords


@pytest.mark.parametrize(
    "include_low, include_high, accepted, refused",
    [
        (True, False, [0, 0.0, 0.5, np.float32(0.25)], [1, 1.0, -1e-9]),
        (False, True, [1, 1.0, 1e-9], [0, 0.0, 1.5]),
        (False, False, [0.5, 1e-9], [0, 1]),
        (True, True, [0, 1], [-0.1, 1.1]),
    ],
)
def test_check_between_bounds_open_or_closed(include_low, include_high, accepted, refused):
    bounds = dict(include_low=include_low, include_high=include_high)
    for value in accepted:
        result = check_between("x", value, 0, 1, **bounds)
        assert result == float(value) and type(result) is float
    interval = f"{'[' if include_low else '('}0, 1{']' if include_high else ')'}"
    for value in refused + [math.nan, math.inf, True, "0.5", None]:
        expected = re.escape(f"`x`. Expected a float in {interval}. Received: x=")
        with pytest.raises(ValueError, match=expected):
            check_between("x", value, 0, 1, **bounds)


def test_check_between_and_check_finite_allow_none_only_when_optional():
    assert check_between("x", None, 0, 1, optional=True) is None
    assert check_finite("x", None, optional=True) is None
    with pytest.raises(ValueError, match="a float in .0, 1. or None. Received: x=2.0"):
        check_between("x", 2, 0, 1, optional=True)
    with pytest.raises(ValueError, match="Expected a finite number. Received: x=None"):
        check_finite("x", None)


def test_check_finite_takes_any_sign_and_refuses_nan_inf_bool():
    assert check_finite("x", -3) == -3.0 and check_finite("x", np.float64(2.5)) == 2.5
    for value in (math.nan, -math.inf, False, "1"):
        with pytest.raises(ValueError, match=r"`x`. Expected a finite number or None"):
            check_finite("x", value, optional=True)


def test_keras_keywords_names_positional_arguments_as_keras_does():
    embedding = keras.layers.Embedding
    assert keras_keywords(embedding, 2, ("ones", None), {"name": "e"}, "rate") == {
        "embeddings_initializer": "ones",
        "embeddings_regularizer": None,
        "name": "e",
    }
    with pytest.raises(TypeError, match="multiple values for argument 'embeddings_initializer'"):
        keras_keywords(embedding, 2, ("ones",), {"embeddings_initializer": "zeros"}, "rate")
    with pytest.raises(TypeError, match="positional arguments but 23 were given"):
        keras_keywords(embedding, 2, (None,) * 20, {}, "rate")
