"""Adapt a trained model's batch normalization to unlabeled target data.

`adapt_batchnorm(model, data)` re-estimates every batch norm's statistics on the
data the model will meet (AdaBN); `method="tent"` also tunes their scale and shift
to make the predictions confident (Tent). `set_test_time_mode` switches every
`AdaptiveBatchNormalization` of a model to a test-time mode.
"""

import contextlib
import dataclasses
import threading

import keras
import numpy as np
from keras import ops

from kreg import _keras_compat
from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg.layers.adaptive_batch_normalization import TEST_TIME_MODES
from kreg.layers.adaptive_batch_normalization import AdaptiveBatchNormalization
from kreg.layers.batch_statistics import batch_moments
from kreg.layers.batch_statistics import in_statistics_dtype
from kreg.layers.batch_statistics import normalize

METHODS = ("reestimate", "tent")


@dataclasses.dataclass
class LayerChange:
    """How one batch norm layer's statistics moved."""

    name: str
    mean_shift: float  # mean |new - old| moving mean, in units of the old std
    variance_ratio: float  # mean new / old moving variance


@dataclasses.dataclass
class AdaptationReport:
    """What `adapt_batchnorm` changed."""

    method: str
    samples: int  # samples in the data the statistics come from
    layers: list  # [LayerChange], in the order the layers are found in the model
    affine_updated: bool  # whether scale and shift were trained (tent)

    def __str__(self):
        lines = [
            f"adapt_batchnorm(method={self.method!r}): {len(self.layers)} batch norm "
            f"layer(s), statistics from {self.samples} samples"
            + (", scale and shift trained by entropy minimization" if self.affine_updated else "")
        ]
        for change in self.layers:
            lines.append(
                f"  {change.name}: mean moved {change.mean_shift:.3f} std, "
                f"variance x{change.variance_ratio:.3f}"
            )
        return "\n".join(lines)


def batch_norm_layers(model):
    """Every `BatchNormalization` (kreg's included) inside `model`, nested ones too."""
    return [
        layer
        for layer in _keras_compat.all_sublayers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def set_test_time_mode(model, mode):
    """Switches every `AdaptiveBatchNormalization` in `model` to `mode`.

    Takes effect on the next call or `predict`, with no re-tracing. Keras's own
    `BatchNormalization` layers are not changed.

    Args:
        model: A Keras model (or layer) containing `AdaptiveBatchNormalization`s.
        mode: One of `"running"`, `"batch"`, `"mixed"`, `"online"`.

    Returns:
        The number of layers switched.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), AdaptiveBatchNormalization()])
    >>> set_test_time_mode(model, "batch")
    1
    """
    check_choice("mode", mode, TEST_TIME_MODES)
    layers = [
        layer
        for layer in _keras_compat.all_sublayers(model)
        if isinstance(layer, AdaptiveBatchNormalization)
    ]
    if not layers:
        raise ValueError(
            f"`{model.name}` has no `AdaptiveBatchNormalization` layer to switch to "
            f"mode {mode!r}. Build the model with kreg.layers.AdaptiveBatchNormalization, "
            "or use kreg.adapt_batchnorm, which adapts any batch norm."
        )
    for layer in layers:
        layer.test_time_mode = mode
    return len(layers)


def adapt_batchnorm(
    model,
    data,
    method="reestimate",
    steps=None,
    batch_size=None,
    verbose="auto",
    epochs=1,
    learning_rate=1e-3,
    from_logits=False,
):
    """Adapts a trained model's batch norms to unlabeled target data, in place.

    `"reestimate"` (AdaBN) replaces the moving mean and variance of every
    `BatchNormalization` in the model (Keras's and kreg's, nested models too) by
    the exact mean and variance of its inputs over `data`, in one pass. During the
    pass each batch norm normalizes with its batch's statistics, as in training,
    so that each layer's statistics are those of inputs normalized by statistics
    of the target data, not the stale source ones. No other weight changes.

    `"tent"` first trains only the batch norms' scale and shift (`gamma`,
    `beta`) to minimize the entropy of the model's predictions on `data`, with
    batch statistics, for `epochs` passes; then re-estimates the statistics as
    above, so the adapted model needs no special inference mode.

    The model is changed only when the whole adaptation has succeeded: if it
    fails midway (bad data, an interrupt), every weight is as it was.

    Under a `tf.distribute` strategy the statistics are those of all replicas'
    samples together, the same as on one device.

    Args:
        model: A built Keras model with at least one batch norm layer.
        data: What `model.predict` accepts: arrays, a `tf.data.Dataset`, a
            `keras.utils.PyDataset`. Targets in the data are ignored.
        method: `"reestimate"` (default) or `"tent"`.
        steps: Optional number of batches to use per pass, as in `predict`.
        batch_size: Optional batch size for array data (default 32, as `predict`).
        verbose: Progress bar, as in `predict` / `fit`.
        epochs: `"tent"` only: passes of entropy minimization. Defaults to 1.
        learning_rate: `"tent"` only: Adam's learning rate. Defaults to `1e-3`.
        from_logits: `"tent"` only: whether the model outputs logits (else
            probabilities, as after a softmax or, for one unit, a sigmoid). The
            entropy is that of the first output of a multi-output model.

    Returns:
        An `AdaptationReport`: the method, the number of samples, and how much
        each layer's statistics moved.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    >>> target = np.random.default_rng(0).normal(5.0, 2.0, (256, 3))
    >>> report = adapt_batchnorm(model, target, verbose=0)
    >>> moving_mean = keras.ops.convert_to_numpy(model.layers[0].moving_mean)
    >>> np.allclose(moving_mean, target.mean(axis=0))
    True

    Reference:
        - [Li et al., 2016](https://arxiv.org/abs/1603.04779), AdaBN.
        - [Wang et al., 2021](https://arxiv.org/abs/2006.10726), Tent: fully
          test-time adaptation by entropy minimization.
    """
    check_choice("method", method, METHODS)
    check_at_least("epochs", epochs, integer=True, minimum=1)
    if check_at_least("learning_rate", learning_rate) == 0:
        raise ValueError(
            "Invalid value received for argument `learning_rate`. Expected a number > 0. "
            "Received: learning_rate=0"
        )
    if not isinstance(model, keras.Model) or not model.built:
        raise TypeError(
            "Invalid value received for argument `model`. Expected a built "
            f"`keras.Model`. Received: model={model!r}"
        )
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(
            f"The model `{model.name}` has no BatchNormalization layer: there are no "
            "statistics for adapt_batchnorm to adapt."
        )
    # Every variable, not only the batch norms': on JAX, a `predict` or `fit` that
    # raises midway leaves all of the model's variables emptied (Keras moves them
    # into the compiled function's state and puts them back only at the end).
    if _is_empty(data):
        raise _no_data_error()
    saved = [ops.convert_to_numpy(v) for v in model.variables]
    predict_options = dict(steps=steps, batch_size=batch_size, verbose=verbose)
    try:
        if method == "tent":
            _minimize_entropy(model, layers, data, epochs, learning_rate, from_logits, predict_options)
        statistics, samples = _collect_statistics(model, layers, data, predict_options)
    except BaseException:
        for variable, value in zip(model.variables, saved):
            variable.assign(value)
        raise
    changes = []
    for layer, (mean, variance, _) in zip(layers, statistics):
        old_mean, old_variance = (ops.convert_to_numpy(v) for v in (layer.moving_mean, layer.moving_variance))
        _assign_statistics(layer, mean, variance)
        old_std = np.sqrt(old_variance + layer.epsilon)
        changes.append(
            LayerChange(
                name=layer.path,
                mean_shift=float(np.mean(np.abs(mean - old_mean) / old_std)),
                variance_ratio=float(np.mean((variance + layer.epsilon) / (old_variance + layer.epsilon))),
            )
        )
    return AdaptationReport(
        method=method,
        samples=samples,
        layers=changes,
        affine_updated=method == "tent",
    )


def _assign_statistics(layer, mean, variance):
    layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
    layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
    if layer.renorm:
        # Batch renormalization also keeps the standard deviation, with epsilon in
        # it (Keras sets moving_variance = moving_stddev**2 - epsilon), and its own
        # training-time averages, which restart from the new statistics.
        stddev = np.sqrt(variance + layer.epsilon)
        layer.moving_stddev.assign(stddev.astype(layer.moving_stddev.dtype))
        layer.renorm_mean.assign(mean.astype(layer.renorm_mean.dtype))
        layer.renorm_stddev.assign(stddev.astype(layer.renorm_stddev.dtype))


# Both methods run the model with every batch norm normalizing by its batch's
# statistics, whatever its mode or training flag, and the rest of the model in
# inference mode (dropout off). Each batch norm's `call` is replaced for the
# duration; `_keras_compat.call_replaced` restores it.


def _replicated(model):
    """Whether the model runs on several replicas of a `tf.distribute` strategy."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy is not None and strategy.num_replicas_in_sync > 1


def _strategy_scope(model):
    """The model's strategy scope, for the helper models built around it."""
    return model.distribute_strategy.scope() if _replicated(model) else contextlib.nullcontext()


def _normalize_with_batch_statistics(layer, inputs, mask, synchronized):
    """`layer`'s output with its batch's statistics; also returns the local ones."""
    inputs = in_statistics_dtype(inputs)
    mean, variance, count = batch_moments(inputs, layer.axis, mask)
    norm_mean, norm_variance = mean, variance
    if synchronized and mask is None:
        # All replicas normalize with the global batch's statistics, so the layers
        # after this one see what they would see on one device.
        norm_mean, norm_variance, _ = batch_moments(inputs, layer.axis, synchronized=True)
    return normalize(layer, inputs, norm_mean, norm_variance), (mean, variance, count)


class _Recorder(threading.local):
    """The statistics each batch norm call computed, per thread.

    Under `tf.distribute.MirroredStrategy` every replica runs the model in its own
    thread at the same time, so each keeps its own record.
    """

    calls = None  # [(layer, (mean, variance, count))] while recording


@contextlib.contextmanager
def _batch_statistics_used(model, layers, recorder=None):
    """Makes every batch norm in `layers` normalize with its batch's statistics.

    Entered once around the whole `predict` / `fit`, not inside a replica's call:
    replicas run concurrently and must not swap the layers' `call` under each other.
    """
    synchronized = _replicated(model)

    def batch_statistics_call(layer):
        def call(inputs, training=None, mask=None):
            outputs, moments = _normalize_with_batch_statistics(layer, inputs, mask, synchronized)
            if recorder is not None and recorder.calls is not None:
                recorder.calls.append((layer, moments))
            return outputs

        return call

    with contextlib.ExitStack() as stack:
        for layer in layers:
            stack.enter_context(_keras_compat.call_replaced(layer, batch_statistics_call(layer)))
        yield


class _StatisticsCollector(keras.Model):
    """Outputs, per batch, every batch norm's input statistics (not the prediction).

    Running it through `predict` keeps Keras's handling of every data type,
    progress bar, compilation and distribution. Each statistic is shaped
    `(1, channels)`, so `predict` stacks them into one row per batch (per replica,
    under a strategy). Keys are `"<layer index>/<call index>/<statistic>"`: a
    shared layer is called more than once per batch. Run it inside
    `_batch_statistics_used(model, layers, collector.recorder)`.
    """

    def __init__(self, model, layers):
        super().__init__(name=f"{model.name}_statistics")
        self.model = model
        self.bn_layers = layers
        self.recorder = _Recorder()
        self.built = True

    def call(self, inputs):
        self.recorder.calls = []
        try:
            self.model(inputs, training=False)
            record = self.recorder.calls
        finally:
            self.recorder.calls = None
        index_of = {id(layer): i for i, layer in enumerate(self.bn_layers)}
        batch_size = ops.shape(keras.tree.flatten(inputs)[0])[0]
        outputs, calls = {"samples": ops.reshape(batch_size, (1, 1))}, {}
        for layer, (mean, variance, count) in record:
            index = index_of[id(layer)]
            call = calls[index] = calls.get(index, -1) + 1
            outputs[f"{index}/{call}/mean"] = mean[None]
            outputs[f"{index}/{call}/variance"] = variance[None]
            outputs[f"{index}/{call}/count"] = ops.reshape(count, (1, 1))
        return outputs


class _CachedCollector:
    """Holds a model's collector. A plain object on purpose: Keras's saving walks
    every attribute of a model that is a Keras object, and a collector (a model
    containing the model) reached that way would recurse forever."""

    def __init__(self, collector, layers):
        self.collector = collector
        self.layer_ids = tuple(id(layer) for layer in layers)


def _statistics_collector(model, layers):
    """The model's collector, made once so that its compiled `predict` is reused:
    adapting the same model again, as a stream of target data comes in, costs one
    `predict`, not one trace and one `predict`. Rebuilt when the model's batch
    norms change (a layer added to a Sequential model)."""
    cached = getattr(model, "_kreg_statistics_collector", None)
    if cached is None or cached.layer_ids != tuple(id(layer) for layer in layers):
        with _strategy_scope(model):
            cached = _CachedCollector(_StatisticsCollector(model, layers), layers)
        object.__setattr__(model, "_kreg_statistics_collector", cached)
    return cached.collector


def _combine(means, variances, counts):
    """Exact mean and population variance of the union of the batches (Chan et al.)."""
    means, variances, counts = (np.asarray(a, np.float64) for a in (means, variances, counts))
    counts = counts.reshape(-1, 1)
    total = counts.sum()
    if total == 0:
        return means[0], variances[0], total
    mean = (counts * means).sum(axis=0) / total
    # Sum of squares about the global mean: within-batch plus between-batch parts.
    squares = (counts * (variances + np.square(means - mean))).sum(axis=0)
    return mean, squares / total, total


def _no_data_error():
    return ValueError(
        "adapt_batchnorm received data that yields no batch: there is nothing to "
        "estimate statistics from."
    )


def _is_empty(data):
    """Whether `data` certainly yields nothing (arrays, PyDataset, tf.data)."""
    if isinstance(data, keras.utils.PyDataset):
        try:
            return data.num_batches == 0  # None when unknown
        except (TypeError, NotImplementedError):
            return False
    cardinality = getattr(data, "cardinality", None)  # a tf.data.Dataset
    if callable(cardinality):
        return int(cardinality()) == 0
    leaves = keras.tree.flatten(data)
    shape = getattr(leaves[0], "shape", None) if leaves else None
    return bool(shape) and shape[0] == 0


class _BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_predict_batch_end(self, batch, logs=None):
        self.batches += 1


def _collect_statistics(model, layers, data, predict_options):
    """`[(mean, variance, count)]` over `data` for each of `layers`, in float64,
    and the number of samples seen."""
    collector = _statistics_collector(model, layers)
    counter = _BatchCounter()
    try:
        with _batch_statistics_used(model, layers, collector.recorder):
            outputs = collector.predict(data, callbacks=[counter], **predict_options)
    except UnboundLocalError as error:
        # What Keras 3.15's `predict` raises when the data runs out before the
        # first batch (`batch_outputs` is never set).
        if counter.batches == 0:
            raise _no_data_error() from error
        raise
    statistics = []
    samples = int(np.sum(outputs["samples"]))
    for index, layer in enumerate(layers):
        calls = sorted({key.split("/")[1] for key in outputs if key.startswith(f"{index}/")})
        if not calls:
            raise ValueError(
                f"The batch norm layer `{layer.path}` is never called when `{model.name}` "
                "runs, so adapt_batchnorm cannot estimate its statistics."
            )
        mean, variance, count = _combine(
            *(
                np.concatenate([outputs[f"{index}/{call}/{name}"] for call in calls])
                for name in ("mean", "variance", "count")
            )
        )
        if count == 0:
            raise ValueError(
                f"Every position the batch norm layer `{layer.path}` saw in the data was "
                "masked: there are no values to estimate its statistics from."
            )
        statistics.append((mean, variance, count))
    return statistics, samples


class _EntropyMinimizer(keras.Model):
    """Trains the wrapped model's batch norm scale and shift to minimize entropy."""

    def __init__(self, model, from_logits):
        super().__init__(name=f"{model.name}_tent")
        self.model = model
        self.from_logits = from_logits
        self.built = True

    def call(self, inputs, training=False):
        # Dropout stays off; the batch norms use batch statistics (see `fit` below).
        return self.model(inputs, training=False)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # The first output (of a multi-output model, in Keras's flattening order)
        # is taken as the classifier's.
        outputs = ops.cast(keras.tree.flatten(y_pred)[0], "float32")
        if outputs.shape[-1] == 1:
            # One sigmoid unit: the entropy of the two classes (1 - p, p).
            p = ops.sigmoid(outputs) if self.from_logits else outputs
            probabilities = ops.concatenate([1.0 - p, p], axis=-1)
        elif self.from_logits:
            probabilities = ops.softmax(outputs, axis=-1)
        else:
            probabilities = outputs
        log_probabilities = ops.log(ops.clip(probabilities, 1e-7, 1.0))
        return -ops.mean(ops.sum(probabilities * log_probabilities, axis=-1))


@contextlib.contextmanager
def _only_batch_norm_affine_trainable(model, layers):
    """Freezes every trainable variable of `model` but the batch norms' gamma and beta.

    Works on variables, not layers: a composite layer set `trainable=False` would
    also freeze a batch norm inside it. A batch norm that is itself frozen
    (`trainable=False`) keeps its scale and shift.
    """
    affine = {id(v) for layer in layers for v in (layer.gamma, layer.beta) if v is not None}
    frozen = [v for v in model.trainable_weights if id(v) not in affine]
    if len(frozen) == len(model.trainable_weights):
        raise ValueError(
            f"method='tent' trains the batch norms' scale and shift, but `{model.name}` "
            "has none that is trainable (every batch norm has trainable=False, or "
            "center=False and scale=False). Use method='reestimate'."
        )
    for variable in frozen:
        variable.trainable = False
    try:
        yield
    finally:
        for variable in frozen:
            variable.trainable = True


def _minimize_entropy(model, layers, data, epochs, learning_rate, from_logits, predict_options):
    with (
        _only_batch_norm_affine_trainable(model, layers),
        _batch_statistics_used(model, layers),
        _strategy_scope(model),
    ):
        minimizer = _EntropyMinimizer(model, from_logits)
        minimizer.compile(optimizer=keras.optimizers.Adam(learning_rate))
        minimizer.fit(
            data,
            epochs=epochs,
            steps_per_epoch=predict_options["steps"],
            batch_size=predict_options["batch_size"],
            verbose=predict_options["verbose"],
            shuffle=False,
        )
