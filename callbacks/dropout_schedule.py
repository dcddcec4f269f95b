"""DropoutSchedule: dropout rates that follow a schedule over the epochs of `fit`."""

import math

import keras

from kreg._keras_compat import print_msg
from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg.callbacks.dropout_rates import adjustable_dropout_rates
from kreg.callbacks.dropout_rates import update_dropout_rates

SCHEDULES = ("early", "late", "curriculum")


def schedule_multiplier(schedule, epoch, epochs):
    """The multiplier of the named `schedule` at `epoch` (0-based), `epochs` its length."""
    if schedule == "early":
        return 1.0 if epoch < epochs else 0.0
    if schedule == "late":
        return 0.0 if epoch < epochs else 1.0
    # Curriculum dropout: the rate rises as 1 - exp(-gamma * t) (Morerio et al.,
    # eq. 5, written for the drop rate), with gamma such that it reaches 99% of
    # the full rate at `epochs`.
    return 1.0 - math.exp(-math.log(100.0) * epoch / epochs)


@keras.saving.register_keras_serializable(package="kreg")
class DropoutSchedule(keras.callbacks.Callback):
    """Scales every adjustable dropout rate of the model, epoch by epoch.

    At the start of each epoch every adjustable rate is set to its base rate (the
    one it had when `fit` began) times the schedule's multiplier for that epoch;
    the next step uses it without a retrace. At the end of `fit` the base rates
    come back, so the model saved afterwards keeps the rates it was built with (after
    a `fit` stopped by an error, at the start of the next `fit` with this callback).

    Adjustable rates are those of kreg's dropout layers (`AdjustableDropout`,
    `ConsistentDropout`, `EmbeddingDropout`, the weight dropout of
    `WeightDropLSTM`...). Keras's `Dropout` and `SpatialDropout*D` keep theirs as
    a Python float: convert the model first with `kreg.convert_dropouts(model)`.
    A layer built with rate 0 never drops and is not scheduled. The schedule reads
    the epoch number `fit` passes, so a resumed `fit(initial_epoch=k)` continues it.

    Schedules:
        - `"early"`: the full rate for the first `epochs` epochs, then 0. Early
          dropout helps a model that underfits (Liu et al., 2023).
        - `"late"`: 0 for the first `epochs` epochs, then the full rate. Late
          dropout helps a model that overfits (Liu et al., 2023).
        - `"curriculum"`: from 0 up to the full rate, as `1 - exp(-gamma * epoch)`,
          99% of it reached at epoch `epochs` (Morerio et al., 2017).
        - a callable from the epoch (0-based) to the multiplier, a float >= 0; each
          scaled rate must stay in `[0, 1)`.

    Args:
        schedule: One of `"early"`, `"late"`, `"curriculum"`, or a callable.
        epochs: Positive integer, the schedule's length in epochs (the switch
            epoch of `"early"` and `"late"`). Required by the named schedules;
            must be `None` with a callable.
        verbose: 0 (silent, default) or 1 (one line per epoch whose rates change).

    Example:

    >>> from kreg import convert_dropouts
    >>> from kreg.callbacks import DropoutSchedule
    >>> model = convert_dropouts(keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5),
    ...      keras.layers.Dense(1)]))
    >>> model.compile("sgd", "mse")
    >>> x = np.ones((8, 4), "float32")
    >>> _ = model.fit(x, x[:, :1], epochs=3, verbose=0,
    ...               callbacks=[DropoutSchedule("early", epochs=2)])
    >>> model.layers[1].rate  # the base rate is back after fit
    0.5

    Reference:
        - [Liu et al., 2023](https://arxiv.org/abs/2303.01500), Dropout Reduces
          Underfitting: early and late dropout.
        - [Morerio et al., 2017](https://arxiv.org/abs/1703.06229), Curriculum
          Dropout.
    """

    def __init__(self, schedule, epochs=None, verbose=0):
        super().__init__()
        if callable(schedule):
            if epochs is not None:
                raise ValueError(
                    "Invalid value received for argument `epochs`. A callable schedule "
                    f"takes the epoch itself: expected None. Received: epochs={epochs!r}"
                )
        else:
            check_choice("schedule", schedule, SCHEDULES)
            if epochs is None:
                raise ValueError(
                    f"Invalid value received for argument `epochs`. The {schedule!r} schedule "
                    "needs its length, a positive integer. Received: epochs=None"
                )
            epochs = check_at_least("epochs", epochs, integer=True, minimum=1)
        self.schedule = schedule
        self.epochs = epochs
        self.verbose = check_at_least("verbose", verbose, integer=True)
        self._base_rates = None

    def multiplier(self, epoch):
        """The schedule's multiplier at `epoch` (0-based)."""
        if callable(self.schedule):
            value = self.schedule(epoch)
            check_at_least("schedule(epoch)", value)
            return float(value)
        return schedule_multiplier(self.schedule, epoch, self.epochs)

    def on_train_begin(self, logs=None):
        if self._base_rates is not None:
            # The last fit was stopped by an error (`fit` then skips
            # `on_train_end`): its scaled rates are still in the model.
            self._set(lambda base: base)
        self._base_rates = {
            (id(layer), name): rate
            for (layer, name), rate in adjustable_dropout_rates(self.model).items()
        }
        if not self._base_rates:
            print_msg(
                "DropoutSchedule: the model has no adjustable dropout rate, so nothing is "
                "scheduled. Keras's Dropout layers hold a fixed rate: convert the model "
                "with kreg.convert_dropouts(model) first."
            )

    def on_epoch_begin(self, epoch, logs=None):
        multiplier = self.multiplier(epoch)
        changed = self._set(lambda base: base * multiplier)
        if self.verbose and changed:
            print_msg(f"DropoutSchedule: epoch {epoch + 1}, rates x{multiplier:.3g}: {changed}")

    def on_train_end(self, logs=None):
        self._set(lambda base: base)
        self._base_rates = None

    def _set(self, rate_of_base):
        """Sets each scheduled rate to `rate_of_base(base rate)`; returns them if any moved."""
        before = {
            f"{layer.name}.{name}": rate
            for (layer, name), rate in adjustable_dropout_rates(self.model).items()
        }

        def update(layer, name, rate):
            base = self._base_rates.get((id(layer), name))
            return rate if base is None else rate_of_base(base)

        changed = update_dropout_rates(self.model, update)
        return changed if changed != before else {}

    def get_config(self):
        if callable(self.schedule):
            raise NotImplementedError(
                "A DropoutSchedule with a callable schedule has no config: the callable "
                "cannot be serialized. Name a schedule to get one."
            )
        return {"schedule": self.schedule, "epochs": self.epochs, "verbose": self.verbose}
