"""Argument checks shared by kreg's layers, callbacks and tuning code.

Each check raises a `ValueError` that names the argument, what is allowed and what
was received, so that a bad argument fails at construction, not at first call.
"""

import inspect
import math
import numbers


def check_rate(name, value):
    """Returns `value` as a float if it is a probability in `[0, 1)`.

    A rate of 1 would drop everything and make the inverted scaling divide by zero,
    so it is refused. Booleans, strings and `None` are refused even though Python
    would let some of them through arithmetic.
    """
    return check_between(name, value, 0, 1, include_high=False)


def check_between(name, value, low, high, include_low=True, include_high=True, optional=False):
    """Returns `value` as a float if it lies between `low` and `high`, each bound
    included or not (`[0, 1)` is `include_high=False`); with `optional`, `None`
    is allowed and returned as it is. NaN, booleans and strings are refused."""
    if optional and value is None:
        return None
    interval = f"{'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"
    allowed = f"a float in {interval}" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {allowed}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    value = float(value)
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if math.isnan(value) or not (above and below):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {allowed}. "
            f"Received: {name}={value}"
        )
    return value


def check_finite(name, value, optional=False):
    """Returns `value` as a float if it is a finite number (of any sign); with
    `optional`, `None` is allowed and returned as it is."""
    if optional and value is None:
        return None
    allowed = "a finite number or None" if optional else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {allowed}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


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


def check_positive(name, value, optional=False):
    """Returns `value` as a float if it is a finite number > 0 (a learning rate, a
    decay); with `optional`, `None` is allowed and returned as it is."""
    if optional and value is None:
        return None
    allowed = "a finite number > 0 or None" if optional else "a finite number > 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {allowed}. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected {allowed}. "
            f"Received: {name}={value}"
        )
    return float(value)


def check_sizes(name, value):
    """Returns a positive integer or a non-empty tuple/list of them as a tuple of ints."""
    values = (
        (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    )
    if (
        not isinstance(values, (tuple, list))
        or not values
        or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values)
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a positive integer "
            f"or a non-empty tuple of them. Received: {name}={value!r}"
        )
    return tuple(int(v) for v in values)


def check_shape(name, value, ranks):
    """Returns `value` as a tuple if it is a shape (no batch axis) of one of `ranks`."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) not in ranks
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in value)
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a tuple of "
            f"{' or '.join(map(str, ranks))} positive integers (no batch axis). "
            f"Received: {name}={value!r}"
        )
    return tuple(int(d) for d in value)


def check_interval(name, value, check_bound, allowed):
    """Returns `(low, high)` floats if `value` is a pair with `low <= high`.

    `check_bound(name, bound)` checks each bound (e.g. `check_rate`); `allowed`
    says in words what a bound may be, for the message.
    """
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a pair (low, high) "
            f"of {allowed} with low <= high. Received: {name}={value!r}"
        )
    try:
        low, high = (check_bound(name, bound) for bound in value)
    except ValueError:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected both bounds to be "
            f"{allowed}. Received: {name}={value!r}"
        ) from None
    if low > high:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected low <= high; the "
            f"range is inverted. Received: {name}={value!r}"
        )
    return float(low), float(high)


def check_seed(name, value):
    """Returns `value` if it is `None` or an integer >= 1.

    0 is refused: keras-tuner's tuners and oracles read `seed=0` as "no seed"
    (`self.seed = seed or random.randint(...)`, keras_tuner/src/engine/oracle.py),
    so a search seeded with 0 is not reproducible. Refusing it everywhere in kreg
    keeps one seed meaning the same thing in the tuner and in the hypermodel.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        hint = (
            " keras-tuner reads seed=0 as 'no seed' (it draws a random one), so kreg "
            "refuses 0: pass 1 or more."
            if not isinstance(value, bool) and value == 0
            else ""
        )
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an integer >= 1 or "
            f"None. Received: {name}={value!r}.{hint}"
        )
    return int(value)


def check_bool(name, value):
    """Returns `value` if it is a boolean (not merely truthy: `"False"` is refused)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected True or False. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    return value


def keras_keywords(keras_class, leading, args, kwargs, rate_name):
    """`kwargs` with the positional `args` named as `keras_class.__init__` names them.

    kreg's drop-in layers take their parent's positional arguments in Keras's
    order (`EmbeddingDropout(1000, 64, "uniform")` as `Embedding`), so their own
    rates, `rate_name` among them, are keyword-only. `args` are the positional
    arguments a drop-in layer received after its first `leading` ones (`units`;
    `input_dim, output_dim`). Named, they reach the layer's own checks of Keras's
    arguments (`use_cudnn`, `weights`), which read keywords.

    A number first among `args` is a rate given by position: Keras would read it
    as its own argument there and fail with a message that names neither, so it
    is a `TypeError` saying which keyword to use. Too many, or one also given by
    keyword, is the `TypeError` Python raises for a call to `keras_class`.
    """
    names = [
        parameter.name
        for parameter in list(inspect.signature(keras_class.__init__).parameters.values())[
            1 + leading :
        ]
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    ]
    if args and isinstance(args[0], numbers.Real) and not isinstance(args[0], bool):
        raise TypeError(
            f"Invalid value received for argument `{names[0]}`. In that position "
            f"{keras_class.__name__} takes `{names[0]}`, as in Keras; `{rate_name}` is "
            f"keyword-only: pass {rate_name}={args[0]!r}. "
            f"Received: {names[0]}={args[0]!r}"
        )
    function = keras_class.__init__.__qualname__
    if len(args) > len(names):
        raise TypeError(
            f"{function}() takes at most {1 + leading + len(names)} positional arguments "
            f"but {1 + leading + len(args)} were given"
        )
    named = dict(zip(names, args))
    for name in named:
        if name in kwargs:
            raise TypeError(f"{function}() got multiple values for argument '{name}'")
    return {**named, **kwargs}
