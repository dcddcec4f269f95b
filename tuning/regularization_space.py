import math

import keras

from kreg._validation import check_at_least
from kreg._validation import check_between
from kreg._validation import check_choice
from kreg._validation import check_interval
from kreg._validation import check_positive
from kreg._validation import check_rate
from kreg._validation import check_sizes
from kreg.dropout_ranges import USUAL_DROPOUT_RANGES
from kreg.layers.batch_norm_arguments import ADAPTIVE_BATCH_ARGUMENTS
from kreg.layers.batch_norm_arguments import BATCH_NORM_ARGUMENTS
from kreg.tuning.search_engine import as_hyperparameters
from kreg.tuning.search_engine import fatal_value_error
from kreg.tuning.search_engine import values_of

# The tuner searches the usual rates of kreg/dropout_ranges.py, the table the
# linter (`kreg.diagnose`) warns against: every rate the search can pick passes it.
DEFAULT_DROPOUT_RANGES = USUAL_DROPOUT_RANGES
"""The dropout range searched for each role, `{role: (low, high)}`.

The usual ranges of `kreg.dropout_ranges`, which the linter's dropout rules read too.
"""
ROLES = tuple(DEFAULT_DROPOUT_RANGES)
"""The roles a dropout can play: `"early_conv"`, `"late_conv"`, `"dense"`, `"recurrent"`."""
NORMS = ("batch", "adaptive_batch", "layer", "group", "instance", "none")
"""The normalizations `RegularizationSpace.norm` and `make_norm` know, by name."""
# "adaptive_batch" trains exactly like "batch" and, with its default test-time
# mode, predicts like it too: searching both by default spends trials on a tie.
DEFAULT_NORMS = ("batch", "layer", "group", "instance", "none")
NORM_WORDS = {
    "batch": "batch norm",
    "adaptive_batch": "adaptive batch norm",
    "layer": "layer norm",
    "group": "group norm",
    "instance": "instance norm",
    "none": "no norm",
}
BATCH_NORMS = ("batch", "adaptive_batch")
# Weight decay searched log-uniformly. Decoupled (AdamW, Loshchilov & Hutter 2019,
# https://arxiv.org/abs/1711.05101): Keras's AdamW defaults to 0.004, PyTorch's
# to 0.01. As an L2 penalty added to the loss: 1e-4 to 5e-4 in the usual CNN recipes.
# Each range is centred (log scale) near those values.
WEIGHT_DECAYS = ("adamw", "l2")
DEFAULT_WEIGHT_DECAY_RANGES = {"adamw": (1e-4, 1e-1), "l2": (1e-5, 1e-2)}
WEIGHT_DECAY_WORDS = {"adamw": "AdamW weight decay", "l2": "L2"}
# Label smoothing around Szegedy et al.'s 0.1 (2016, https://arxiv.org/abs/1512.00567).
DEFAULT_LABEL_SMOOTHING_RANGE = (0.0, 0.2)
# The deepest block's stochastic-depth rate: Huang et al. (2016,
# https://arxiv.org/abs/1603.09382) use 0.5 on a 110-layer ResNet; ConvNeXt-T uses
# 0.1 and EfficientNet-B0 0.2 (`drop_path_rate` / `drop_connect_rate`). Small and
# medium networks sit at the low end.
STOCHASTIC_DEPTH_RANGE = (0.0, 0.3)
# DropBlock (Ghiasi et al. 2018, https://arxiv.org/abs/1810.12890): keep_prob 0.9
# (rate 0.1) and block_size 7 on ResNet-50's last stages; small maps need smaller blocks.
DROPBLOCK_RATE_RANGE = (0.05, 0.25)
DROPBLOCK_BLOCK_SIZES = (3, 5, 7)
WEIGHT_AVERAGING = ("none", "ema", "swa")


def _check_kwargs(name, kwargs, allowed):
    """A dict of constructor arguments whose keys are all among `allowed` (`axis`
    excluded: `norm(hp, axis=...)` sets it)."""
    if kwargs is None:
        return {}
    allowed = tuple(key for key in allowed if key != "axis")
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a dict of "
            f"constructor arguments or None. Received: {name}={kwargs!r}"
        )
    for key in kwargs:
        if key not in allowed:
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected keys among "
                f"{', '.join(allowed)} (the axis is `norm(hp, axis=...)`'s). "
                f"Received: {name}={kwargs!r}, with the key {key!r}"
            )
    return dict(kwargs)


def _snap(value, low, step):
    """`value` moved onto the grid `low + k * step` (no grid when `step` is None)."""
    if step is None:
        return round(value, 10)
    return round(low + round((value - low) / step) * step, 10)


class RegularizationSpace:
    """A search space over dropout, normalization, weight decay and label smoothing.

    Declares, once, which dropout rates, normalization and (optionally) weight
    decay and label smoothing a model may use; inside a hypermodel's
    `build(hp)`, `dropout(hp, role)` and `norm(hp)` return ready Keras layers,
    `weight_decay(hp)` and `label_smoothing(hp)` return values, and each call
    registers the hyperparameter that chooses it. `hp` is keras-tuner's
    `HyperParameters` or an Optuna trial (`optuna.Trial`): both get the same
    names, ranges and conditions.

    The dropout range depends on where the dropout sits (its role); the
    defaults are the usual rates of `kreg.dropout_ranges`, the table
    `kreg.diagnose` warns against, so no rate the search picks is flagged:

    | role | default range | default value | layer |
    | --- | --- | --- | --- |
    | `"early_conv"` | 0.0-0.1 | 0.05 | `keras.layers.Dropout` |
    | `"late_conv"` | 0.1-0.3 | 0.2 | `keras.layers.Dropout` |
    | `"dense"` | 0.3-0.5 | 0.4 | `keras.layers.Dropout` |
    | `"recurrent"` | 0.1-0.5 | 0.3 | `kreg.layers.ConsistentDropout` |

    The recurrent range spans AWD-LSTM's rates (0.25 between LSTM layers, 0.4
    on inputs and outputs, 0.5 on the recurrent weights). A hyperparameter's
    keras-tuner default is the middle of its range (log scale for weight
    decay).

    Hyperparameters are named predictably: `dropout(hp, "dense")` registers
    `"dense_dropout"` (`name="head"` registers `"head_dropout"`), `norm(hp)`
    registers `"norm"` (`name="block1"` registers `"block1_norm"`), and the
    group count `"norm_groups"` (`"block1_norm_groups"`) only while the norm is
    `"group"` (keras-tuner's `conditional_scope`; Optuna is simply not asked);
    `weight_decay(hp)` registers `"weight_decay"` and `label_smoothing(hp)`
    `"label_smoothing"`. A value fixed beforehand (`hp.Fixed(name, value)`,
    Optuna's `study.enqueue_trial`) is used as is.

    Args:
        dropout_ranges: Optional dict `{role: (low, high)}` that overrides the
            default range of some roles. Bounds in `[0, 1)`, `low <= high`
            (`low == high` fixes the rate).
        norms: The normalization choices, among `"batch"`, `"adaptive_batch"`
            (`kreg.layers.AdaptiveBatchNormalization`), `"layer"`, `"group"`,
            `"instance"` (`GroupNormalization(groups=-1)`: each channel
            normalized alone over space or time; for feature maps and
            sequences, not flat `(batch, features)` tensors) and `"none"` (an
            identity). Defaults to all but `"adaptive_batch"`, which trains
            like `"batch"`: add it when its test-time mode is what you tune.
        default_norm: The norm a fresh `hp` gets. Defaults to `"batch"` (the
            tutorials' choice for CNNs) when it is among `norms`, else the
            first of `norms`.
        groups: Group count(s) choices of `"group"`, positive integers; the
            first is the default. Defaults to `(2, 4, 8)`.
        step: Grid step of the dropout rates and label smoothing, or `None`
            for continuous ranges. Defaults to 0.05.
        batch_norm_kwargs: Optional dict of `BatchNormalization` arguments for
            `"batch"` and `"adaptive_batch"` (e.g. `{"momentum": 0.9}`), checked
            against Keras's argument list (`kreg.layers.batch_norm_arguments`).
        adaptive_batch_kwargs: Optional dict of extra constructor arguments for
            `AdaptiveBatchNormalization` (`test_time_mode`, `prior_strength`,
            `online_momentum`, or a `BatchNormalization` argument for it alone).
        weight_decay: `None` (default: not searched), `"adamw"` (decoupled
            weight decay: `optimizer(hp)` returns `keras.optimizers.AdamW`) or
            `"l2"` (a penalty in the loss: `kernel_regularizer(hp)` returns
            `keras.regularizers.L2`).
        weight_decay_range: `(low, high)`, positive, searched log-uniformly.
            Defaults to 1e-4-1e-1 for `"adamw"` and 1e-5-1e-2 for `"l2"`.
        label_smoothing: `False` (default: not searched), `True` (the range
            0.0-0.2, around the usual 0.1) or a `(low, high)` range in `[0, 1)`.

    Example:

    ```python
    space = kreg.tuning.RegularizationSpace(weight_decay="adamw", label_smoothing=True)

    def build(hp):  # hp: keras_tuner.HyperParameters or optuna.Trial
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
        x = space.norm(hp, channels=32)(x)
        x = keras.layers.ReLU()(x)
        x = space.dropout(hp, "early_conv")(x)
        x = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
        x = space.dropout(hp, "dense")(x)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
        model.compile(space.optimizer(hp, 1e-3), space.loss(hp), metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(build, objective="val_accuracy", max_trials=10, seed=1)
    tuner.search(x, y, validation_split=0.2, epochs=20)
    print(space.describe(tuner.get_best_hyperparameters()[0]))
    # early conv dropout 0.05, dense dropout 0.45, group norm (4 groups),
    # AdamW weight decay 3.2e-03, label smoothing 0.10
    ```

    Reference:
        - [Srivastava et al., 2014](https://jmlr.org/papers/v15/srivastava14a.html),
          Dropout.
        - [Gal & Ghahramani, 2016](https://arxiv.org/abs/1512.05287), dropout
          masks shared across time in recurrent networks.
        - [Wu & He, 2018](https://arxiv.org/abs/1803.08494), Group
          Normalization (layer and instance norm as its two extremes).
        - [Loshchilov & Hutter, 2019](https://arxiv.org/abs/1711.05101),
          Decoupled Weight Decay Regularization.
        - [Szegedy et al., 2016](https://arxiv.org/abs/1512.00567), label
          smoothing.
    """

    def __init__(
        self,
        dropout_ranges=None,
        norms=DEFAULT_NORMS,
        default_norm=None,
        groups=(2, 4, 8),
        step=0.05,
        adaptive_batch_kwargs=None,
        weight_decay=None,
        weight_decay_range=None,
        label_smoothing=False,
        batch_norm_kwargs=None,
    ):
        ranges = dict(DEFAULT_DROPOUT_RANGES)
        if dropout_ranges is not None:
            if not isinstance(dropout_ranges, dict):
                raise ValueError(
                    "Invalid value received for argument `dropout_ranges`. Expected a "
                    f"dict {{role: (low, high)}}. Received: dropout_ranges={dropout_ranges!r}"
                )
            for role, value in dropout_ranges.items():
                check_choice("dropout_ranges", role, ROLES)
                ranges[role] = check_interval(
                    f"dropout_ranges[{role!r}]", value, check_rate, "floats in [0, 1)"
                )
        self.dropout_ranges = ranges

        if isinstance(norms, str):
            norms = (norms,)
        norms = tuple(norms)
        if not norms:
            raise ValueError(
                "Invalid value received for argument `norms`. Expected at least one "
                f"of {', '.join(map(repr, NORMS))}. Received: norms=()"
            )
        for norm in norms:
            check_choice("norms", norm, NORMS)
        if len(set(norms)) != len(norms):
            raise ValueError(
                "Invalid value received for argument `norms`. Expected each choice "
                f"once. Received: norms={norms!r}"
            )
        self.norms = norms
        if default_norm is None:
            default_norm = "batch" if "batch" in norms else norms[0]
        self.default_norm = check_choice("default_norm", default_norm, norms)
        self.groups = check_sizes("groups", groups)

        self.step = check_between(
            "step", step, 0, 1, include_low=False, include_high=False, optional=True
        )
        self.batch_norm_kwargs = _check_kwargs(
            "batch_norm_kwargs", batch_norm_kwargs, BATCH_NORM_ARGUMENTS
        )
        self.adaptive_batch_kwargs = _check_kwargs(
            "adaptive_batch_kwargs",
            adaptive_batch_kwargs,
            tuple(BATCH_NORM_ARGUMENTS) + ADAPTIVE_BATCH_ARGUMENTS,
        )

        if weight_decay is not None:
            check_choice("weight_decay", weight_decay, WEIGHT_DECAYS + (None,))
        self.weight_decay_method = weight_decay
        if weight_decay_range is not None:
            if weight_decay is None:
                raise ValueError(
                    "Invalid value received for argument `weight_decay_range`. It is "
                    "searched only with weight_decay='adamw' or 'l2'. Received: "
                    f"weight_decay_range={weight_decay_range!r} with weight_decay=None"
                )
            weight_decay_range = check_interval(
                "weight_decay_range", weight_decay_range, check_positive, "finite numbers > 0"
            )
        elif weight_decay is not None:
            weight_decay_range = DEFAULT_WEIGHT_DECAY_RANGES[weight_decay]
        self.weight_decay_range = weight_decay_range

        if label_smoothing is True:
            label_smoothing = DEFAULT_LABEL_SMOOTHING_RANGE
        elif label_smoothing is False or label_smoothing is None:
            label_smoothing = None
        else:
            label_smoothing = check_interval(
                "label_smoothing", label_smoothing, check_rate, "floats in [0, 1)"
            )
        self.label_smoothing_range = label_smoothing

    # -- dropout ---------------------------------------------------------------

    def dropout_name(self, role, name=None):
        """The hyperparameter name of a dropout rate: `"{name or role}_dropout"`."""
        check_choice("role", role, ROLES)
        return f"{name or role}_dropout"

    def dropout_rate(self, hp, role, name=None):
        """Registers (or reads) the dropout rate of `role` in `hp` and returns it.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.
            role: One of `"early_conv"`, `"late_conv"`, `"dense"`, `"recurrent"`.
            name: Optional prefix of the hyperparameter name; defaults to `role`.
                Two calls with the same name share one rate.

        Returns:
            The rate, a float.
        """
        if role not in ROLES:
            raise fatal_value_error(
                "Invalid value received for argument `role`. Expected one of "
                f"{', '.join(map(repr, ROLES))}. Received: role={role!r}"
            )
        low, high = self.dropout_ranges[role]
        return self._float(hp, self.dropout_name(role, name), low, high)

    def dropout(self, hp, role, name=None, seed=None):
        """Returns the dropout layer of `role` with a tuned rate.

        `keras.layers.Dropout` for the convolution and dense roles,
        `kreg.layers.ConsistentDropout` (one mask per sequence) for
        `"recurrent"`, which expects `(batch, time, features)` inputs.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.
            role: One of `"early_conv"`, `"late_conv"`, `"dense"`, `"recurrent"`.
            name: Optional prefix of the hyperparameter name (`"{name}_dropout"`);
                defaults to `role`.
            seed: Optional seed of the layer's mask.

        Returns:
            A Keras layer.
        """
        rate = self.dropout_rate(hp, role, name=name)
        if role == "recurrent":
            from kreg.layers import ConsistentDropout

            return ConsistentDropout(rate, seed=seed)
        return keras.layers.Dropout(rate, seed=seed)

    def _float(self, hp, hp_name, low, high):
        """A float hyperparameter on the grid of `step`; fixed when `low == high`."""
        hp = as_hyperparameters(hp)
        if low == high:
            return float(hp.Fixed(hp_name, low))
        default = _snap((low + high) / 2, low, self.step)
        return float(hp.Float(hp_name, low, high, step=self.step, default=default))

    # -- stochastic depth and DropBlock ----------------------------------------

    def stochastic_depth(self, hp):
        """Registers (or reads) `"stochastic_depth_rate"`: the deepest block's rate.

        Pass it to `kreg.stochastic_depth_rates(num_blocks, rate)` (one rate per
        residual block) or `kreg.add_stochastic_depth(model, rate)`.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.

        Returns:
            The maximum rate, a float in `STOCHASTIC_DEPTH_RANGE`.
        """
        return self._float(hp, "stochastic_depth_rate", *STOCHASTIC_DEPTH_RANGE)

    def dropblock(self, hp):
        """Registers (or reads) `"dropblock_rate"` and `"dropblock_block_size"`.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.

        Returns:
            `(rate, block_size)` for `kreg.layers.DropBlock2D`; clip the block
            size to the feature map where it is smaller.
        """
        rate = self._float(hp, "dropblock_rate", *DROPBLOCK_RATE_RANGE)
        block_size = as_hyperparameters(hp).Choice(
            "dropblock_block_size", list(DROPBLOCK_BLOCK_SIZES), default=5
        )
        return rate, int(block_size)

    # -- normalization ---------------------------------------------------------

    def norm_name(self, name=None):
        """The hyperparameter name of a norm choice: `"norm"` or `"{name}_norm"`."""
        return "norm" if name is None else f"{name}_norm"

    def norm_choice(self, hp, name=None, channels=None):
        """Registers (or reads) a norm choice in `hp`; returns `(norm, groups)`.

        `groups` is the group count when the norm is `"group"`, else `None`.
        Arguments as in `norm`.
        """
        if channels is not None:
            try:
                channels = check_at_least("channels", channels, integer=True, minimum=1)
            except ValueError as error:
                raise fatal_value_error(str(error)) from None
            if "group" in self.norms:
                for count in self.groups:
                    if channels % count:
                        raise fatal_value_error(
                            "Invalid value received for argument `groups`. Every group "
                            f"count must divide the channels ({channels}). Received: "
                            f"groups={self.groups!r}, of which {count} does not divide "
                            f"{channels}."
                        )
        hp = as_hyperparameters(hp)
        hp_name = self.norm_name(name)
        if len(self.norms) == 1:
            norm = hp.Fixed(hp_name, self.norms[0])
        else:
            norm = hp.Choice(hp_name, list(self.norms), default=self.default_norm)
        if norm not in NORMS:
            raise fatal_value_error(
                f"Invalid value received for hyperparameter `{hp_name}`. Expected one "
                f"of {', '.join(map(repr, NORMS))}. Received: {hp_name}={norm!r}"
            )
        groups = None
        if "group" in self.norms:
            with hp.conditional_scope(hp_name, ["group"]):
                if len(self.groups) == 1:
                    groups = hp.Fixed(f"{hp_name}_groups", self.groups[0])
                else:
                    groups = hp.Choice(
                        f"{hp_name}_groups", list(self.groups), default=self.groups[0]
                    )
        if norm != "group":
            return norm, None
        if channels is not None and channels % groups:
            raise ValueError(
                f"Invalid value received for hyperparameter `{hp_name}_groups`. Expected "
                f"a group count that divides the channels ({channels}). Received: "
                f"{hp_name}_groups={groups}"
            )
        return norm, groups

    def norm(self, hp, name=None, channels=None, axis=-1):
        """Returns the chosen normalization layer (`keras.layers.Identity` for `"none"`).

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.
            name: Optional prefix of the hyperparameter name (`"{name}_norm"`);
                defaults to the single shared choice `"norm"`. Calls with the
                same name share one choice.
            channels: Optional number of channels the layer normalizes. Given,
                every group count is checked against it up front (a
                `ValueError` naming the count that does not divide it).
            axis: The channel axis. Defaults to -1.

        Returns:
            A Keras layer.
        """
        norm, groups = self.norm_choice(hp, name=name, channels=channels)
        kwargs = {}
        if norm in BATCH_NORMS:
            kwargs = dict(self.batch_norm_kwargs)
        if norm == "adaptive_batch":
            kwargs.update(self.adaptive_batch_kwargs)
        return make_norm(norm, groups=groups, axis=axis, **kwargs)

    # -- weight decay and label smoothing --------------------------------------

    def weight_decay(self, hp):
        """Registers (or reads) `"weight_decay"`, log-uniform over `weight_decay_range`.

        Only for a space built with `weight_decay="adamw"` or `"l2"` (a
        `ValueError` otherwise). `optimizer(hp, ...)` and
        `kernel_regularizer(hp)` use the value as the method says.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.

        Returns:
            The weight decay, a float.
        """
        if self.weight_decay_method is None:
            raise fatal_value_error(
                "This RegularizationSpace searches no weight decay. Build it with "
                "weight_decay='adamw' or weight_decay='l2'. Received: weight_decay=None"
            )
        low, high = self.weight_decay_range
        hp = as_hyperparameters(hp)
        if low == high:
            return float(hp.Fixed("weight_decay", low))
        default = float(f"{math.sqrt(low * high):.3g}")
        return float(hp.Float("weight_decay", low, high, sampling="log", default=default))

    def optimizer(self, hp, learning_rate=1e-3):
        """Adam, or AdamW with the tuned decay when the space has `weight_decay="adamw"`.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.
            learning_rate: The learning rate. Defaults to 1e-3.

        Returns:
            A `keras.optimizers.Adam` or `keras.optimizers.AdamW`.
        """
        if self.weight_decay_method == "adamw":
            return keras.optimizers.AdamW(learning_rate, weight_decay=self.weight_decay(hp))
        return keras.optimizers.Adam(learning_rate)

    def kernel_regularizer(self, hp):
        """`keras.regularizers.L2(tuned decay)` when the space has `weight_decay="l2"`, else `None`.

        Pass it as `kernel_regularizer=` of every Conv/Dense/recurrent layer.
        """
        if self.weight_decay_method == "l2":
            return keras.regularizers.L2(self.weight_decay(hp))
        return None

    def label_smoothing(self, hp):
        """Registers (or reads) `"label_smoothing"` and returns it (0.0 when not searched).

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.

        Returns:
            The label smoothing, a float.
        """
        if self.label_smoothing_range is None:
            return 0.0
        low, high = self.label_smoothing_range
        return self._float(hp, "label_smoothing", low, high)

    def loss(self, hp, sparse=True):
        """The classification cross-entropy with the tuned label smoothing.

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.
            sparse: Whether labels are class indices (default) or one-hot.

        Returns:
            `"sparse_categorical_crossentropy"` without label smoothing, else a
            loss that smooths the labels (`kreg.tuning.SparseCategoricalCrossentropy`
            for class indices, Keras's `CategoricalCrossentropy` for one-hot).
        """
        smoothing = self.label_smoothing(hp)
        if sparse:
            if not smoothing:
                return "sparse_categorical_crossentropy"
            from kreg.tuning.losses import SparseCategoricalCrossentropy

            return SparseCategoricalCrossentropy(label_smoothing=smoothing)
        return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)

    # -- weight averaging ------------------------------------------------------

    def weight_averaging(self, hp, bn_data=None, **kwargs):
        """Registers (or reads) `"weight_averaging"`: `"none"` (default), `"ema"` or `"swa"`.

        The choice lives in `fit`, not in the model: pass what this returns to
        the trial's `fit` (in keras-tuner, from the hypermodel's `fit(hp, model,
        x, ...)`; in Optuna, beside `model.fit`).

        Args:
            hp: The trial's `keras_tuner.HyperParameters` or `optuna.Trial`.
            bn_data: The training inputs, to re-estimate batch norm statistics
                for the averaged weights (`kreg.callbacks.WeightAveraging`'s
                `bn_data`).
            **kwargs: Other `WeightAveraging` arguments (`momentum`,
                `start_epoch`...). Those of one method only (`momentum` and
                `warmup_power` for EMA, `start_epoch` and `swa_learning_rate`
                for SWA) are passed when the trial chooses that method.

        Returns:
            `[]` for `"none"`, else `[kreg.callbacks.WeightAveraging(method, ...)]`:
            a list to add to the callbacks.
        """
        from kreg.callbacks import WeightAveraging
        from kreg.callbacks.weight_averaging import METHOD_OF_ARGUMENT

        method = as_hyperparameters(hp).Choice(
            "weight_averaging", list(WEIGHT_AVERAGING), default="none"
        )
        if method == "none":
            return []
        kwargs = {k: v for k, v in kwargs.items() if METHOD_OF_ARGUMENT.get(k, method) == method}
        return [WeightAveraging(method, bn_data=bn_data, **kwargs)]

    # -- reporting -------------------------------------------------------------

    def describe(self, hp):
        """The regularization chosen in `hp`, in words.

        Args:
            hp: A `keras_tuner.HyperParameters` (e.g.
                `tuner.get_best_hyperparameters()[0]`), an Optuna trial (e.g.
                `study.best_trial`) or a dict of values (`study.best_params`).

        Returns:
            A string such as `"dense dropout 0.42, group norm (4 groups)"`.
        """
        values = values_of(hp)
        words = []
        for key, value in values.items():
            if key.endswith("_dropout"):
                words.append(f"{key[: -len('_dropout')].replace('_', ' ')} dropout {value:.2f}")
        for key, value in values.items():
            if (key == "norm" or key.endswith("_norm")) and value in NORM_WORDS:
                prefix = "" if key == "norm" else key[: -len("_norm")].replace("_", " ") + " "
                text = prefix + NORM_WORDS[value]
                if value == "group" and f"{key}_groups" in values:
                    text += f" ({values[key + '_groups']} groups)"
                words.append(text)
        if "stochastic_depth_rate" in values:
            words.append(f"stochastic depth up to {values['stochastic_depth_rate']:.2f}")
        if "dropblock_rate" in values:
            block = values.get("dropblock_block_size")
            words.append(
                f"DropBlock {values['dropblock_rate']:.2f}" + (f" (block {block})" if block else "")
            )
        if "weight_decay" in values:
            label = WEIGHT_DECAY_WORDS.get(self.weight_decay_method, "weight decay")
            words.append(f"{label} {values['weight_decay']:.1e}")
        if "label_smoothing" in values:
            words.append(f"label smoothing {values['label_smoothing']:.2f}")
        if values.get("weight_averaging", "none") != "none":
            words.append(f"{values['weight_averaging'].upper()} weight averaging")
        return ", ".join(words)

    def get_config(self):
        return {
            "dropout_ranges": {role: list(r) for role, r in self.dropout_ranges.items()},
            "norms": list(self.norms),
            "default_norm": self.default_norm,
            "groups": list(self.groups),
            "step": self.step,
            "adaptive_batch_kwargs": dict(self.adaptive_batch_kwargs),
            "batch_norm_kwargs": dict(self.batch_norm_kwargs),
            "weight_decay": self.weight_decay_method,
            "weight_decay_range": None
            if self.weight_decay_range is None
            else list(self.weight_decay_range),
            "label_smoothing": (
                False if self.label_smoothing_range is None else list(self.label_smoothing_range)
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dropout_ranges"] = {k: tuple(v) for k, v in config["dropout_ranges"].items()}
        config["norms"] = tuple(config["norms"])
        config["groups"] = tuple(config["groups"])
        for key in ("weight_decay_range", "label_smoothing"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        return cls(**config)


def make_norm(norm, groups=None, axis=-1, **kwargs):
    """Builds the normalization layer called `norm`.

    Args:
        norm: One of `"batch"`, `"adaptive_batch"`, `"layer"`, `"group"`,
            `"instance"`, `"none"`.
        groups: Group count of `"group"` (required there, ignored otherwise).
        axis: The channel axis. Defaults to -1.
        **kwargs: Extra constructor arguments of the layer.

    Returns:
        A Keras layer (`keras.layers.Identity` for `"none"`).

    Example:

    >>> type(make_norm("instance")).__name__
    'GroupNormalization'
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return keras.layers.BatchNormalization(axis=axis, **kwargs)
    if norm == "adaptive_batch":
        # Imported here: the layer lives in kreg.layers and is optional to this module.
        from kreg.layers import AdaptiveBatchNormalization

        return AdaptiveBatchNormalization(axis=axis, **kwargs)
    if norm == "layer":
        return keras.layers.LayerNormalization(axis=axis, **kwargs)
    if norm == "group":
        groups = check_at_least("groups", groups, integer=True, minimum=1)
        return keras.layers.GroupNormalization(groups=int(groups), axis=axis, **kwargs)
    if norm == "instance":
        # GroupNormalization with one group per channel is instance normalization.
        return keras.layers.GroupNormalization(groups=-1, axis=axis, **kwargs)
    return keras.layers.Identity(**kwargs)
