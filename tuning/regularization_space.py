import math
import numbers

import keras

from kreg._validation import check_choice

# Dropout ranges by where the dropout sits, from the seed tutorials' table
# ("Dropout Rate Guidelines"): early convolutions keep their low-level features,
# late convolutions get mild regularization, dense layers (where memorization
# happens) strong regularization. "recurrent" is kreg's ConsistentDropout on
# sequences (one mask per sequence, shared by every timestep): 0.1-0.4, centred
# on 0.25, the rate Gal & Ghahramani (2016) and AWD-LSTM (dropouth=0.25) use
# between LSTM layers and the rate bench/recurrent_regularization.py found to
# beat no dropout clearly on the digit sequences. A locked mask removes a feature
# from every timestep of the sequence, a stronger perturbation than per-step
# dropout at the same rate, so the range stops at AWD-LSTM's output rate (0.4)
# rather than the dense layers' 0.5.
DEFAULT_DROPOUT_RANGES = {
    "early_conv": (0.0, 0.1),
    "late_conv": (0.1, 0.3),
    "dense": (0.3, 0.5),
    "recurrent": (0.1, 0.4),
}
ROLES = tuple(DEFAULT_DROPOUT_RANGES)
NORMS = ("batch", "adaptive_batch", "layer", "group", "instance", "none")
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


def _fatal_value_error(message):
    """A `ValueError` that also ends a keras-tuner search at once.

    Raised while a hypermodel builds, an ordinary `ValueError` would fail the
    trial and the next ones alike; keras-tuner's `FatalValueError` (a subclass
    of `ValueError`) stops the search with the message instead.
    """
    from keras_tuner.errors import FatalValueError

    return FatalValueError(message)


def _check_range(role, value):
    name = f"dropout_ranges[{role!r}]"
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value)
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a pair "
            f"(low, high) of floats in [0, 1) with low <= high. Received: {name}={value!r}"
        )
    low, high = float(value[0]), float(value[1])
    for bound in (low, high):
        if math.isnan(bound) or not 0.0 <= bound < 1.0:
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected both bounds "
                f"in [0, 1) (a rate of 1 drops everything). Received: {name}={value!r}"
            )
    if low > high:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected low <= high; "
            f"the range is inverted. Received: {name}={value!r}"
        )
    return low, high


def _snap(value, low, step):
    """`value` moved onto the grid `low + k * step` (no grid when `step` is None)."""
    if step is None:
        return round(value, 10)
    return round(low + round((value - low) / step) * step, 10)


class RegularizationSpace:
    """A keras-tuner search space over dropout rates and normalization layers.

    Declares, once, which dropout rates and which normalization a model may use;
    inside a hypermodel's `build(hp)`, `dropout(hp, role)` and `norm(hp)` return
    ready Keras layers and register the hyperparameters that choose them. The
    dropout range depends on where the dropout sits (its role); the defaults
    are the seed tutorials' starting points:

    | role | default range | default value | layer |
    | --- | --- | --- | --- |
    | `"early_conv"` | 0.0-0.1 | 0.05 | `keras.layers.Dropout` |
    | `"late_conv"` | 0.1-0.3 | 0.2 | `keras.layers.Dropout` |
    | `"dense"` | 0.3-0.5 | 0.4 | `keras.layers.Dropout` |
    | `"recurrent"` | 0.1-0.4 | 0.25 | `kreg.layers.ConsistentDropout` |

    The recurrent range is centred on 0.25, the rate used between LSTM layers
    by Gal & Ghahramani and AWD-LSTM; a mask held for the whole sequence removes
    a feature from every timestep, so it stops at 0.4, below the dense layers.
    A hyperparameter's default is the middle of its range.

    Hyperparameters are named predictably: `dropout(hp, "dense")` registers
    `"dense_dropout"` (`name="head"` registers `"head_dropout"`), `norm(hp)`
    registers `"norm"` (`name="block1"` registers `"block1_norm"`), and the
    group count `"norm_groups"` (`"block1_norm_groups"`) is registered under
    `hp.conditional_scope`, so oracles vary it only when the norm is `"group"`.
    A hyperparameter fixed beforehand with `hp.Fixed(name, value)` is used as is.

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
        step: Grid step of the dropout rates, or `None` for a continuous range.
            Defaults to 0.05.
        adaptive_batch_kwargs: Optional dict of extra constructor arguments for
            `AdaptiveBatchNormalization` (e.g. `{"test_time_mode": ...}`).

    Example:

    ```python
    space = kreg.tuning.RegularizationSpace(dropout_ranges={"dense": (0.2, 0.6)})

    def build(hp):
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
        x = space.norm(hp, channels=32)(x)
        x = keras.layers.ReLU()(x)
        x = space.dropout(hp, "early_conv")(x)
        x = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
        x = space.dropout(hp, "dense")(x)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(build, objective="val_accuracy", max_trials=10)
    tuner.search(x, y, validation_split=0.2, epochs=20)
    print(space.describe(tuner.get_best_hyperparameters()[0]))
    # early conv dropout 0.05, dense dropout 0.45, group norm (4 groups)
    ```

    Reference:
        - [Srivastava et al., 2014](https://jmlr.org/papers/v15/srivastava14a.html),
          Dropout.
        - [Gal & Ghahramani, 2016](https://arxiv.org/abs/1512.05287), dropout
          masks shared across time in recurrent networks.
        - [Wu & He, 2018](https://arxiv.org/abs/1803.08494), Group
          Normalization (layer and instance norm as its two extremes).
    """

    def __init__(
        self,
        dropout_ranges=None,
        norms=DEFAULT_NORMS,
        default_norm=None,
        groups=(2, 4, 8),
        step=0.05,
        adaptive_batch_kwargs=None,
    ):
        ranges = dict(DEFAULT_DROPOUT_RANGES)
        if dropout_ranges is not None:
            if not isinstance(dropout_ranges, dict):
                raise ValueError(
                    "Invalid value received for argument `dropout_ranges`. Expected a "
                    f"dict {{role: (low, high)}}. Received: dropout_ranges={dropout_ranges!r}"
                )
            for role, value in dropout_ranges.items():
                if role not in ROLES:
                    raise ValueError(
                        "Invalid value received for argument `dropout_ranges`. Expected "
                        f"roles among {', '.join(map(repr, ROLES))}. Received the role "
                        f"{role!r}"
                    )
                ranges[role] = _check_range(role, value)
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

        if isinstance(groups, numbers.Integral) and not isinstance(groups, bool):
            groups = (groups,)
        groups = tuple(groups) if isinstance(groups, (tuple, list)) else groups
        if (
            not isinstance(groups, tuple)
            or not groups
            or any(isinstance(g, bool) or not isinstance(g, numbers.Integral) or g < 1 for g in groups)
        ):
            raise ValueError(
                "Invalid value received for argument `groups`. Expected a positive "
                f"integer or a non-empty tuple of them. Received: groups={groups!r}"
            )
        self.groups = tuple(int(g) for g in groups)

        if step is not None and (
            isinstance(step, bool) or not isinstance(step, numbers.Real) or not 0 < step < 1
        ):
            raise ValueError(
                "Invalid value received for argument `step`. Expected a float in "
                f"(0, 1) or None. Received: step={step!r}"
            )
        self.step = None if step is None else float(step)
        self.adaptive_batch_kwargs = dict(adaptive_batch_kwargs or {})

    # -- dropout ---------------------------------------------------------------

    def dropout_name(self, role, name=None):
        """The hyperparameter name of a dropout rate: `"{name or role}_dropout"`."""
        check_choice("role", role, ROLES)
        return f"{name or role}_dropout"

    def dropout_rate(self, hp, role, name=None):
        """Registers (or reads) the dropout rate of `role` in `hp` and returns it.

        Args:
            hp: The `keras_tuner.HyperParameters` of the trial.
            role: One of `"early_conv"`, `"late_conv"`, `"dense"`, `"recurrent"`.
            name: Optional prefix of the hyperparameter name; defaults to `role`.
                Two calls with the same name share one rate.

        Returns:
            The rate, a float.
        """
        if role not in ROLES:
            raise _fatal_value_error(
                "Invalid value received for argument `role`. Expected one of "
                f"{', '.join(map(repr, ROLES))}. Received: role={role!r}"
            )
        hp_name = self.dropout_name(role, name)
        low, high = self.dropout_ranges[role]
        if low == high:
            return float(hp.Fixed(hp_name, low))
        default = _snap((low + high) / 2, low, self.step)
        return float(hp.Float(hp_name, low, high, step=self.step, default=default))

    def dropout(self, hp, role, name=None, seed=None):
        """Returns the dropout layer of `role` with a tuned rate.

        `keras.layers.Dropout` for the convolution and dense roles,
        `kreg.layers.ConsistentDropout` (one mask per sequence) for
        `"recurrent"`, which expects `(batch, time, features)` inputs.

        Args:
            hp: The `keras_tuner.HyperParameters` of the trial.
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
            if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
                raise _fatal_value_error(
                    "Invalid value received for argument `channels`. Expected a "
                    f"positive integer. Received: channels={channels!r}"
                )
            if "group" in self.norms:
                for count in self.groups:
                    if channels % count:
                        raise _fatal_value_error(
                            "Invalid value received for argument `groups`. Every group "
                            f"count must divide the channels ({channels}). Received: "
                            f"groups={self.groups!r}, of which {count} does not divide "
                            f"{channels}."
                        )
        hp_name = self.norm_name(name)
        if len(self.norms) == 1:
            norm = hp.Fixed(hp_name, self.norms[0])
        else:
            norm = hp.Choice(hp_name, list(self.norms), default=self.default_norm)
        if norm not in NORMS:
            raise _fatal_value_error(
                f"Invalid value received for hyperparameter `{hp_name}`. Expected one "
                f"of {', '.join(map(repr, NORMS))}. Received: {hp_name}={norm!r}"
            )
        groups = None
        if "group" in self.norms:
            with hp.conditional_scope(hp_name, ["group"]):
                if len(self.groups) == 1:
                    groups = hp.Fixed(f"{hp_name}_groups", self.groups[0])
                else:
                    groups = hp.Choice(f"{hp_name}_groups", list(self.groups), default=self.groups[0])
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
            hp: The `keras_tuner.HyperParameters` of the trial.
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
        return make_norm(norm, groups=groups, axis=axis, **(
            self.adaptive_batch_kwargs if norm == "adaptive_batch" else {}))

    # -- reporting -------------------------------------------------------------

    def describe(self, hp):
        """The regularization chosen in `hp`, in words.

        Args:
            hp: A `keras_tuner.HyperParameters` (e.g.
                `tuner.get_best_hyperparameters()[0]`) or a dict of values.

        Returns:
            A string such as `"dense dropout 0.42, group norm (4 groups)"`.
        """
        if hasattr(hp, "values") and hasattr(hp, "is_active"):
            values = {k: v for k, v in hp.values.items() if hp.is_active(k)}
        else:
            values = dict(hp)
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
        return ", ".join(words)

    def get_config(self):
        return {
            "dropout_ranges": {role: list(r) for role, r in self.dropout_ranges.items()},
            "norms": list(self.norms),
            "default_norm": self.default_norm,
            "groups": list(self.groups),
            "step": self.step,
            "adaptive_batch_kwargs": dict(self.adaptive_batch_kwargs),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dropout_ranges"] = {k: tuple(v) for k, v in config["dropout_ranges"].items()}
        config["norms"] = tuple(config["norms"])
        config["groups"] = tuple(config["groups"])
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
        if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
            raise ValueError(
                "Invalid value received for argument `groups`. Expected a positive "
                f"integer with norm='group'. Received: groups={groups!r}"
            )
        return keras.layers.GroupNormalization(groups=int(groups), axis=axis, **kwargs)
    if norm == "instance":
        # GroupNormalization with one group per channel is instance normalization.
        return keras.layers.GroupNormalization(groups=-1, axis=axis, **kwargs)
    return keras.layers.Identity(**kwargs)
