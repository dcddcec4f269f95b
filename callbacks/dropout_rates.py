"""Reading and changing every adjustable dropout rate of a live model.

The one mechanism for callbacks that move dropout rates during `fit`
(`DropoutSchedule`, and `OverfittingDetector(action="strengthen")`): each kreg
layer with `kreg.layers.adjustable_rates.AdjustableRates` holds its rates in
variables that compiled steps read, so a new value applies at the next step
without a retrace. Keras's own `Dropout` holds a Python float that no callback
can reach; `kreg.convert_dropouts(model)` replaces it by an adjustable one.
"""

from kreg._keras_compat import all_sublayers
from kreg.layers.adjustable_rates import AdjustableRates


def _adjustable_layers(model):
    """Every layer of `model` with adjustable rates, nested and shared ones once."""
    seen = set()
    for layer in [model, *all_sublayers(model)]:
        if id(layer) in seen or not isinstance(layer, AdjustableRates):
            continue
        seen.add(id(layer))
        yield layer


def adjustable_dropout_rates(model):
    """`{(layer, rate name): current rate}` for every rate of `model` that can change.

    Nested and shared layers are listed once. A rate a layer was built with at 0
    is not listed: that layer never drops, and its rate cannot be raised.
    """
    return {
        (layer, name): layer.get_rate(name)
        for layer in _adjustable_layers(model)
        for name in layer.adjustable_rates
    }


def rates_built_at_zero(model):
    """`["<layer name>.<rate name>", ...]`: the adjustable rates of `model` built at 0,
    which no update can raise (the layer was built without its dropout)."""
    return [
        f"{layer.name}.{name}"
        for layer in _adjustable_layers(model)
        for name in getattr(layer, "_adjustable_rates", {})
        if not layer.rate_in_use(name)
    ]


def update_dropout_rates(model, update):
    """Sets every adjustable dropout rate of `model` to `update(layer, name, rate)`.

    `update` receives each layer, the rate's name (`"rate"`, `"weight_dropout"`...)
    and its current value, and returns the new value, a float in `[0, 1)`. The
    next training step uses it. Returns `{"<layer name>.<rate name>": new rate}`.

    Example: raise every rate by 0.1, at most 0.9:

        update_dropout_rates(model, lambda layer, name, rate: min(rate + 0.1, 0.9))
    """
    changed = {}
    for (layer, name), rate in adjustable_dropout_rates(model).items():
        layer.set_rate(name, round(float(update(layer, name, rate)), 6))
        changed[f"{layer.name}.{name}"] = layer.get_rate(name)
    return changed
