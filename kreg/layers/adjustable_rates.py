"""Dropout rates that can be changed on a live model, without a retrace.

A rate kept as a Python float is baked into the compiled train and predict
functions when they are traced: changing it afterwards does nothing until they
are re-traced. `AdjustableRates` keeps each rate in a float32 scalar variable
that `call` reads, so a callback (`OverfittingDetector(action="strengthen")`)
can raise or lower it between epochs and the very next step uses the new value,
under `tf.function`, XLA and JAX's `jit` alike.

The variable is listed in `layer.variables` (what compiled steps read, and what
JAX threads through its stateless calls) but not in `layer.weights`: the layer's
weights, `get_weights`/`set_weights` and weight files stay exactly those of the
layer without it. The rate is saved in the layer's config instead (its value at
saving time), so a saved and reloaded model keeps a rate a callback changed.

How a layer uses it:

    class MyDropout(AdjustableRates, keras.layers.Layer):
        def __init__(self, rate, **kwargs):
            super().__init__(**kwargs)
            self.add_rate("rate", rate)      # `self.rate` now reads and writes it

        def call(self, inputs, training=False):
            if not training or not self.rate_in_use("rate"):
                return inputs
            return dropout(inputs, self.rate_variable("rate"), seed=self.seed_generator)

        def get_config(self):
            return {**super().get_config(), "rate": self.rate}   # the current value

A layer constructed with rate 0 skips dropout entirely, as Keras's `Dropout`
does (no random draw, the seed stream untouched), and that choice is fixed when
its functions are traced: its rate cannot be raised later (`set` raises).
"""

import keras
from keras import ops

from kreg._validation import check_rate


class AdjustableRates:
    """Layer mixin: named dropout rates held in variables that `call` reads."""

    def add_rate(self, name, value):
        """Checks `value` (a rate in `[0, 1)`) and holds it in a new variable."""
        value = check_rate(name, value)
        # Created with object.__setattr__ and kept out of Keras's tracking, so
        # it is not a weight (see the module docstring); `variables` adds it.
        variable = keras.Variable(
            value,
            dtype="float32",
            trainable=False,
            name=f"{name}_variable",
            aggregation="only_first_replica",
        )
        rates = self.__dict__.get("_adjustable_rates")
        if rates is None:
            rates = {}
            object.__setattr__(self, "_adjustable_rates", rates)
        rates[name] = (variable, value > 0.0)
        # The exact Python float, for the config (the variable holds float32).
        self.__dict__.setdefault("_rate_values", {})[name] = value
        return variable

    @property
    def adjustable_rates(self):
        """The names of this layer's rates that can be changed after tracing."""
        return [
            name
            for name, (_, in_use) in self.__dict__.get("_adjustable_rates", {}).items()
            if in_use
        ]

    def rate_variable(self, name):
        return self._adjustable_rates[name][0]

    def rate_in_use(self, name):
        """False for a rate constructed at 0: the layer does not drop at all."""
        return self._adjustable_rates[name][1]

    def get_rate(self, name):
        return self._rate_values[name]

    def set_rate(self, name, value):
        """Assigns a new rate; the next training step uses it (no retrace)."""
        value = check_rate(name, value)
        variable, in_use = self._adjustable_rates[name]
        if not in_use and value > 0.0:
            raise ValueError(
                f"Invalid value received for argument `{name}`: {type(self).__name__} "
                f"`{self.name}` was built with {name}=0, so it does not drop at all "
                f"and its rate cannot be raised on the live layer. Build it with "
                f"{name} > 0 to adjust it later. Received: {name}={value}"
            )
        variable.assign(value)
        self._rate_values[name] = value

    @property
    def variables(self):
        own = [variable for variable, _ in self.__dict__.get("_adjustable_rates", {}).values()]
        return super().variables + own


def rate_property(name, doc):
    """A property that reads and assigns the rate variable `name` as a float."""
    return property(
        lambda self: self.get_rate(name), lambda self, value: self.set_rate(name, value), doc=doc
    )


def dropout(inputs, rate, noise_shape=None, seed=None):
    """Inverted dropout whose `rate` may be a tensor or variable.

    `keras.random.dropout` tests `rate == 0` and `rate == 1` in Python, which a
    variable read inside a compiled function cannot answer. Kept units are scaled
    by `1 / (1 - rate)`; `noise_shape` broadcasts as in `keras.random.dropout`.
    """
    rate = ops.cast(rate, inputs.dtype)
    shape = ops.shape(inputs) if noise_shape is None else noise_shape
    keep = keras.random.uniform(shape, dtype="float32", seed=seed) >= ops.cast(rate, "float32")
    return ops.where(keep, inputs / (1.0 - rate), ops.zeros_like(inputs))
