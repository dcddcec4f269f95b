import keras
import keras_tuner

from kreg._validation import check_at_least
from kreg._validation import check_bool
from kreg._validation import check_choice
from kreg._validation import check_positive
from kreg._validation import check_seed
from kreg._validation import check_shape
from kreg._validation import check_sizes
from kreg.dropout_ranges import early_conv_count
from kreg.layers import DropBlock2D
from kreg.layers import StochasticDepth
from kreg.rules import missing_normalization
from kreg.stochastic_depth import stochastic_depth_rates
from kreg.tuning.precise_statistics import precise_batch_norm_callback
from kreg.tuning.regularization_space import DEFAULT_NORMS
from kreg.tuning.regularization_space import RegularizationSpace
from kreg.tuning.search_engine import is_optuna_trial


def _default_space(channels, default_norm, convolutions=0):
    """The default space, with only the group counts that divide every channel count.

    A stack of as many convolutions as `kreg.diagnose`'s `missing-normalization`
    rule counts as deep never goes without a norm, so every choice passes the linter.
    """
    groups = tuple(g for g in (2, 4, 8) if all(c % g == 0 for c in channels))
    norms = DEFAULT_NORMS if groups else tuple(n for n in DEFAULT_NORMS if n != "group")
    if convolutions >= missing_normalization.MIN_CONVS:
        norms = tuple(n for n in norms if n != "none")
    return RegularizationSpace(norms=norms, default_norm=default_norm, groups=groups or (1,))


class RegularizedHyperModel(keras_tuner.HyperModel):
    """A `keras_tuner.HyperModel` whose regularization comes from a `RegularizationSpace`.

    Subclasses write `build_model(hp)` with `self.space.dropout(...)`,
    `self.space.norm(...)` (and `self.space.kernel_regularizer(hp)` on their
    kernels when the space searches L2 weight decay), and end with
    `self.compile_model(model, hp)`, which picks the optimizer (AdamW when the
    space searches decoupled weight decay) and the loss (with the tuned label
    smoothing). `build(hp)` takes keras-tuner's `HyperParameters` or an Optuna
    trial.

    `fit(hp, model, ...)` (which keras-tuner calls for every trial; call it
    yourself under Optuna) trains with `kreg.callbacks.PreciseBatchNorm` when
    the model has batch norms: their statistics are re-estimated on the
    training data before every validation, so a batch-norm trial is judged by
    its real population statistics, not by moving averages that lag hundreds
    of steps behind the weights (on a few hundred samples, ten steps an epoch,
    those validate near chance, and pruning would take that for overfitting).

    A model that cannot be built for some hyperparameters (any error while
    building, e.g. a `ValueError` for a shape the chosen layers cannot take, or
    a `TypeError`) makes keras-tuner's `FailedTrialError`: the trial is
    reported as failed, not retried, and the search goes on (under Optuna a
    `ValueError` stays one, with the hyperparameters in its message: pass
    `catch=(ValueError,)` to `study.optimize` to go on). Mistakes that
    would fail every trial (an unknown role, a group count that does not divide
    the channels) end the search at once.

    Args:
        space: The `RegularizationSpace`. Defaults to `RegularizationSpace()`.
        learning_rate: Adam's learning rate. Defaults to 1e-3.
        seed: Optional integer >= 1. When given, Keras's global random state is
            seeded at every build, so the same hyperparameters train the same
            way in every trial (comparable searches, reproducible tests). 0 is
            refused, because keras-tuner's tuners read `seed=0` as "no seed":
            one seed value means the same in the tuner and the hypermodel.
        name: Optional name of the hypermodel.
        tunable: As in `keras_tuner.HyperModel`.
        precise_batch_norm: Whether `fit` re-estimates the batch norms'
            statistics before each validation. Defaults to `True`.

    Example:

    ```python
    class MLP(kreg.tuning.RegularizedHyperModel):
        def build_model(self, hp):
            model = keras.Sequential([
                keras.Input((64,)),
                keras.layers.Dense(256, activation="relu",
                                   kernel_regularizer=self.space.kernel_regularizer(hp)),
                self.space.dropout(hp, "dense"),
                keras.layers.Dense(10, activation="softmax"),
            ])
            return self.compile_model(model, hp)
    ```
    """

    def __init__(
        self,
        space=None,
        learning_rate=1e-3,
        seed=None,
        name=None,
        tunable=True,
        precise_batch_norm=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if space is not None and not isinstance(space, RegularizationSpace):
            raise ValueError(
                "Invalid value received for argument `space`. Expected a "
                f"kreg.tuning.RegularizationSpace or None. Received: space={space!r}"
            )
        self.space = space if space is not None else RegularizationSpace()
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self.seed = check_seed("seed", seed)
        self.precise_batch_norm = check_bool("precise_batch_norm", precise_batch_norm)

    def build(self, hp):
        """Builds the model for `hp`; an unbuildable model fails only its trial."""
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        try:
            return self.build_model(hp)
        except keras_tuner.errors.FatalError:
            raise
        except Exception as error:
            if is_optuna_trial(hp) and not isinstance(error, ValueError):
                raise
            message = (
                f"{type(self).__name__} cannot build a model for "
                f"{self.space.describe(hp) or hp}: {type(error).__name__}: {error}"
            )
            if is_optuna_trial(hp):
                raise ValueError(message) from error
            # keras-tuner would mark any other error INVALID and retry the same
            # hyperparameters (`_try_run_and_update_trial`,
            # keras_tuner/src/engine/base_tuner.py); a model that cannot be built
            # for them fails the same way again.
            raise keras_tuner.errors.FailedTrialError(message) from error

    def build_model(self, hp):
        """Returns the compiled model for `hp`. Subclasses implement it."""
        raise NotImplementedError

    def fit(self, hp, model, *args, **kwargs):
        """`model.fit(*args, **kwargs)`, with precise batch-norm statistics for validation.

        When the model has trainable batch norms (and `precise_batch_norm`),
        a `kreg.callbacks.PreciseBatchNorm` on the training inputs joins the
        callbacks (unless one is there already). With `validation_split`, the
        statistics come from the training part only.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.
            model: The model `build(hp)` returned.
            *args, **kwargs: The arguments of `model.fit`.

        Returns:
            The `History` of `model.fit`.
        """
        callbacks = list(kwargs.get("callbacks") or [])
        if self.precise_batch_norm:
            precise = precise_batch_norm_callback(args, kwargs, callbacks, model=model)
            if precise is not None:
                callbacks.insert(0, precise)
        kwargs["callbacks"] = callbacks
        return model.fit(*args, **kwargs)

    def compile_model(self, model, hp=None):
        """Compiles `model` for classification with integer labels, with accuracy.

        The optimizer is `space.optimizer(hp, learning_rate)` (Adam, or AdamW
        with the tuned weight decay) and the loss `space.loss(hp)` (sparse
        categorical cross-entropy with the tuned label smoothing). `hp` is
        needed when the space searches weight decay or label smoothing.
        """
        space = self.space
        if hp is None:
            if space.weight_decay_method is not None or space.label_smoothing_range is not None:
                raise keras_tuner.errors.FatalValueError(
                    "Invalid value received for argument `hp`. The space searches "
                    "weight decay or label smoothing: call compile_model(model, hp). "
                    "Received: hp=None"
                )
            optimizer, loss = (
                keras.optimizers.Adam(self.learning_rate),
                "sparse_categorical_crossentropy",
            )
        else:
            optimizer, loss = space.optimizer(hp, self.learning_rate), space.loss(hp)
        if space.weight_decay_method == "l2" and not model.losses:
            raise keras_tuner.errors.FatalValueError(
                "The space searches L2 weight decay, but no layer of the model has "
                "`kernel_regularizer=space.kernel_regularizer(hp)`: the decay would be "
                f"ignored. Received: a model `{model.name}` with no regularization loss"
            )
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        return model


def _cancels_bias(norm):
    """Whether `norm` subtracts a per-channel mean, which cancels a conv bias before it."""
    if isinstance(norm, keras.layers.BatchNormalization):
        return True
    return isinstance(norm, keras.layers.GroupNormalization) and norm.groups == -1


class CNNHyperModel(RegularizedHyperModel):
    """A CNN image classifier whose dropout rates and normalization are tuned.

    One block per entry of `filters`: `Conv2D(3x3) -> norm -> ReLU ->
    MaxPooling2D -> dropout`, the first half of the blocks' dropout (at least
    the first's) with the `"early_conv"` range, the others with
    `"late_conv"`, as `kreg.diagnose` tells them apart; then `Flatten ->
    Dense(dense_units, relu) -> dropout ("dense") -> Dense(num_classes,
    softmax)`. One norm choice (`"norm"`, with `"norm_groups"` when it is
    `"group"`) is used after every convolution, as the tutorials put it
    (Conv -> BN -> ReLU); the convolution has no bias when the norm subtracts
    each channel's mean (batch and instance norm), which would cancel it.
    Compiled with `compile_model`: Adam (AdamW when the space searches
    decoupled weight decay), sparse categorical cross-entropy (with the tuned
    label smoothing), accuracy. Every model in the default space passes
    `kreg.diagnose` without a warning (a stack of four convolutions or more is
    never searched without a norm).

    Hyperparameters: `norm`, `norm_groups`, `early_conv_dropout`,
    `late_conv_dropout` (with two blocks or more), `dense_dropout`, and when
    the space searches them `weight_decay` and `label_smoothing`.

    With `residual=True` each block is a residual block instead: `Conv -> norm
    -> ReLU -> Conv -> norm` added to its shortcut (a 1x1 conv where the
    channels change) through `kreg.layers.StochasticDepth`, at the rates of
    `kreg.stochastic_depth_rates(len(filters), stochastic_depth_rate)`, then
    `ReLU -> MaxPooling2D`; the late blocks end in `kreg.layers.DropBlock2D`
    (`dropblock_rate`, `dropblock_block_size`, clipped to the map) in place of
    element dropout, and the early blocks have no dropout. Hyperparameters:
    `norm`, `norm_groups`, `stochastic_depth_rate`, `dropblock_rate` and
    `dropblock_block_size` (with two blocks or more), `dense_dropout`.

    Args:
        input_shape: `(height, width, channels)`, or `(height, width)` for
            one-channel images.
        num_classes: Number of classes (>= 2).
        space: Optional `RegularizationSpace`. Defaults to the tutorials'
            ranges, batch norm by default, and the group counts of (2, 4, 8)
            that divide every block's filters.
        filters: Filters of each block. Defaults to `(32, 64)`.
        dense_units: Units of the hidden dense layer. Defaults to 128.
        learning_rate: Adam's learning rate. Defaults to 1e-3.
        seed: Optional integer >= 1 seeding every build (see `RegularizedHyperModel`).
        name: Optional name of the hypermodel.
        tunable: As in `keras_tuner.HyperModel`.
        precise_batch_norm: Whether `fit` re-estimates the batch norms'
            statistics before each validation (see `RegularizedHyperModel`).
            Defaults to `True`.
        residual: Whether the blocks are residual blocks with stochastic depth
            and DropBlock (see above). Defaults to `False`.

    Example:

    ```python
    hypermodel = kreg.tuning.CNNHyperModel(input_shape=(8, 8, 1), num_classes=10)
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=10, seed=1)
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=20)
    print(hypermodel.space.describe(tuner.get_best_hyperparameters()[0]))
    ```

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167), Batch
          Normalization.
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        space=None,
        filters=(32, 64),
        dense_units=128,
        learning_rate=1e-3,
        seed=None,
        name=None,
        tunable=True,
        precise_batch_norm=True,
        residual=False,
    ):
        self.input_shape = check_shape("input_shape", input_shape, (2, 3))
        self.filters = check_sizes("filters", filters)
        self.residual = check_bool("residual", residual)
        if space is None:
            space = _default_space(self.filters, "batch", convolutions=len(self.filters))
        super().__init__(
            space=space,
            learning_rate=learning_rate,
            seed=seed,
            name=name,
            tunable=tunable,
            precise_batch_norm=precise_batch_norm,
        )
        self.num_classes = check_at_least("num_classes", num_classes, integer=True, minimum=2)
        self.dense_units = check_at_least("dense_units", dense_units, integer=True, minimum=1)

    def build_model(self, hp):
        inputs = keras.Input(self.input_shape)
        x = inputs
        if len(self.input_shape) == 2:
            x = keras.layers.Reshape(self.input_shape + (1,))(x)
        early_blocks = early_conv_count(len(self.filters))
        if self.residual:
            x = self._residual_blocks(hp, x, early_blocks)
        for block, filters in enumerate(() if self.residual else self.filters):
            norm = self.space.norm(hp, channels=filters)
            conv = keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not _cancels_bias(norm),
                kernel_regularizer=self.space.kernel_regularizer(hp),
            )
            x = norm(conv(x))
            x = keras.layers.ReLU()(x)
            x = keras.layers.MaxPooling2D()(x)
            x = self.space.dropout(hp, "early_conv" if block < early_blocks else "late_conv")(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(
            self.dense_units,
            activation="relu",
            kernel_regularizer=self.space.kernel_regularizer(hp),
        )(x)
        x = self.space.dropout(hp, "dense")(x)
        outputs = keras.layers.Dense(
            self.num_classes,
            activation="softmax",
            kernel_regularizer=self.space.kernel_regularizer(hp),
        )(x)
        return self.compile_model(keras.Model(inputs, outputs, name="kreg_cnn"), hp)

    def _conv_norm(self, hp, x, filters, kernel_size=3):
        norm = self.space.norm(hp, channels=filters)
        conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            padding="same",
            use_bias=not _cancels_bias(norm),
            kernel_regularizer=self.space.kernel_regularizer(hp),
        )
        return norm(conv(x))

    def _residual_blocks(self, hp, x, early_blocks):
        rates = stochastic_depth_rates(len(self.filters), self.space.stochastic_depth(hp))
        size = min(self.input_shape[:2])
        for block, filters in enumerate(self.filters):
            branch = keras.layers.ReLU()(self._conv_norm(hp, x, filters))
            branch = self._conv_norm(hp, branch, filters)
            shortcut = (
                x if x.shape[-1] == filters else self._conv_norm(hp, x, filters, kernel_size=1)
            )
            x = StochasticDepth(rates[block])([shortcut, branch])
            x = keras.layers.MaxPooling2D()(keras.layers.ReLU()(x))
            size //= 2
            if block >= early_blocks:
                rate, block_size = self.space.dropblock(hp)
                x = DropBlock2D(rate, min(block_size, size))(x)
        return x


class RecurrentHyperModel(RegularizedHyperModel):
    """A recurrent sequence classifier whose dropout rates and normalization are tuned.

    `inputs (batch, time, features) -> norm -> [ConsistentDropout ("recurrent")
    -> LSTM or GRU] x len(units) -> Dense(dense_units, relu) -> dropout
    ("dense") -> Dense(num_classes, softmax)`. The norm acts on the input
    features (batch norm on a recurrent network's inputs only, as the tutorials
    advise; layer norm is the default here, their choice for recurrent and
    small-batch models). The recurrent dropout is kreg's `ConsistentDropout`:
    one mask per sequence on each recurrent layer's inputs, which keeps Keras's
    fused LSTM/GRU kernel (`recurrent_dropout` would turn it off). Compiled
    with `compile_model` (see `CNNHyperModel`).

    Hyperparameters: `norm`, `norm_groups`, `recurrent_dropout`, `dense_dropout`,
    and when the space searches them `weight_decay` and `label_smoothing`.

    Args:
        input_shape: `(timesteps, features)`.
        num_classes: Number of classes (>= 2).
        space: Optional `RegularizationSpace`. Defaults to the tutorials'
            ranges, layer norm by default, and the group counts of (2, 4, 8)
            that divide the features.
        units: Units of each recurrent layer. Defaults to `(64,)`.
        cell: `"lstm"` (default) or `"gru"`.
        dense_units: Units of the hidden dense layer. Defaults to 64.
        learning_rate: Adam's learning rate. Defaults to 3e-3.
        seed: Optional integer >= 1 seeding every build (see `RegularizedHyperModel`).
        name: Optional name of the hypermodel.
        tunable: As in `keras_tuner.HyperModel`.
        precise_batch_norm: Whether `fit` re-estimates the batch norms'
            statistics before each validation (see `RegularizedHyperModel`).
            Defaults to `True`.

    Example:

    ```python
    (x, y), (x_val, y_val) = kreg.datasets.load_digit_sequences()
    hypermodel = kreg.tuning.RecurrentHyperModel(input_shape=(8, 8), num_classes=10)
    tuner = keras_tuner.BayesianOptimization(hypermodel, objective="val_accuracy", max_trials=10)
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=30)
    ```

    Reference:
        - [Gal & Ghahramani, 2016](https://arxiv.org/abs/1512.05287), dropout
          masks shared across time in recurrent networks.
        - [Ba et al., 2016](https://arxiv.org/abs/1607.06450), Layer
          Normalization.
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        space=None,
        units=(64,),
        cell="lstm",
        dense_units=64,
        learning_rate=3e-3,
        seed=None,
        name=None,
        tunable=True,
        precise_batch_norm=True,
    ):
        self.input_shape = check_shape("input_shape", input_shape, (2,))
        self.units = check_sizes("units", units)
        self.cell = check_choice("cell", cell, ("lstm", "gru"))
        if space is None:
            space = _default_space((self.input_shape[-1],), "layer")
        super().__init__(
            space=space,
            learning_rate=learning_rate,
            seed=seed,
            name=name,
            tunable=tunable,
            precise_batch_norm=precise_batch_norm,
        )
        self.num_classes = check_at_least("num_classes", num_classes, integer=True, minimum=2)
        self.dense_units = check_at_least("dense_units", dense_units, integer=True, minimum=1)

    def build_model(self, hp):
        inputs = keras.Input(self.input_shape)
        x = self.space.norm(hp, channels=self.input_shape[-1])(inputs)
        layer = keras.layers.LSTM if self.cell == "lstm" else keras.layers.GRU
        for index, units in enumerate(self.units):
            x = self.space.dropout(hp, "recurrent")(x)
            x = layer(
                units,
                return_sequences=index < len(self.units) - 1,
                kernel_regularizer=self.space.kernel_regularizer(hp),
            )(x)
        x = keras.layers.Dense(
            self.dense_units,
            activation="relu",
            kernel_regularizer=self.space.kernel_regularizer(hp),
        )(x)
        x = self.space.dropout(hp, "dense")(x)
        outputs = keras.layers.Dense(
            self.num_classes,
            activation="softmax",
            kernel_regularizer=self.space.kernel_regularizer(hp),
        )(x)
        return self.compile_model(keras.Model(inputs, outputs, name="kreg_rnn"), hp)
