"""WeightAveraging: EMA or SWA of the weights, validated with batch norm statistics of their own."""

import contextlib
import numbers
import types
import weakref

import keras
import numpy as np
from keras import ops

from kreg import _keras_compat
from kreg._validation import check_at_least
from kreg._validation import check_between
from kreg._validation import check_choice
from kreg._validation import check_positive
from kreg.callbacks.flat_weights import FlatWeights
from kreg.callbacks.precise_batch_norm import PreciseBatchNorm
from kreg.callbacks.training_state import host_arrays
from kreg.callbacks.training_state import short_shapes
from kreg.callbacks.weight_average import WeightAverage
from kreg.callbacks.weight_average import annealed_learning_rate
from kreg.callbacks.weight_average import ema_decay
from kreg.callbacks.weight_average import unflatten
from kreg.model_graph import batch_norm_layers

METHODS = ("ema", "swa")
ANNEALING_STRATEGIES = ("cos", "linear")
# Lightning's `StochasticWeightAveraging` starts at 80% of the epochs and the
# SWA paper at 75% (Izmailov et al., 2018, section 4: the last quarter of the budget).
DEFAULT_SWA_START = 0.75
# The arguments of one method only. They default to None, so that one given
# with the other method is told apart from the default and refused.
METHOD_OF_ARGUMENT = {
    "momentum": "ema",
    "warmup_power": "ema",
    "update_every_n_steps": "ema",
    "start_epoch": "swa",
    "swa_learning_rate": "swa",
}
# The EMA's defaults: a decay for runs of thousands of steps (timm's
# `ModelEmaV3`, timm/utils/model_ema.py, defaults to 0.9999 for ImageNet-length
# runs) and timm's warmup power.
DEFAULT_EMA_MOMENTUM = 0.999
DEFAULT_WARMUP_POWER = 2 / 3


@keras.saving.register_keras_serializable(package="kreg")
class WeightAveraging(keras.callbacks.Callback):
    """Averages the weights during `fit` (EMA or SWA) and validates the average.

    The average of the weights along the end of training generalizes better
    than the last weights, but its batch norms need statistics of their own: the
    moving statistics belong to the raw weights (Keras's `use_ema=True` with
    `SwapEMAWeights` evaluates the average with them). Before each validation
    (every `every_n_epochs` epochs) this callback swaps the averaged weights into
    the model and re-estimates every batch norm's statistics for them in one
    exact pass over `bn_data` (the estimate of `kreg.adapt_batchnorm` and
    `PreciseBatchNorm`), so `val_*` in the logs, and every callback after this
    one in the list, see the averaged model. The raw weights and their
    statistics come back at the start of the next epoch, and training goes on
    from them. At the end of `fit` the averaged model, with its statistics,
    stays in the model.

    Placed before `EarlyStoppingWithCheckpoint` in the callbacks list, the best
    epoch is judged, and saved, on the averaged model with its statistics.

    Methods:
        - `"ema"`: an exponential moving average, updated after every training
            batch (once per execution with `steps_per_execution`; every n-th
            step with `update_every_n_steps`), with the decay
            warmup of timm's `ModelEmaV3`: the `n`-th update uses the decay
            `min(momentum, 1 - n ** -warmup_power)`, so the first steps' random
            weights fade quickly.
        - `"swa"`: the equal mean of the weights at the end of each epoch from
            `start_epoch` on (stochastic weight averaging), as PyTorch's
            `AveragedModel`; optionally with the learning rate annealed to
            `swa_learning_rate` from `start_epoch`, as `SWALR`. Before
            `start_epoch` validation sees the raw model.

    Only trainable weights are averaged; batch norm statistics are re-estimated
    rather than averaged, and batch norms with `trainable=False` are left alone.
    Under a `tf.distribute` strategy the statistics are those of all replicas'
    samples together. A model without batch norm is averaged all the same (the
    re-estimation is reported as skipped, once).

    If an error stops `fit` during a validation, the model holds the average;
    the next `fit` with this callback puts the raw weights back first.
    `get_state()` and `set_state(state)` carry the average across processes for
    an exact resume.

    Args:
        method: `"ema"` (default) or `"swa"`.
        bn_data: The samples to re-estimate batch norm statistics from, as
            `model.predict` takes them: usually the training inputs `x` (an array
            or a structure of arrays), a `tf.data.Dataset` or a
            `keras.utils.PyDataset` (targets in it are ignored). Required when the
            model has a trainable batch norm: Keras does not show callbacks the
            data of `fit` (its trainers, keras/src/backend/*/trainer.py, keep it
            in a local epoch iterator; callbacks get `params` with the epochs
            and steps only). Checked at construction (one batch is drawn) and at
            the start of `fit` (the model must accept that batch). Not part of
            `get_config`.
        momentum: For `"ema"` only (refused with `"swa"`): the largest decay,
            in (0, 1). Defaults to 0.999.
        warmup_power: For `"ema"` only (refused with `"swa"`): the power of the
            decay warmup, a float >= 0; 0 for none (every update but the first
            uses `momentum`). Defaults to 2/3, as timm's.
        update_every_n_steps: For `"ema"` only (refused with `"swa"`): update
            the average after every n-th optimizer step (counted by the
            optimizer's `iterations`), with the decay raised to the n-th power,
            as n updates towards the same weights would give. Each update reads
            every trainable weight off the device: a larger n trades a coarser
            average for less of that cost. Defaults to 1. Torchvision's
            reference training script (references/classification/train.py,
            `--model-ema-steps`) updates every n steps and scales `1 - decay` by
            n; Lightning's `WeightAveraging` leaves the cadence to an overridden
            `should_update` and the decay as given; timm's train.py updates
            `ModelEmaV3` after every optimizer step.
        start_epoch: For `"swa"`: the first epoch (0-based) whose weights enter
            the average, an integer, or a float in (0, 1) for a fraction of the
            epochs of `fit`. Defaults to 0.75. Must fall before the last epoch.
        swa_learning_rate: For `"swa"`: optional learning rate to anneal to from
            `start_epoch`; the optimizer's learning rate must then be a float,
            not a schedule. It is restored at the end of `fit` (after a `fit`
            stopped by an error, at the start of the next `fit` with this callback).
        annealing_epochs: For `"swa"`: epochs to reach `swa_learning_rate`.
            Epoch `start_epoch + k` trains with the rate `SWALR` gives after
            `k + 1` steps. Defaults to 1 (reached at `start_epoch`).
        annealing_strategy: `"cos"` (default) or `"linear"`.
        every_n_epochs: Positive integer: validate the average (and re-estimate)
            at every `every_n_epochs`-th epoch; other epochs validate the raw
            model. Defaults to 1.
        bn_steps: Optional number of batches of `bn_data` per re-estimation, as
            `PreciseBatchNorm`'s `steps`. Defaults to all of it.
        bn_batch_size: Batch size for array `bn_data`. Defaults to 32.
        raw_validation_data: Optional `(x, y)` tuple or dataset: the raw model is
            also evaluated on it whenever the average is, and its metrics are
            logged as `raw_val_<metric>`. Usually fit's `validation_data`. Not
            part of `get_config`.
        seed: Optional integer, for the random subsets of array `bn_data` when
            `bn_steps` is set.
        verbose: 0 (silent, default) or 1 (one line per re-estimation).

    Example:

    >>> from kreg.callbacks import WeightAveraging
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
    ...                           keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> averaging = WeightAveraging("swa", bn_data=x, start_epoch=1)
    >>> _ = model.fit(x, x[:, :1], epochs=3, verbose=0, callbacks=[averaging])
    >>> averaging.get_state()["count"]  # epochs 1 and 2 averaged; the model holds their mean
    2

    Reference:
        - [Izmailov et al., 2018](https://arxiv.org/abs/1803.05407), Averaging
          Weights Leads to Wider Optima and Better Generalization (SWA, with
          the batch norm statistics recomputed for the average).
        - [Polyak & Juditsky, 1992](https://doi.org/10.1137/0330046), averaging
          of stochastic approximation iterates; timm's `ModelEmaV3` for the
          decay warmup.
        - [Wu & Johnson, 2021](https://arxiv.org/abs/2105.07576), precise batch
          norm statistics.
    """

    def __init__(
        self,
        method="ema",
        bn_data=None,
        momentum=None,
        warmup_power=None,
        update_every_n_steps=None,
        start_epoch=None,
        swa_learning_rate=None,
        annealing_epochs=1,
        annealing_strategy="cos",
        every_n_epochs=1,
        bn_steps=None,
        bn_batch_size=None,
        raw_validation_data=None,
        seed=None,
        verbose=0,
    ):
        super().__init__()
        self.method = check_choice("method", method, METHODS)
        given = {
            "momentum": momentum,
            "warmup_power": warmup_power,
            "update_every_n_steps": update_every_n_steps,
            "start_epoch": start_epoch,
            "swa_learning_rate": swa_learning_rate,
        }
        for name, value in given.items():
            if value is not None and METHOD_OF_ARGUMENT[name] != method:
                raise ValueError(
                    f"Invalid value received for argument `{name}`. It applies to method="
                    f"{METHOD_OF_ARGUMENT[name]!r} only; with method={method!r} "
                    f"expected None. Received: {name}={value!r}"
                )
        self.momentum = self.warmup_power = self.update_every_n_steps = None
        if method == "ema":
            momentum = DEFAULT_EMA_MOMENTUM if momentum is None else momentum
            self.momentum = check_between(
                "momentum", momentum, 0, 1, include_low=False, include_high=False
            )
            self.warmup_power = float(
                check_at_least(
                    "warmup_power",
                    DEFAULT_WARMUP_POWER if warmup_power is None else warmup_power,
                )
            )
            self.update_every_n_steps = check_at_least(
                "update_every_n_steps",
                1 if update_every_n_steps is None else update_every_n_steps,
                integer=True,
                minimum=1,
            )
        self.start_epoch = _check_start_epoch(
            DEFAULT_SWA_START if method == "swa" and start_epoch is None else start_epoch
        )
        self.swa_learning_rate = check_positive(
            "swa_learning_rate", swa_learning_rate, optional=True
        )
        self.annealing_epochs = check_at_least(
            "annealing_epochs", annealing_epochs, integer=True, minimum=1
        )
        self.annealing_strategy = check_choice(
            "annealing_strategy", annealing_strategy, ANNEALING_STRATEGIES
        )
        self.every_n_epochs = check_at_least(
            "every_n_epochs", every_n_epochs, integer=True, minimum=1
        )
        self.bn_data = bn_data
        # Checked here, under their own names, with or without bn_data
        # (PreciseBatchNorm's checks name its `steps` and `batch_size`).
        self.bn_steps = _optional_count("bn_steps", bn_steps, minimum=1)
        self.bn_batch_size = _optional_count("bn_batch_size", bn_batch_size, minimum=1)
        self.raw_validation_data = _check_raw_validation_data(raw_validation_data)
        self.seed = _optional_count("seed", seed, minimum=0)
        self.verbose = check_at_least("verbose", verbose, integer=True)
        # The re-estimation is PreciseBatchNorm's; it also checks that bn_data
        # yields something.
        self._estimator = None
        self._first_batch = None
        if bn_data is not None:
            if isinstance(bn_data, types.GeneratorType):
                raise ValueError(
                    "Invalid value received for argument `bn_data`. A generator can be read "
                    "once, and the statistics are re-estimated at every validation: pass "
                    "arrays, a tf.data.Dataset or a keras.utils.PyDataset. "
                    f"Received: bn_data={bn_data!r}"
                )
            self._estimator = PreciseBatchNorm(
                bn_data, steps=bn_steps, batch_size=bn_batch_size, seed=seed
            )
            self._first_batch = _first_batch(bn_data, bn_batch_size)
        self._average = WeightAverage()
        self._reader = None  # a FlatWeights of the model's trainable variables, from fit
        self._state_given = False
        self._raw_to_restore = None
        self._raw_in_waiting = None  # the raw weights after fit, for get_state
        self._swapped = None  # (raw weights, raw statistics) while the average is in the model
        self._statistics_key = None  # the average the cached statistics belong to
        self._average_statistics = None
        self._told_no_batch_norm = False
        self._in_fit = False
        self._learning_rate_at_begin = None
        self._swa_start_rate = None
        self._epoch = self._closed_epoch = None

    # -- the average's state, for an exact resume --------------------------------

    def get_state(self):
        """What a resumed `fit` needs to continue exactly, as NumPy arrays.

        `{"count": updates so far, "values": the average, "raw": the raw weights,
        "raw_statistics": the raw weights' batch norm statistics,
        "swa_start_rate": the learning rate SWA's annealing starts from}`, the
        weights in the order of `model.trainable_variables`. `"raw"` and
        `"raw_statistics"` are set while the model holds the average (after
        `fit`, or after an epoch that validated it); otherwise they are `None`
        and the model holds the raw weights and their moving statistics.
        `EarlyStoppingWithCheckpoint` keeps this state in its backups.
        """
        held = self._swapped if self._swapped is not None else self._raw_in_waiting
        raw, raw_statistics = (
            (None, None) if held is None else ([v.copy() for v in part] for part in held)
        )
        return {
            **self._average.state(),
            "raw": raw,
            "raw_statistics": raw_statistics,
            "swa_start_rate": self._swa_start_rate,
        }

    def set_state(self, state):
        """Restores a `get_state()`: the next `fit` puts the raw weights back in the
        model (if the state has them) and continues the average."""
        self._average.set_state(state)
        self._raw_to_restore = (state.get("raw") or [], state.get("raw_statistics") or [])
        self._swa_start_rate = state.get("swa_start_rate")
        self._statistics_key = None
        self._state_given = True

    def _restore_in_fit(self, state):
        """`set_state` at once, from `EarlyStoppingWithCheckpoint`'s resume: its
        `on_train_begin` runs after this one's and has just put the backup in
        the model (the average, if the backed-up epoch validated it)."""
        self.set_state(state)
        self._assign(self._raw_to_restore)
        self._state_given, self._raw_to_restore = False, None

    # -- fit hooks ---------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self._swapped is not None:  # a previous fit stopped by an error mid-validation
            self._swap_out()
        if self._in_fit and self._learning_rate_at_begin is not None:
            # A previous fit was stopped by an error (`fit` then skips
            # `on_train_end`): its annealed rate is still in the optimizer.
            self.model.optimizer.learning_rate = self._learning_rate_at_begin
        self._refuse_a_second_averaging()
        self._layers = [layer for layer in batch_norm_layers(self.model) if layer.trainable]
        self._reader = FlatWeights(self.model)
        if self._state_given:
            self._check_state_fits()
            self._assign(self._raw_to_restore)
        else:
            self._average = WeightAverage()
            self._statistics_key = None
            self._swa_start_rate = None
        self._state_given, self._raw_to_restore, self._raw_in_waiting = False, None, None
        self._start = self._resolve_start_epoch()
        self._check_bn_data()
        self._learning_rate_at_begin = self._swa_learning_rate_check()
        self._in_fit = True
        self._epoch = self._closed_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._swapped is not None:
            self._swap_out()
        self._epoch, self._closed_epoch = epoch, None
        if self.method == "ema":
            # The optimizer's step count (a backup's, after a resume): where
            # the EMA's updates fall does not depend on where fit started.
            self._epoch_start_step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
            self._updated_at = self._epoch_start_step
        if self.method == "swa" and self.swa_learning_rate is not None and epoch >= self._start:
            if self._swa_start_rate is None:
                self._swa_start_rate = float(
                    ops.convert_to_numpy(self.model.optimizer.learning_rate)
                )
            self.model.optimizer.learning_rate = annealed_learning_rate(
                self._swa_start_rate, self.swa_learning_rate, epoch - self._start + 1,
                self.annealing_epochs, self.annealing_strategy,
            )  # fmt: skip

    def on_train_batch_end(self, batch, logs=None):
        if self.method != "ema":
            return
        # `batch` is the epoch's last step done (several per call with
        # `steps_per_execution`); an update is due when a multiple of
        # `update_every_n_steps` was crossed.
        step, every = self._epoch_start_step + batch + 1, self.update_every_n_steps
        if step // every > self._updated_at // every:
            self._updated_at = step
            # n steps' decay in one update, as n updates with the same decay would.
            decay = (
                ema_decay(self._average.count + 1, self.momentum, self.warmup_power or None)
                ** self.update_every_n_steps
            )
            self._average.update_ema_flat(self._reader.read(), self._reader.shapes, decay)

    def on_test_begin(self, logs=None):
        # `fit` runs its validation (starting here) before `on_epoch_end`.
        if self._in_fit and self._epoch is not None and self._closed_epoch != self._epoch:
            self._close_epoch()

    def on_epoch_end(self, epoch, logs=None):
        if self._closed_epoch != epoch:
            self._close_epoch()
        if self.raw_validation_data is not None and self._swapped is not None and logs is not None:
            with self._raw_weights_in_model():
                results = _evaluate(self.model, self.raw_validation_data)
            logs.update({f"raw_val_{name}": value for name, value in results.items()})

    def on_train_end(self, logs=None):
        try:
            if self._average.values is not None and self._swapped is None:
                self._swap_in()
            if self._average.values is None:
                _keras_compat.print_msg(
                    "WeightAveraging: no weights were averaged (SWA starts at epoch "
                    f"{self._start + 1}): "
                    "the model keeps its last weights."
                )
            self._raw_in_waiting, self._swapped = (
                self._swapped,
                None,
            )  # the average stays in the model
        finally:
            if self._learning_rate_at_begin is not None:
                self.model.optimizer.learning_rate = self._learning_rate_at_begin
            self._in_fit = False
            object.__setattr__(self.model, "_kreg_weight_averaging", None)

    # -- the swaps ---------------------------------------------------------------

    def _close_epoch(self):
        """The epoch's training is over: SWA takes its weights, then the average
        goes into the model if this epoch validates it."""
        self._closed_epoch = self._epoch
        if self.method == "swa" and self._epoch >= self._start:
            self._average.update_mean_flat(self._reader.read(), self._reader.shapes)
        if (self._epoch + 1) % self.every_n_epochs == 0 and self._average.values is not None:
            self._swap_in()

    def _statistics_variables(self):
        return [variable for layer in self._layers for variable in layer.non_trainable_weights]

    def _swap_in(self):
        raw = (
            unflatten(self._reader.read(), self._reader.shapes),
            host_arrays(self._statistics_variables()),
        )
        try:
            for variable, value in zip(self._reader.variables, self._average.values):
                variable.assign(value)
            self._statistics_for_average()
        except BaseException:
            self._assign(raw)
            raise
        self._swapped = raw

    def _statistics_for_average(self):
        key = (id(self._average.values), self._average.count)
        if not self._layers:
            if not self._told_no_batch_norm:
                _keras_compat.print_msg(
                    "WeightAveraging: the model has no trainable batch norm, so no statistics "
                    "are re-estimated; the weights are averaged all the same."
                )
                self._told_no_batch_norm = True
            return
        if key == self._statistics_key:
            for variable, value in zip(self._statistics_variables(), self._average_statistics):
                variable.assign(value)
            return
        self._estimator.set_model(self.model)
        self._estimator._epoch = self._epoch
        self._estimator._reestimate()
        self._average_statistics = host_arrays(self._statistics_variables())
        self._statistics_key = key
        if self.verbose:
            _keras_compat.print_msg(
                f"WeightAveraging: {self.method.upper()} of {self._average.count} update(s) in the "
                "model, "
                f"{len(self._layers)} batch norm(s) re-estimated"
            )

    def _swap_out(self):
        raw, self._swapped = self._swapped, None
        self._assign(raw)

    def _assign(self, raw):
        # The variables the reader was made for: raw weights left by a fit an
        # error stopped go back where they came from, even if a layer has been
        # frozen since (`on_train_begin` swaps them out before a new reader).
        weights, statistics = raw
        for variable, value in zip(self._reader.variables, weights):
            variable.assign(value)
        for variable, value in zip(self._statistics_variables(), statistics):
            variable.assign(value)

    @contextlib.contextmanager
    def _raw_weights_in_model(self):
        self._swap_out()
        try:
            yield
        finally:
            self._swap_in()

    # -- checks at the start of fit ---------------------------------------------

    def _refuse_a_second_averaging(self):
        marker = getattr(self.model, "_kreg_weight_averaging", None)
        other = marker() if marker is not None else None
        # Callbacks of one `fit` share its `params` dict; a marker left by a fit
        # an error stopped belongs to another.
        if (
            other is not None
            and other is not self
            and other._in_fit
            and other.params is self.params
        ):
            raise ValueError(
                "Two WeightAveraging callbacks in one fit: each would swap its own average "
                "into the model before the other's validation. Pass one."
            )
        object.__setattr__(self.model, "_kreg_weight_averaging", weakref.ref(self))

    def _check_state_fits(self):
        """A `set_state` state is assigned by position: refuses one of other
        trainable weights (a layer frozen or unfrozen since `get_state`)."""
        raw, raw_statistics = self._raw_to_restore
        statistics = [tuple(v.shape) for v in self._statistics_variables()]
        for saved, ours, what in (
            (self._average.values or [], self._reader.shapes, "trainable weights"),
            (raw, self._reader.shapes, "trainable weights"),
            (raw_statistics, statistics, "batch norm statistics"),
        ):
            saved = [tuple(np.shape(a)) for a in saved]
            if saved and saved != [tuple(shape) for shape in ours]:
                self._state_given, self._raw_to_restore = False, None
                raise ValueError(
                    "Invalid state received by `set_state`. Expected the state of this model's "
                    f"{len(ours)} {what} of shapes {short_shapes(ours)}, as `get_state` gives "
                    "them. "
                    f"Received: {len(saved)} weights of shapes {short_shapes(saved)} (were layers "
                    "frozen or unfrozen since `get_state`?)"
                )

    def _resolve_start_epoch(self):
        if self.method == "ema":
            return 0
        epochs = self.params.get("epochs") if self.params else None
        start = self.start_epoch
        if isinstance(start, float):
            if epochs is None:
                raise ValueError(
                    "WeightAveraging: start_epoch is a fraction, but fit did not say its epochs."
                )
            start = min(int(round(start * epochs)), epochs - 1)
        if epochs is not None and start >= epochs:
            raise ValueError(
                "Invalid value received for argument `start_epoch`. Expected an epoch of this "
                f"fit, below epochs={epochs}, so that SWA averages something. "
                f"Received: start_epoch={self.start_epoch}"
            )
        return start

    def _check_bn_data(self):
        if not self._layers:
            return
        if self.bn_data is None:
            raise ValueError(
                "Invalid value received for argument `bn_data`. The model has "
                f"{len(self._layers)} trainable batch norm(s), whose statistics must be "
                "re-estimated for the averaged weights: pass the training inputs (`x` of "
                "fit) as bn_data (Keras shows callbacks no data of fit). Received: bn_data=None"
            )
        try:
            self.model(self._first_batch, training=False)
        except Exception as error:
            raise ValueError(
                "Invalid value received for argument `bn_data`. The model refused its first "
                f"batch ({type(error).__name__}: {error}). Pass inputs the model's predict takes."
            ) from error

    def _swa_learning_rate_check(self):
        """The learning rate to restore at the end of fit; refuses a schedule."""
        if self.swa_learning_rate is None:
            return None
        rate = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        try:
            self.model.optimizer.learning_rate = rate
        except TypeError as error:  # a LearningRateSchedule cannot be assigned over
            raise ValueError(
                "Invalid value received for argument `swa_learning_rate`. The optimizer's "
                "learning rate is a schedule, which SWA's annealing cannot take over: "
                "compile with a float learning rate, or pass swa_learning_rate=None."
            ) from error
        return rate

    def get_config(self):
        return {
            "method": self.method,
            "momentum": self.momentum,
            "warmup_power": self.warmup_power,
            "update_every_n_steps": self.update_every_n_steps,
            "start_epoch": self.start_epoch if self.method == "swa" else None,
            "swa_learning_rate": self.swa_learning_rate,
            "annealing_epochs": self.annealing_epochs,
            "annealing_strategy": self.annealing_strategy,
            "every_n_epochs": self.every_n_epochs,
            "bn_steps": self.bn_steps,
            "bn_batch_size": self.bn_batch_size,
            "seed": self.seed,
            "verbose": self.verbose,
        }

    def __deepcopy__(self, memo):
        # keras-tuner gives each trial a deep copy of the search's callbacks: the
        # copy shares the data (a dataset cannot be copied, an array need not be).
        return type(self)(
            bn_data=self.bn_data, raw_validation_data=self.raw_validation_data, **self.get_config()
        )


def _optional_count(name, value, minimum):
    return None if value is None else check_at_least(name, value, integer=True, minimum=minimum)


def _check_start_epoch(value):
    if value is None:
        return None
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ValueError(
        "Invalid value received for argument `start_epoch`. Expected an integer >= 0 (an "
        f"epoch) or a float in (0, 1) (a fraction of the epochs). Received: start_epoch={value!r}"
    )


def _first_batch(data, batch_size):
    try:
        return next(iter(_keras_compat.numpy_batches(data, batch_size=batch_size, steps=1)))
    except Exception as error:
        raise ValueError(
            "Invalid value received for argument `bn_data`. Expected inputs `predict` "
            f"takes (arrays, a tf.data.Dataset, a PyDataset); drawing one batch failed "
            f"({type(error).__name__}: {error}). Received: bn_data of type {type(data).__name__}"
        ) from error


def _check_raw_validation_data(data):
    """`data` if `evaluate` can read it as fit's `validation_data`: a tuple
    `(x, y[, sample_weight])` or a dataset that yields targets (one batch is drawn)."""
    if data is None:
        return None
    expected = (
        "Expected fit's `validation_data`: a tuple (x, y) or (x, y, sample_weight) of arrays, "
        "or a tf.data.Dataset or keras.utils.PyDataset yielding (x, y) batches"
    )
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError(
                f"Invalid value received for argument `raw_validation_data`. {expected}. "
                f"Received: a tuple of {len(data)} element(s)"
            )
    elif isinstance(data, (list, dict, str, bytes, np.ndarray, types.GeneratorType)) or hasattr(
        data, "__array__"
    ):
        raise ValueError(
            f"Invalid value received for argument `raw_validation_data`. {expected} "
            "(read at every validation, so not a generator). "
            f"Received: raw_validation_data of type {type(data).__name__}"
        )
    try:
        batch = next(iter(_keras_compat.numpy_batches(data, steps=1, targets=True)))
    except Exception as error:
        raise ValueError(
            f"Invalid value received for argument `raw_validation_data`. {expected}; drawing "
            f"one batch failed ({type(error).__name__}: {error}). Received: "
            f"raw_validation_data of type {type(data).__name__}"
        ) from error
    if batch[1] is None:
        raise ValueError(
            f"Invalid value received for argument `raw_validation_data`. {expected}; its "
            "batches hold inputs only, and the raw model's metrics need targets."
        )
    return data


def _evaluate(model, data):
    if isinstance(data, tuple):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return model.evaluate(x, y, sample_weight=sample_weight, verbose=0, return_dict=True)
    return model.evaluate(data, verbose=0, return_dict=True)
