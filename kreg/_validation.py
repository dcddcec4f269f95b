"""Argument checks shared by kreg's layers, callbacks and tuning code.

Each check raises a `ValueError` that names the argument, what is allowed and what
was received, so that a bad argument fails at construction, not at first call.
"""

import math
import numbers


def check_rate(name, value):
    """Returns `value` as a float if it is a probability in `[0, 1)`.

    A rate of 1 would drop everything and make the inverted scaling divide by zero,
    so it is refused. Booleans, strings and `None` are refused even though Python
    would let some of them through arithmetic.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a float in "
            f"[0, 1). Received: {name}={value!r} (of type {type(value).__name__})"
        )
    value = float(value)
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a float in "
            f"[0, 1). Received: {name}={value}"
        )
    return value


def check_choice(name, value, allowed):
    """Returns `value` if it is one of `allowed`."""
    if value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected one of "
            f"{choices}. Received: {name}={value!r}"
        )
    return value


def check_int(name, value):
    """Returns `value` if it is an integer (and not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an integer. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    return int(value)


def check_at_least(name, value, integer=False, minimum=0):
    """Returns `value` if it is a finite number (an integer if `integer`) >= `minimum`.

    Infinity is refused: no argument checked here means anything at infinity, and
    in arithmetic it turns into NaN (`inf / (inf + n)`).
    """
    kind = "an integer" if integer else "a finite number"
    valid_type = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, valid_type):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {kind} >= {minimum}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    if not math.isfinite(value) or value < minimum:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {kind} >= {minimum}. "
            f"Received: {name}={value}"
        )
    return value
