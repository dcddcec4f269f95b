import numbers

import keras
import keras_tuner

from kreg.tuning.regularization_space import DEFAULT_NORMS
from kreg.tuning.regularization_space import RegularizationSpace


def _check_shape(input_shape, ranks):
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) not in ranks
        or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in input_shape)
    ):
        raise ValueError(
            "Invalid value received for argument `input_shape`. Expected a tuple of "
            f"{' or '.join(map(str, ranks))} positive integers (no batch axis). "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(int(d) for d in input_shape)


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a positive "
            f"integer. Received: {name}={value!r}"
        )
    return int(value)


def _check_sizes(name, value):
    """A positive integer or a non-empty tuple of them, as a tuple."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a non-empty "
            f"tuple of positive integers. Received: {name}={value!r}"
        )
    return tuple(_check_positive(name, v) for v in value)


def _check_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(
            "Invalid value received for argument `num_classes`. Expected an "
            f"integer >= 2. Received: num_classes={num_classes!r}"
        )
    return int(num_classes)


def _default_space(channels, default_norm):
    """The default space, with only the group counts that divide every channel count."""
    groups = tuple(g for g in (2, 4, 8) if all(c % g == 0 for c in channels))
    norms = DEFAULT_NORMS if groups else tuple(n for n in DEFAULT_NORMS if n != "group")
    return RegularizationSpace(norms=norms, default_norm=default_norm, groups=groups or (1,))


class RegularizedHyperModel(keras_tuner.HyperModel):
    """A `keras_tuner.HyperModel` whose regularization comes from a `RegularizationSpace`.

    Subclasses write `build_model(hp)` with `self.space.dropout(...)` and
    `self.space.norm(...)`. A model that cannot be built for some
    hyperparameters (a `ValueError` while building, e.g. a shape the chosen
    layers cannot take) makes keras-tuner's `FailedTrialError`: the trial is
    reported as failed, not retried, and the search goes on. Mistakes that
    would fail every trial (an unknown role, a group count that does not divide
    the channels) stay `ValueError`s that end the search at once.

    Args:
        space: The `RegularizationSpace`. Defaults to `RegularizationSpace()`.
        learning_rate: Adam's learning rate. Defaults to 1e-3.
        seed: Optional integer. When given, Keras's global random state is
            seeded at every build, so the same hyperparameters train the same
            way in every trial (comparable searches, reproducible tests).
        name: Optional name of the hypermodel.

    Example:

    ```python
    class MLP(kreg.tuning.RegularizedHyperModel):
        def build_model(self, hp):
            model = keras.Sequential([
                keras.Input((64,)),
                keras.layers.Dense(256, activation="relu"),
                self.space.dropout(hp, "dense"),
                keras.layers.Dense(10, activation="softmax"),
            ])
            return self.compile_model(model)
    ```
    """

    def __init__(self, space=None, learning_rate=1e-3, seed=None, name=None, tunable=True):
        super().__init__(name=name, tunable=tunable)
        if space is not None and not isinstance(space, RegularizationSpace):
            raise ValueError(
                "Invalid value received for argument `space`. Expected a "
                f"kreg.tuning.RegularizationSpace or None. Received: space={space!r}"
            )
        self.space = space if space is not None else RegularizationSpace()
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real) or not learning_rate > 0:
            raise ValueError(
                "Invalid value received for argument `learning_rate`. Expected a "
                f"float > 0. Received: learning_rate={learning_rate!r}"
            )
        self.learning_rate = float(learning_rate)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(
                "Invalid value received for argument `seed`. Expected an integer >= 0 "
                f"or None. Received: seed={seed!r}"
            )
        self.seed = None if seed is None else int(seed)

    def build(self, hp):
        """Builds the model for `hp`; an unbuildable model fails only its trial."""
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        try:
            return self.build_model(hp)
        except keras_tuner.errors.FatalError:
            raise
        except ValueError as error:
            raise keras_tuner.errors.FailedTrialError(
                f"{type(self).__name__} cannot build a model for "
                f"{self.space.describe(hp) or hp.values}: {error}"
            ) from error

    def build_model(self, hp):
        """Returns the compiled model for `hp`. Subclasses implement it."""
        raise NotImplementedError

    def compile_model(self, model):
        """Compiles `model` for classification with integer labels (Adam, accuracy)."""
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model


class CNNHyperModel(RegularizedHyperModel):
    """A CNN image classifier whose dropout rates and normalization are tuned.

    One block per entry of `filters`: `Conv2D(3x3) -> norm -> ReLU ->
    MaxPooling2D -> dropout`, the first block's dropout with the
    `"early_conv"` range, the others with `"late_conv"`; then `Flatten ->
    Dense(dense_units, relu) -> dropout ("dense") -> Dense(num_classes,
    softmax)`. One norm choice (`"norm"`, with `"norm_groups"` when it is
    `"group"`) is used after every convolution, as the tutorials put it
    (Conv -> BN -> ReLU). Compiled with Adam and sparse categorical
    cross-entropy, with accuracy.

    Hyperparameters: `early_conv_dropout`, `late_conv_dropout` (with two blocks
    or more), `dense_dropout`, `norm`, `norm_groups`.

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
        seed: Optional integer seeding every build (see `RegularizedHyperModel`).

    Example:

    ```python
    hypermodel = kreg.tuning.CNNHyperModel(input_shape=(8, 8, 1), num_classes=10)
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=10)
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
    ):
        self.input_shape = _check_shape(input_shape, (2, 3))
        self.filters = _check_sizes("filters", filters)
        if space is None:
            space = _default_space(self.filters, "batch")
        super().__init__(space=space, learning_rate=learning_rate, seed=seed, name=name, tunable=tunable)
        self.num_classes = _check_classes(num_classes)
        self.dense_units = _check_positive("dense_units", dense_units)

    def build_model(self, hp):
        inputs = keras.Input(self.input_shape)
        x = inputs
        if len(self.input_shape) == 2:
            x = keras.layers.Reshape(self.input_shape + (1,))(x)
        for block, filters in enumerate(self.filters):
            x = keras.layers.Conv2D(filters, 3, padding="same")(x)
            x = self.space.norm(hp, channels=filters)(x)
            x = keras.layers.ReLU()(x)
            x = keras.layers.MaxPooling2D()(x)
            x = self.space.dropout(hp, "early_conv" if block == 0 else "late_conv")(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(self.dense_units, activation="relu")(x)
        x = self.space.dropout(hp, "dense")(x)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax")(x)
        return self.compile_model(keras.Model(inputs, outputs, name="kreg_cnn"))


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
    with Adam and sparse categorical cross-entropy, with accuracy.

    Hyperparameters: `norm`, `norm_groups`, `recurrent_dropout`, `dense_dropout`.

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
        seed: Optional integer seeding every build (see `RegularizedHyperModel`).

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
    ):
        self.input_shape = _check_shape(input_shape, (2,))
        self.units = _check_sizes("units", units)
        if cell not in ("lstm", "gru"):
            raise ValueError(
                "Invalid value received for argument `cell`. Expected 'lstm' or "
                f"'gru'. Received: cell={cell!r}"
            )
        self.cell = cell
        if space is None:
            space = _default_space((self.input_shape[-1],), "layer")
        super().__init__(space=space, learning_rate=learning_rate, seed=seed, name=name, tunable=tunable)
        self.num_classes = _check_classes(num_classes)
        self.dense_units = _check_positive("dense_units", dense_units)

    def build_model(self, hp):
        inputs = keras.Input(self.input_shape)
        x = self.space.norm(hp, channels=self.input_shape[-1])(inputs)
        layer = keras.layers.LSTM if self.cell == "lstm" else keras.layers.GRU
        for index, units in enumerate(self.units):
            x = self.space.dropout(hp, "recurrent")(x)
            x = layer(units, return_sequences=index < len(self.units) - 1)(x)
        x = keras.layers.Dense(self.dense_units, activation="relu")(x)
        x = self.space.dropout(hp, "dense")(x)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax")(x)
        return self.compile_model(keras.Model(inputs, outputs, name="kreg_rnn"))
