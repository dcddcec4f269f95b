"""PreciseBatchNorm: exact batch norm statistics for every validation during `fit`."""

import collections.abc
import time
import warnings

import keras
import numpy as np

from kreg._keras_compat import numpy_batches
from kreg._validation import check_at_least
from kreg.adapt.batch_check import check_data_arrays
from kreg.adapt.reestimation import assign_statistics
from kreg.adapt.reestimation import collect_statistics
from kreg.adapt.reestimation import is_arrays
from kreg.adapt.reestimation import is_empty
from kreg.adapt.reestimation import no_data_error
from kreg.model_graph import batch_norm_layers


@keras.saving.register_keras_serializable(package="kreg")
class PreciseBatchNorm(keras.callbacks.Callback):
    """Re-estimates every batch norm's statistics exactly, before validation.

    A batch norm's moving statistics are an exponential average over training
    steps taken with ever-changing weights: with `momentum=0.99` they need a few
    hundred steps to forget, so on a small training set (ten steps per epoch) the
    statistics used by validation and `predict` are those of weights long gone,
    and the validation curve measures that lag, not the model. This callback
    replaces them at the end of every `every_n_epochs`-th epoch, before that
    epoch's validation, by the exact statistics of the current weights over
    `data` (the training data): the one-pass estimate of `kreg.adapt_batchnorm`,
    with each batch norm normalizing by its batch's statistics as in training.
    The last epoch's statistics are re-estimated too (at the end of training if
    that epoch was not due), so the trained model leaves `fit` with them.

    Training itself is unchanged: it normalizes with batch statistics, and the
    moving statistics carry on from the re-estimated values. Batch norms with
    `trainable=False` (frozen, as in fine-tuning) are left alone. Every
    `keras.layers.BatchNormalization` is re-estimated, kreg's
    `AdaptiveBatchNormalization` and fused layers (`Conv2DBatchNorm`...) and
    nested and shared layers included. Under a `tf.distribute` strategy the
    statistics are those of all replicas' samples together.

    Cost: one inference pass over `steps` batches of `data` per re-estimation.
    The estimate of the first batch norm is exact at any batch size, so a large
    `batch_size` (the whole training set, when it fits) makes the pass cheapest.

    Args:
        data: The samples to estimate from, as `model.predict` takes them: an
            array (or a structure of arrays) of inputs, a `tf.data.Dataset` or a
            `keras.utils.PyDataset` (targets in it are ignored), or a generator
            function, called for a fresh generator at every re-estimation. A
            generator object is refused: it is used up by the first one. Usually
            the training inputs. Not part of `get_config`. One array is checked
            when `fit` starts, before training: another shape than the
            model's input, values that are not real numbers, NaN or inf are an
            error then, not after the first epoch.
        steps: Optional number of batches per re-estimation (`K` of Wu & Johnson).
            Defaults to all of `data`. With arrays, each re-estimation draws a new
            random subset of `steps * batch_size` samples; a dataset yields its
            first `steps` batches (shuffle it for a new subset each time). A
            `data` that repeats forever needs `steps`.
        batch_size: Batch size for array `data`. Defaults to 32, as `predict`.
        every_n_epochs: Positive integer: re-estimate at the end of every
            `every_n_epochs`-th epoch. Defaults to 1.
        seed: Optional integer, the seed of the random subsets of array data.
        verbose: 0 (silent, default) or 1 (one line per re-estimation).

    Example:

    >>> from kreg.callbacks import PreciseBatchNorm
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, (64, 4)).astype("float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(),
    ...                           keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> precise = PreciseBatchNorm(x, batch_size=64)
    >>> _ = model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[precise])
    >>> moving_mean = keras.ops.convert_to_numpy(model.layers[0].moving_mean)
    >>> bool(np.allclose(moving_mean, x.mean(axis=0), atol=1e-4))
    True

    Reference:
        - [Wu & Johnson, 2021](https://arxiv.org/abs/2105.07576), Rethinking
          "Batch" in BatchNorm: precise batch norm statistics (PreciseBN), as in
          fvcore's `update_bn_stats` and detectron2's `PreciseBN` hook.
    """

    def __init__(self, data, steps=None, batch_size=None, every_n_epochs=1, seed=None, verbose=0):
        super().__init__()
        self.data = data
        self.steps = (
            None if steps is None else check_at_least("steps", steps, integer=True, minimum=1)
        )
        self.batch_size = (
            None
            if batch_size is None
            else check_at_least("batch_size", batch_size, integer=True, minimum=1)
        )
        self.every_n_epochs = check_at_least(
            "every_n_epochs", every_n_epochs, integer=True, minimum=1
        )
        # A NumPy seed (0 included), not a tuner's.
        self.seed = None if seed is None else check_at_least("seed", seed, integer=True, minimum=0)
        self.verbose = check_at_least("verbose", verbose, integer=True)
        if isinstance(data, collections.abc.Iterator):
            # A generator object is used up by the first estimate: the second
            # epoch would find no batch.
            raise ValueError(
                "Invalid value received for argument `data`. It is a one-shot iterator "
                f"({type(data).__name__}), used up after one estimate. Pass data that can be "
                "read again: arrays, a tf.data.Dataset, a keras.utils.PyDataset, or the "
                f"generator function itself (uncalled). Received: data={type(data).__name__}"
            )
        if is_empty(_readable(data)):
            raise no_data_error()
        # A dataset, PyDataset or generator is read once here: what `fit` would
        # only find at the first estimate (no batch, single samples) is found now.
        self._batch_shapes = None if is_arrays(data) else _first_batch_shapes(data)
        if _repeats_forever(data) and steps is None:
            raise ValueError(
                "Invalid value received for argument `steps`. `data` repeats forever, "
                "so PreciseBatchNorm needs the number of batches to estimate from. "
                "Received: steps=None"
            )
        self._rng = np.random.default_rng(seed)
        self._epoch = None
        self._estimated_epoch = None  # the last epoch whose weights were estimated
        self._in_fit = False

    def on_train_begin(self, logs=None):
        if not batch_norm_layers(self.model):
            warnings.warn(
                "PreciseBatchNorm: the model has no batch norm layer, so there are no "
                "statistics to re-estimate; this callback does nothing.",
                stacklevel=2,
            )
        self._check_batched()
        self._in_fit = True
        self._epoch = self._estimated_epoch = None

    def _check_batched(self):
        """A `ValueError` where `data` yields single samples (an unbatched
        `tf.data.Dataset`, a generator of one sample at a time): each input is a
        rank below the model's; a `ValueError` or `TypeError` for an array the
        model cannot take (another shape, strings)."""
        inputs = getattr(self.model, "inputs", None)
        if isinstance(self.data, np.ndarray):
            # Found now, not after an epoch of training: the checks of a
            # stream's batches (Keras's errors name neither argument nor array).
            check_data_arrays(self.model, self.data)
        if self._batch_shapes is None or not inputs:
            return
        expected = [tuple(keras.ops.shape(tensor)) for tensor in keras.tree.flatten(inputs)]
        if len(expected) == len(self._batch_shapes) and all(
            len(shape) == len(wanted) - 1 for shape, wanted in zip(self._batch_shapes, expected)
        ):
            raise _unbatched_error(
                self.data, self._batch_shapes, f"the model takes inputs of shape(s) {expected}"
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_test_begin(self, logs=None):
        # `fit` calls `evaluate` (which starts with this) before `on_epoch_end`.
        if self._in_fit and self._due(self._epoch):
            self._reestimate()

    def on_epoch_end(self, epoch, logs=None):
        if self._due(epoch):
            self._reestimate()

    def on_train_end(self, logs=None):
        if self._epoch is not None and self._estimated_epoch != self._epoch:
            self._reestimate()
        self._in_fit = False

    def _due(self, epoch):
        return (
            epoch is not None
            and self._estimated_epoch != epoch
            and (epoch + 1) % self.every_n_epochs == 0
        )

    def _reestimate(self):
        start = time.perf_counter()
        layers = [layer for layer in batch_norm_layers(self.model) if layer.trainable]
        if layers:
            options = dict(steps=self.steps, batch_size=self.batch_size, verbose=0)
            data = _readable(self.data)
            if self.steps is not None and is_arrays(data):
                data = _random_subset(data, self.steps * (self.batch_size or 32), self._rng)
                options["steps"] = None
            statistics, samples = collect_statistics(self.model, layers, data, options)
            for layer, (mean, variance, _) in zip(layers, statistics):
                assign_statistics(layer, mean, variance)
            if self.verbose:
                print(
                    f"PreciseBatchNorm: {len(layers)} batch norm(s) re-estimated from {samples} "
                    f"samples in {time.perf_counter() - start:.2f}s"
                )
        self._estimated_epoch = self._epoch

    def get_config(self):
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "every_n_epochs": self.every_n_epochs,
            "seed": self.seed,
            "verbose": self.verbose,
        }

    def __deepcopy__(self, memo):
        # keras-tuner gives each trial a deep copy of the search's callbacks: the
        # copy shares the data (a dataset cannot be copied, an array need not be).
        return type(self)(self.data, **self.get_config())


def _readable(data):
    """`data` as the estimate reads it: a generator function is called for a
    fresh generator at every estimate."""
    if callable(data) and not isinstance(
        data, (collections.abc.Iterable, collections.abc.Sequence)
    ):
        return data()
    return data


def _unbatched_error(data, shapes, because):
    return ValueError(
        "Invalid value received for argument `data`. It yields single samples, not "
        f"batches: its first element has input shape(s) {shapes}, and {because}. Batch it "
        "(`dataset.batch(32)`, or a generator that yields several samples at a time). "
        f"Received: data={type(data).__name__}"
    )


def _first_batch_shapes(data):
    """The shapes of the input arrays of `data`'s first batch (the batch is not kept)."""
    readable = _readable(data)
    if readable is not data:  # a generator function's generator
        first = next(iter(readable), None)
        if first is None:
            raise no_data_error()
        if not isinstance(first, tuple):
            # Keras's generator adapter refuses it with the whole batch in its message.
            raise ValueError(
                "Invalid value received for argument `data`. Its generator yields "
                f"{type(first).__name__} objects; Keras reads a generator of tuples: yield "
                "`(inputs,)` (or `(inputs, targets)`). Received: "
                f"data={getattr(data, '__name__', type(data).__name__)}"
            )
        batches = [keras.utils.unpack_x_y_sample_weight(first)[0]]
    else:
        batches = numpy_batches(readable, steps=1)
    for inputs in batches:
        shapes = [tuple(np.shape(leaf)) for leaf in keras.tree.flatten(inputs)]
        if any(len(shape) == 0 for shape in shapes):
            raise _unbatched_error(data, shapes, "a batch needs at least one axis, the samples'")
        return shapes
    raise no_data_error()


def _random_subset(data, size, rng):
    samples = keras.tree.flatten(data)[0].shape[0]
    if size >= samples:
        return data
    rows = np.sort(rng.choice(samples, size, replace=False))
    return keras.tree.map_structure(lambda leaf: leaf[rows], data)


def _repeats_forever(data):
    cardinality = getattr(data, "cardinality", None)  # a tf.data.Dataset
    return callable(cardinality) and int(cardinality()) == -1  # tf.data.INFINITE_CARDINALITY
