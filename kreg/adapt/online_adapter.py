"""`OnlineAdapter`: batch norm adaptation for data that arrives one batch at a time."""

import dataclasses
import inspect

import keras
import numpy as np
from keras import ops

from kreg import _keras_compat
from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_positive
from kreg._validation import check_rate
from kreg.adapt.batch_check import ON_INVALID
from kreg.adapt.batch_check import NonFiniteStatisticsError
from kreg.adapt.batch_check import invalid_batch_error
from kreg.adapt.batch_check import is_finite_batch
from kreg.adapt.eata import AffineStepper
from kreg.adapt.eata import SampleSelection
from kreg.adapt.entropy import check_from_logits
from kreg.adapt.label_shift import SOURCE_LIKE_DISTANCE
from kreg.adapt.label_shift import few_classes_batch
from kreg.adapt.reestimation import assign_statistics
from kreg.adapt.reestimation import call_order
from kreg.adapt.reestimation import collect_statistics
from kreg.adapt.reestimation import pool_layer_statistics
from kreg.adapt.robust import SHIFT_POOLS
from kreg.adapt.robust import SHIFT_TESTS
from kreg.adapt.robust import WARM_STARTS
from kreg.adapt.robust import RobustAdaptation
from kreg.layers.batch_statistics import combine_statistics
from kreg.layers.batch_statistics import mixed_stored_weight
from kreg.model_graph import batch_norm_layers

ONLINE_METHODS = ("none", "batch", "mixed", "online", "reestimate", "tent", "eata", "robust")
# Adam's learning rate of the entropy steps when `learning_rate` is not given.
# `"robust"`: 0, statistics only, chosen on the tuning half of
# bench/adaptation_grid.py (docs/BENCHMARKS.md).
DEFAULT_LEARNING_RATES = {"tent": 1e-3, "eata": 1e-3, "robust": 0.0}
RESETS = (None, "batch", "stream")
MEMORY_FILLS = ("rotta", "note")
# The methods that predict with the batch norms' stored statistics after
# updating them from the batch (the others normalize with the batch's own).
_STATISTICS_METHODS = ("mixed", "online", "reestimate")
# The methods that read each method-specific argument. Another method given a
# value other than the argument's default would run exactly as without it, so
# the value is refused rather than silently ignored.
METHOD_ARGUMENTS = {
    "learning_rate": ("tent", "eata", "robust"),
    "from_logits": ("tent", "eata", "robust"),
    "entropy_factor": ("eata", "robust"),
    "redundancy_threshold": ("eata",),
    "collapse_factor": ("eata", "robust"),
    "prior_strength": ("mixed",),
    "online_momentum": ("online",),
    "label_shift_ratio": ("eata",),
    "memory_size": ("robust",),
    "statistics_momentum": ("robust",),
    "memory_fill": ("robust",),
    "shift_distance": ("robust",),
    "shift_test": ("robust",),
    "shift_pool": ("robust",),
    "statistics_warm_start": ("robust",),
}


@dataclasses.dataclass(frozen=True)
class AdapterSnapshot:
    """An `OnlineAdapter`'s state: every batch norm's weights, and its own running state."""

    method: str  # the adapter's method: a snapshot restores only into the same method
    model: str  # the adapted model's name
    weights: dict  # batch norm path -> [its weights as NumPy arrays] (scale, shift, statistics)
    state: tuple  # the method's running state (averages, optimizer slots, accumulated statistics)
    # `id()` of the adapted model: two models built by the same code have the same
    # batch norm paths and shapes (and often the same name), not the same state.
    model_id: int = dataclasses.field(default=None, repr=False)


class OnlineAdapter:
    """Adapts a model's batch norms to a stream of unlabeled batches as it predicts.

    `predict_on_batch(x)` returns the model's predictions on `x` and moves the
    adaptation on by that batch; the model itself is changed in place (its
    batch norms' statistics, and for `"tent"` / `"eata"` their scale and
    shift), so `reset()` or `restore(snapshot)` is how to go back. What each
    method does with a batch:

    - `"none"`: predicts with the model as it is.
    - `"batch"`: normalizes with the batch's own statistics (prediction-time
      BN); nothing is kept from batch to batch.
    - `"mixed"`: normalizes with `N / (N + n)` of the source statistics and
      `n / (N + n)` of the batch's (`N = prior_strength`, `n` samples); nothing
      is kept.
    - `"online"`: moves the statistics towards the batch's,
      `stored = online_momentum * stored + (1 - online_momentum) * batch`, then
      predicts with them.
    - `"reestimate"`: the exact statistics of every batch seen since the last
      reset (AdaBN over the stream so far), then predicts with them.
    - `"tent"`: predicts with the batch's statistics, then takes one step of
      entropy minimization on the scale and shift (Tent).
    - `"robust"` (default): predicts with the stored statistics, and never
      with the batch's own; each sample goes into a class-balanced memory bank
      (RoTTA's, by predicted class, with timeliness and uncertainty), and every
      `memory_size` samples the stored statistics move towards the bank's by
      an exponential average (`statistics_momentum`; after a shift, after a
      warm start), and,
      with `learning_rate` > 0, the scale and shift take one entropy step on the
      bank's reliable samples, weighted by their age (EATA's filter, SAR's
      reset). A batch of one class, or of one sample, cannot bend it. A
      covariate shift (the first batch norm after a convolution further from
      its statistics than a class moves it, `shift_distance`), tested before
      each batch once 16 samples have come since the last test, replaces the
      statistics at once with those of the samples since the last update,
      before the batch is predicted. On `bench/adaptation_grid.py`'s held-out
      cells (3 seeds, batch 16 and 64) it had the best mean of the methods,
      and was at worst 1.04 points below no adaptation (docs/BENCHMARKS.md).
      `kreg/adapt/robust.py` says which parts of RoTTA, NOTE, DELTA, EATA and
      SAR it takes and why.
    - `"eata"`: the same as `"tent"` with EATA's filters and weights, and SAR's collapse
      guard (see `kreg.adapt_batchnorm`): when the filtered entropy collapses,
      back to the source state. A batch that looks like source inputs of few
      classes (see below) is predicted with the stored statistics and not
      learned from.

    `"tent"` and `"eata"` predict with the state before the batch's update (as
    their published code does): a batch's own update serves the batches after
    it. The statistics methods update first and then predict. The statistics
    of `"mixed"`, `"online"` and `"reestimate"` come from one pass with every
    batch norm normalizing with the batch's statistics (as `adapt_batchnorm`
    computes them). A batch norm that sees one value per channel (a batch of
    one sample before a dense layer's batch norm) has no variance to estimate:
    it normalizes with its stored statistics in every method, and keeps them
    (`"reestimate"` pools the batch in exactly and uses the pooled statistics
    once they hold two values per channel).

    The statistics methods never collapse on batches that hold one or two
    classes, but `"batch"` and `"tent"` do: their predictions come from the
    statistics of that one batch, which normalize every sample against its own
    class. `"eata"` tells such a batch from a shifted one by where its
    statistics move (`kreg/adapt/label_shift.py`): a corruption of the inputs
    moves the first batch norm's input away from its stored statistics, a batch
    of few classes mostly the last one's (first and last in the order the model
    calls them, nested models included). When the first batch norm's distance
    is below `label_shift_ratio` times the last one's, and small in itself
    (below that of a 1.5x change of the variance), the batch is predicted by
    the model as it is (its stored statistics, the scale and shift learned so
    far), and skipped by the entropy step and the collapse watch;
    `few_classes_batches` counts such batches. This costs one more forward
    pass per batch (the batch's statistics at every batch norm), and needs two
    batch norms or more (with one, every batch is adapted to). A batch of one
    sample is tested too: a batch norm after a dense layer then sees one value
    per channel, variance 0, as far from the stored statistics as it gets. In
    a model whose first batch norm already sees class-specific features (a
    dense network on a few input features, say), a batch of few classes moves
    it as well and is adapted to, as before the test.

    Args:
        model: A built Keras model with at least one batch norm layer (Keras's
            `BatchNormalization`, kreg's `AdaptiveBatchNormalization`, the
            batch norms inside kreg's fused layers).
        method: One of `"none"`, `"batch"`, `"mixed"`, `"online"`,
            `"reestimate"`, `"tent"`, `"eata"`, `"robust"` (default). The
            arguments below that name their methods are read by those only:
            set away from its default with another method, such an argument
            is a `ValueError` (it would change nothing).
        reset: `None` (default) adapts continually; `"batch"` goes back to the
            source state after every batch (episodic); `"stream"` goes back at
            the start of every `predict(data)` call (one stream per call).
        learning_rate: `"tent"` / `"eata"` / `"robust"`: Adam's learning rate
            of the entropy steps. Defaults to `1e-3` for tent and eata, and to
            `DEFAULT_LEARNING_RATES["robust"]` for robust (`0`: statistics
            only; chosen on the tuning half of the grid benchmark).
        from_logits: `"tent"` / `"eata"` / `"robust"`: whether the model
            outputs logits. Checked against the model's last activation where
            it is known (a softmax or sigmoid: probabilities; a linear `Dense`:
            logits).
        entropy_factor, redundancy_threshold, collapse_factor: `"eata"`: as in
            `kreg.adapt_batchnorm`. `entropy_factor` and `collapse_factor` also
            `"robust"` with a `learning_rate` above 0 (they filter its entropy
            steps), refused with robust's default `0`.
        prior_strength: `"mixed"`: `N`, the number of samples the source
            statistics count as. Defaults to `16`.
        online_momentum: `"online"`: in `[0, 1)`. Defaults to `0.9`.
        memory_size: `"robust"`: the samples the memory bank holds, and the
            number of samples between two updates. Defaults to `64` (RoTTA's).
        statistics_momentum: `"robust"`: the share of the bank's statistics
            in each update once warm (RoTTA's `alpha`). Defaults to `0.05`.
        statistics_warm_start: `"robust"`: which stored statistics the bank's
            first updates move faster, weighing the bank as a running average
            would, down to `statistics_momentum`. `"shift"` (default): only
            those a shift wrote (`shift_distance`), counted as the samples it
            pooled; the model's own follow `statistics_momentum` from the
            first update, as in RoTTA (chosen on the tuning half of
            `bench/adaptation_grid.py`: on clean streams of few classes the
            warm start from the source cost up to 3.1 points). `"source"`:
            also the model's, counted as one full bank (the first updates
            take `1/2, 1/3...` of a full bank's statistics; the default
            before, it follows a weak corruption faster). `None`:
            `statistics_momentum` always.
        memory_fill: `"robust"`: how the memory bank fills, `"rotta"` (a class
            holds at most `memory_size / classes` samples) or `"note"` (full
            from the start, balanced by replacement); see
            `kreg/adapt/memory_bank.py`.
        shift_distance: `"robust"`: a distance (> 0) of the first batch
            norm's input from its stored statistics (the measure of
            `kreg/adapt/label_shift.py`; `math.log(1.5)` is a 1.5x change of
            the variance) beyond which the samples since the last update (every
            `memory_size` samples) count as shifted inputs, not as a few
            classes: their statistics then replace the stored ones at once,
            instead of `statistics_momentum` of the bank's, and the bank is
            emptied. `"auto"` (default): `math.log(1.5)`. `None`: no shift test
            (RoTTA's slow update only, without the test's passes). A model
            whose first batch norm follows a dense layer never shifts (the
            test still runs). See `kreg/adapt/robust.py`.
        shift_test: `"robust"` with a `shift_distance`: when the shift test
            runs. `"batch"` (default): before each batch that brings the
            samples since the last update past a multiple of 16 (of
            `memory_size` when smaller: then as `"window"`), and before the
            batch that completes `memory_size` of them, on those samples (this
            batch included): a shift writes their statistics before the batch
            is predicted, empties the bank and starts a new window, and later
            windows close to those statistics are pooled in the same way (each
            counted as an update) until `memory_size` samples are. At most one
            test per 16 samples of the stream when `memory_size` is a multiple
            of 16 (one more per `memory_size` otherwise). A test runs the
            layers before the first batch norm on the samples no test has seen
            (`kreg/adapt/input_moments.py`; the whole model on them where the
            model's graph gives no such part, a subclassed model, or on the
            window where their moments do not pool exactly, a first batch norm
            called twice), and a shift the whole model on its window.
            `"window"`: once per `memory_size` samples only, before the batch
            that completes them is predicted (fewer tests at batch sizes 4 to
            32; the first batches of a new corruption are then predicted with
            the last one's statistics).
        shift_pool: `"robust"` with a `shift_distance`: what the statistics of
            a shifted window are pooled with. `"close"` (default): none; a
            shifted window is further than `shift_distance` from the stored
            statistics, which are the open pool's, so it starts a new pool
            (another corruption), and only the close windows of
            `shift_test="batch"` are pooled in. `"consecutive"`: those of the
            shifted windows (and of the close windows pooled in) since the
            stream last settled (a window due for an update found close to the
            stored statistics), whatever their distance.
        on_invalid: What a batch holding NaN or inf does, and a finite one
            the adaptation finds not finite (values whose squares overflow
            float32, a model that overflows on them): `"raise"` (default)
            raises a `ValueError` naming the batch's index (counted from 0 over
            the adapter's life) and leaves the model and the adapter's running
            state as they were (`"robust"`: when its memory bank's update, or
            the whole pass over a shifted window, fails on samples of earlier
            batches, those added since the last update are dropped from the
            bank and the window); `"skip"` predicts it with the model as
            it is, adapts to nothing of it, and counts it in `skipped_batches`.
            Either way it never changes the model. An empty batch, one of
            another structure or shape than the model's input, or of values
            that are not real numbers (strings, complex), is always an error.
            Ignored by `"none"`.
        label_shift_ratio: `"eata"`: the threshold on the ratio of the first
            to the last batch norm's distance from the stored statistics below
            which a batch is taken as source inputs of few classes (see above).
            `None` adapts to every batch. Defaults to `0.5`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    >>> adapter = OnlineAdapter(model, method="reestimate")
    >>> stream = np.random.default_rng(0).normal(5.0, 2.0, (4, 32, 3))
    >>> predictions = [adapter.predict_on_batch(batch) for batch in stream]
    >>> moving_mean = keras.ops.convert_to_numpy(model.layers[0].moving_mean)
    >>> bool(np.allclose(moving_mean, stream.reshape(-1, 3).mean(axis=0)))
    True
    >>> adapter.reset()  # back to the source statistics
    >>> keras.ops.convert_to_numpy(model.layers[0].moving_mean).tolist()
    [0.0, 0.0, 0.0]

    Reference:
        - [Schneider et al., 2020](https://arxiv.org/abs/2006.16971), mixed
          source and target statistics.
        - [Wang et al., 2021](https://arxiv.org/abs/2006.10726), Tent.
        - [Niu et al., 2022](https://arxiv.org/abs/2204.02610), EATA.
        - [Niu et al., 2023](https://arxiv.org/abs/2302.12400), SAR.
        - [Lim et al., 2023](https://arxiv.org/abs/2302.05155), TTN: batch
          norm layers differ in their sensitivity to a domain shift.
    """

    def __init__(
        self,
        model,
        method="robust",
        reset=None,
        learning_rate=None,
        from_logits=False,
        entropy_factor=0.4,
        redundancy_threshold=0.4,
        collapse_factor=0.03,
        prior_strength=16,
        online_momentum=0.9,
        label_shift_ratio=0.5,
        on_invalid="raise",
        memory_size=64,
        statistics_momentum=0.05,
        memory_fill="rotta",
        shift_distance="auto",
        shift_test="batch",
        shift_pool="close",
        statistics_warm_start="shift",
    ):
        if not isinstance(model, keras.Model) or not model.built:
            raise TypeError(
                "Invalid value received for argument `model`. Expected a built "
                f"`keras.Model`. Received: model={model!r}"
            )
        self.method = check_choice("method", method, ONLINE_METHODS)
        _check_method_arguments(self.method, locals())
        self.reset_mode = check_choice("reset", reset, RESETS)
        self.on_invalid = check_choice("on_invalid", on_invalid, ON_INVALID)
        if learning_rate is None:
            learning_rate = DEFAULT_LEARNING_RATES.get(self.method, 1e-3)
        elif check_at_least("learning_rate", learning_rate) == 0 and self.method != "robust":
            raise ValueError(
                "Invalid value received for argument `learning_rate`. Expected a number > 0 "
                "(0, no entropy step, only with method='robust'). Received: learning_rate=0"
            )
        self.learning_rate = learning_rate
        if self.method == "robust" and learning_rate == 0:
            # No entropy step (robust's default): the sample filter and the
            # collapse watch that read these never run (`RobustAdaptation`).
            for name, value in (
                ("entropy_factor", entropy_factor),
                ("collapse_factor", collapse_factor),
            ):
                read_by = "method='eata', and by method='robust' with learning_rate > 0"
                _refuse_if_set(name, value, read_by, "method='robust' and learning_rate=0")
        self.memory_size = check_at_least("memory_size", memory_size, integer=True, minimum=2)
        self.statistics_momentum = check_rate("statistics_momentum", statistics_momentum)
        self.memory_fill = check_choice("memory_fill", memory_fill, MEMORY_FILLS)
        self.statistics_warm_start = check_choice(
            "statistics_warm_start", statistics_warm_start, WARM_STARTS
        )
        if isinstance(shift_distance, str):
            if shift_distance != "auto":
                raise ValueError(
                    "Invalid value received for argument `shift_distance`. Expected 'auto', "
                    f"a finite number > 0 or None. Received: shift_distance={shift_distance!r}"
                )
            # The shift test on, at `label_shift.py`'s bound for source-like
            # low-level statistics: the pre-registered rule's choice on the
            # tuning half of `bench/adaptation_grid.py` (docs/BENCHMARKS.md).
            shift_distance = SOURCE_LIKE_DISTANCE
        self.shift_distance = check_positive("shift_distance", shift_distance, optional=True)
        self.shift_test = check_choice("shift_test", shift_test, SHIFT_TESTS)
        self.shift_pool = check_choice("shift_pool", shift_pool, SHIFT_POOLS)
        if self.shift_distance is None:
            for name, value in (("shift_test", shift_test), ("shift_pool", shift_pool)):
                _refuse_if_set(name, value, "a shift test (shift_distance)", "shift_distance=None")
        self.prior_strength = float(check_at_least("prior_strength", prior_strength))
        self.online_momentum = check_rate("online_momentum", online_momentum)
        self.label_shift_ratio = check_positive(
            "label_shift_ratio", label_shift_ratio, optional=True
        )
        self.selection = SampleSelection(entropy_factor, redundancy_threshold, collapse_factor)
        self.model = model
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ValueError(
                f"The model `{model.name}` has no BatchNormalization layer: there is "
                "nothing for OnlineAdapter to adapt."
            )
        self.collapse_resets = 0
        self.few_classes_batches = 0
        self.skipped_batches = 0  # batches holding NaN or inf, with on_invalid="skip"
        self.batches_seen = 0
        self._accumulated = None  # "reestimate": [(mean, variance, count)] so far
        self._stepper = None
        self._robust = None
        if method in ("tent", "eata", "robust"):
            check_from_logits(model, from_logits)
        if method == "robust":
            self._robust = RobustAdaptation(
                model,
                self.layers,
                self.memory_size,
                self.statistics_momentum,
                learning_rate,
                from_logits,
                SampleSelection(entropy_factor, None, collapse_factor),
                self.memory_fill,
                self.shift_distance,
                self.shift_test,
                self.shift_pool,
                self.statistics_warm_start,
            )
        if method in ("batch", "tent", "eata"):
            self._stepper = AffineStepper(
                model, self.layers, learning_rate, from_logits, method, train=method != "batch"
            )
        self._source = self.snapshot()

    def _weights(self):
        return {
            layer.path: [ops.convert_to_numpy(w).copy() for w in layer.weights]
            for layer in self.layers
        }

    def snapshot(self):
        """Every batch norm's weights and the adapter's running state, as an `AdapterSnapshot`."""
        optimizer = (
            self._stepper.optimizer_state()
            if self._stepper is not None and self._stepper.train
            else None
        )
        robust = self._robust.state() if self._robust is not None else None
        state = (
            self.selection.state(),
            optimizer,
            self._accumulated,
            self.collapse_resets,
            self.few_classes_batches,
            robust,
        )
        return AdapterSnapshot(
            method=self.method,
            model=self.model.name,
            weights=self._weights(),
            state=state,
            model_id=id(self.model),
        )

    def restore(self, snapshot):
        """Puts back exactly the state `snapshot()` returned.

        Refuses (a `ValueError`, nothing changed) a snapshot of another method, or
        of another model than this adapter's (one built by the same code too).
        """
        if not isinstance(snapshot, AdapterSnapshot):
            raise ValueError(
                "Invalid value received for argument `snapshot`. Expected what an "
                f"`OnlineAdapter`'s `snapshot()` returns. Received: snapshot={snapshot!r:.200}"
            )
        if snapshot.method != self.method:
            raise ValueError(
                f"Invalid value received for argument `snapshot`: it was taken by an "
                f"adapter with method={snapshot.method!r}, and this adapter's method is "
                f"{self.method!r}: its running state means something else here."
            )
        current = self._weights()
        if current.keys() != snapshot.weights.keys() or any(
            [w.shape for w in current[path]] != [w.shape for w in snapshot.weights[path]]
            for path in current
        ):
            raise ValueError(
                f"Invalid value received for argument `snapshot`: it holds the batch norms "
                f"of the model `{snapshot.model}`, which differ from those of `{self.model.name}` "
                "this adapter adapts."
            )
        if snapshot.model_id != id(self.model):
            raise ValueError(
                f"Invalid value received for argument `snapshot`: it was taken of another "
                f"model (`{snapshot.model}`) than the one this adapter adapts "
                f"(`{self.model.name}`), even if their batch norms have the same paths and "
                "shapes: its weights and running state belong to that model."
            )
        for layer in self.layers:
            for variable, value in zip(layer.weights, snapshot.weights[layer.path]):
                variable.assign(value)
        (
            selection,
            optimizer,
            self._accumulated,
            self.collapse_resets,
            self.few_classes_batches,
            robust,
        ) = snapshot.state
        self.selection.set_state(selection)
        if robust is not None:
            self._robust.set_state(robust)
        if optimizer is not None:
            self._stepper.set_optimizer_state(optimizer)

    def reset(self):
        """Back to the source state: the weights the adapter found, no running state."""
        counts = self.collapse_resets, self.few_classes_batches
        self.restore(self._source)
        self.collapse_resets, self.few_classes_batches = counts  # kept over the adapter's life

    def predict_on_batch(self, x):
        """The predictions on one batch `x`; adapts by it (see the class description)."""
        index = self.batches_seen
        self.batches_seen += 1
        finite = is_finite_batch(self.model, x, index)
        if finite or self.method == "none":
            try:
                outputs = self._adapt_and_predict(x)
            except NonFiniteStatisticsError as error:
                # Raised before anything was written: the model and the
                # adapter's running state are as they were before the batch.
                return self._refuse(x, index, error)
        else:
            return self._refuse(x, index)
        if self.reset_mode == "batch":
            self.reset()
        return outputs

    def _refuse(self, x, index, cause=None):
        """`on_invalid` for batch `index`, which holds NaN or inf, or gave `cause`."""
        if self.on_invalid == "raise":
            raise invalid_batch_error(index, cause) from cause
        self.skipped_batches += 1
        return self.model.predict_on_batch(x)

    def predict(self, data, batch_size=None, steps=None):
        """`predict_on_batch` on each batch of `data` in order; the outputs concatenated.

        `data` is what `model.predict` takes (arrays, `tf.data`, `PyDataset`).
        With `reset="stream"` the adapter goes back to the source state first.
        """
        if self.reset_mode == "stream":
            self.reset()
        outputs = [
            self.predict_on_batch(x) for x in _keras_compat.numpy_batches(data, batch_size, steps)
        ]
        if not outputs:
            raise ValueError("OnlineAdapter.predict received data that yields no batch.")
        return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)

    def _adapt_and_predict(self, x):
        if self.method == "none":
            return self.model.predict_on_batch(x)
        if self.method in _STATISTICS_METHODS:
            return self._predict_with_updated_statistics(x)
        if self.method == "robust":
            outputs, collapsed = self._robust.predict_and_adapt(x)
            if collapsed:
                self.reset()
                self.collapse_resets += 1
            return outputs
        if self.method == "eata" and self._few_classes(x):
            self.few_classes_batches += 1
            return self.model.predict_on_batch(x)
        outputs, probabilities = self._stepper.predict(x)
        if not np.all(np.isfinite(probabilities)):
            # The model overflows on the batch: a step would write NaN into
            # every scale and shift.
            raise NonFiniteStatisticsError(
                "the model's outputs with the batch's statistics are not finite"
            )
        if self.method == "tent":
            self._stepper.step(x)
        elif self.method == "eata":
            weights, entropy = self.selection.weights(probabilities)
            if weights.any():
                self._stepper.step(x, weights)
            if self.selection.collapsed(weights, entropy):
                self.reset()
                self.collapse_resets += 1
        return outputs

    def _batch_statistics(self, x):
        # A layer that sees one value per channel (a batch of one before a dense
        # layer's batch norm) reports variance 0 here; it keeps its statistics.
        options = dict(steps=None, batch_size=len(keras.tree.flatten(x)[0]), verbose=0)
        return collect_statistics(self.model, self.layers, x, options, need_variance=False)

    def _few_classes(self, x):
        if self.label_shift_ratio is None or len(self.layers) < 2:
            return False
        # A batch of one sample leaves a batch norm after a dense layer one
        # value per channel: variance 0, as far from the stored statistics as a
        # batch gets (and as one-class as a batch gets).
        batch, _ = self._batch_statistics(x)
        order = call_order(self.model, self.layers)
        return few_classes_batch(
            [self.layers[i] for i in order], [batch[i] for i in order], self.label_shift_ratio
        )

    def _predict_with_updated_statistics(self, x):
        batch, samples = self._batch_statistics(x)
        # The statistics as they were (batch renormalization's own averages
        # too): put back after the prediction (`"mixed"`), or when the model
        # overflows on the batch with the updated ones.
        before = [
            (variable, ops.convert_to_numpy(variable).copy())
            for layer in self.layers
            for variable in layer.non_trainable_weights
        ]
        values = {id(variable): value for variable, value in before}
        stored = [
            (
                values[id(layer.moving_mean)].astype("float64"),
                values[id(layer.moving_variance)].astype("float64"),
            )
            for layer in self.layers
        ]
        if self.method == "reestimate":
            batch = pool_layer_statistics(self._accumulated, batch)
            new = [(mean, variance) for mean, variance, _ in batch]
        else:
            keep = (
                mixed_stored_weight(self.prior_strength, samples)
                if self.method == "mixed"
                else self.online_momentum
            )
            new = [
                combine_statistics(keep, old, (mean, variance))
                for old, (mean, variance, _) in zip(stored, batch)
            ]
        # Fewer than two values per channel so far: no variance to use yet.
        new = [
            update if count > 1 else old for update, old, (_, _, count) in zip(new, stored, batch)
        ]
        for layer, (mean, variance) in zip(self.layers, new):
            assign_statistics(layer, mean, variance)
        outputs = self.model.predict_on_batch(x)
        finite = all(
            np.all(np.isfinite(ops.convert_to_numpy(leaf))) for leaf in keras.tree.flatten(outputs)
        )
        if self.method == "mixed" or not finite:  # "mixed": nothing kept from batch to batch
            for variable, value in before:
                variable.assign(value)
        if not finite:
            raise NonFiniteStatisticsError(
                "the model's outputs with the updated statistics are not finite"
            )
        if self.method == "reestimate":
            self._accumulated = batch
        return outputs


def _check_method_arguments(method, arguments):
    """Refuses a method-specific argument, set away from its default, that `method` never reads."""
    for name, readers in METHOD_ARGUMENTS.items():
        if method not in readers:
            read_by = f"method={' / '.join(map(repr, readers))}"
            _refuse_if_set(name, arguments[name], read_by, f"method={method!r}")


def _refuse_if_set(name, value, read_by, here):
    default = inspect.signature(OnlineAdapter.__init__).parameters[name].default
    if value != default:
        raise ValueError(
            f"Invalid value received for argument `{name}`. It is read only by {read_by}; "
            f"with {here} it would change nothing, so leave it at its default ({default!r}). "
            f"Received: {name}={value!r}"
        )
