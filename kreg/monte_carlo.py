"""Monte-Carlo dropout: predictions with uncertainty, dropout on, all else inference."""

import contextlib
import dataclasses
import zlib

import keras
import numpy as np
from keras import ops
from keras import tree

from kreg._keras_compat import all_sublayers
from kreg._keras_compat import call_replaced
from kreg._validation import check_at_least
from kreg.layers import ConsistentDropout
from kreg.layers import EmbeddingDropout
from kreg.layers import WeightDropGRU
from kreg.layers import WeightDropLSTM
from kreg.layers import ZoneoutGRU
from kreg.layers import ZoneoutLSTM

# Layers whose `training=True` means "drop" and nothing else. Keras's spatial
# dropouts subclass `Dropout`; `MultiHeadAttention` and keras-hub blocks hold a
# `Dropout` inside, which is found as a sublayer.
DROPOUT_LAYERS = (
    keras.layers.Dropout,
    keras.layers.AlphaDropout,
    keras.layers.GaussianDropout,
    ConsistentDropout,
    EmbeddingDropout,
    WeightDropLSTM,
    WeightDropGRU,
    ZoneoutLSTM,
    ZoneoutGRU,
)

# Below this, entropies treat a probability as 0 (0 * log 0 = 0).
_TINY = 1e-12


@dataclasses.dataclass
class MonteCarloPrediction:
    """What `mc_predict` returns; arrays have the model's output shape.

    Attributes:
        mean: The mean prediction over the samples (probabilities when the
            model outputs logits and `from_logits=True`).
        variance: The variance of the prediction over the samples.
        predictive_entropy: Entropy of the mean prediction, in nats, per sample
            (the output shape without its last axis): total uncertainty. `None`
            when the outputs are not class probabilities (regression).
        mutual_information: Predictive entropy minus the mean entropy of the
            single predictions (BALD): the part of the uncertainty that comes
            from the model's weights, which more data would reduce. `None` as
            above.
        samples: The single predictions, shape `(samples, *output_shape)`, when
            `return_samples=True`; else `None`.
        dropout_layers: Paths of the layers that ran with dropout on.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dropout(0.5, name="drop"),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> result = mc_predict(model, np.ones((2, 4)), samples=8, seed=0)
    >>> result.variance.shape, result.dropout_layers
    ((2, 3), ['drop'])
    """

    mean: np.ndarray
    variance: np.ndarray
    predictive_entropy: np.ndarray = None
    mutual_information: np.ndarray = None
    samples: np.ndarray = None
    dropout_layers: list = dataclasses.field(default_factory=list)


def _has_recurrent_dropout(layer):
    """A Keras RNN layer whose cell (or one of its stacked cells) drops."""
    if not isinstance(layer, keras.layers.RNN):
        return False
    cells = getattr(layer.cell, "cells", [layer.cell])
    return any(
        getattr(cell, "dropout", 0.0) or getattr(cell, "recurrent_dropout", 0.0) for cell in cells
    )


def dropout_layers(model):
    """The layers of `model`, at any depth, that `mc_predict` runs in training mode.

    Dropout layers (Keras's and kreg's, also inside other layers), kreg's
    weight-dropped and zoneout RNNs, and Keras RNN layers with `dropout` or
    `recurrent_dropout` on their cell. Nothing else: batch norm, a layer's
    other training behaviour, and RNNs without dropout stay in inference mode.
    """
    return [
        layer
        for layer in all_sublayers(model)
        if isinstance(layer, DROPOUT_LAYERS) or _has_recurrent_dropout(layer)
    ]


def _always_training(layer):
    call = layer.call

    def call_in_training_mode(*args, **kwargs):
        kwargs["training"] = True
        return call(*args, **kwargs)

    return call_in_training_mode


def _seed_states(model):
    """The state variable of every `keras.random.SeedGenerator` in the model."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def _assign_all(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


@contextlib.contextmanager
def _global_torch_generator_seeded(seed):
    """On torch, also seeds (and afterwards restores) torch's global generator.

    Keras's torch `dropout` for a layer built without a seed draws from torch's
    global generator, not from the layer's `SeedGenerator` (a faster path,
    `keras/src/backend/torch/random.py`), so seeding the generators alone would
    not make the masks reproducible there.
    """
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _entropy(probabilities):
    p = ops.clip(probabilities, _TINY, 1.0)
    if probabilities.shape[-1] == 1:  # a sigmoid output: the Bernoulli entropy
        q = ops.clip(1.0 - probabilities, _TINY, 1.0)
        return -ops.squeeze(probabilities * ops.log(p) + (1.0 - probabilities) * ops.log(q), -1)
    return -ops.sum(probabilities * ops.log(p), axis=-1)


class _Sampler(keras.Model):
    """Runs the model `samples` times on each batch, in one traced function."""

    def __init__(self, model, samples, from_logits, return_samples):
        super().__init__(name="mc_sampler")
        self.model = model
        self.samples = samples
        self.from_logits = from_logits
        self.return_samples = return_samples

    def _prediction(self, x):
        y = self.model(x, training=False)
        if tree.is_nested(y):
            if len(tree.flatten(y)) != 1:
                raise ValueError(
                    "mc_predict expects a model with one output. Received a model with "
                    f"{len(tree.flatten(y))} outputs; wrap it in a model that returns one."
                )
            y = tree.flatten(y)[0]
        y = ops.cast(y, "float32")
        if self.from_logits:
            y = ops.sigmoid(y) if y.shape[-1] == 1 else ops.softmax(y, axis=-1)
        return y

    def call(self, x):
        predictions = [self._prediction(x) for _ in range(self.samples)]
        if self.return_samples:
            return ops.stack(predictions, axis=1)  # (batch, samples, ...) for predict
        mean = sum(predictions) / self.samples
        mean_square = sum(ops.square(p) for p in predictions) / self.samples
        mean_entropy = sum(_entropy(p) for p in predictions) / self.samples
        return mean, mean_square, mean_entropy


def _are_probabilities(mean, from_logits):
    if from_logits:
        return True
    if mean.size == 0 or mean.min() < -1e-6 or mean.max() > 1 + 1e-6:
        return False
    return mean.shape[-1] == 1 or np.allclose(mean.sum(axis=-1), 1.0, atol=1e-3)


def _no_samples_error(received):
    return ValueError(
        "Invalid value received for argument `x`. Expected at least one "
        f"sample to predict. Received: {received}"
    )


def _check_not_empty(x):
    """Arrays (or nested arrays) with no rows, or an empty list: Keras's `predict`
    would fail on them with an `UnboundLocalError` (it never assigns a batch's
    outputs) or a `KeyError` (its data adapter finds no array)."""
    if isinstance(x, (list, tuple, dict)) and not tree.flatten(x):
        raise _no_samples_error(f"x={x!r}")
    for leaf in tree.flatten(x):
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape) > 0 and shape[0] == 0:
            raise _no_samples_error(f"x with shape {tuple(shape)}")


def _predict_some(sampler, x, batch_size, verbose):
    """`sampler.predict`, with a clear error for a dataset that yields no batch.

    Keras's `predict` then reads its never-assigned `batch_outputs` (an
    `UnboundLocalError`, keras/src/backend/*/trainer.py), or on JAX lets the
    `StopIteration` of the batch it builds the model on escape
    (keras/src/backend/jax/trainer.py).
    """
    try:
        return sampler.predict(x, batch_size=batch_size, verbose=verbose)
    except (UnboundLocalError, StopIteration) as error:
        if isinstance(error, UnboundLocalError) and "batch_outputs" not in str(error):
            raise
        raise _no_samples_error(f"x={x!r}, which yielded no batch") from None


def mc_predict(
    model,
    x,
    samples=30,
    batch_size=None,
    seed=None,
    from_logits=False,
    return_samples=False,
    verbose=0,
):
    """Monte-Carlo dropout predictions: the mean and its uncertainty.

    Runs `model` `samples` times on `x` with dropout active and every other
    layer in inference mode: batch norm uses its moving statistics, and any
    other `training` behaviour stays off. This is what calling the model with
    `training=True` by hand gets wrong: that also switches batch norm to the
    statistics of the test batch. Only the layers listed by
    `kreg.monte_carlo.dropout_layers(model)` run in training mode: Keras's
    dropout layers (also inside attention and other composite layers), Keras RNNs
    with `dropout`/`recurrent_dropout`, and kreg's dropout layers. kreg's
    sequence layers keep their masks consistent across timesteps as in
    training (`ConsistentDropout`: one mask per sequence; `WeightDropLSTM`: one
    recurrent-kernel mask per batch or per group; `EmbeddingDropout`: one set
    of dropped ids per batch).

    All samples of a batch run in one compiled function (the model is traced
    `samples` times into it), built once per call of `mc_predict`. The model
    itself is left as it was: its layers, its own predict function and, when
    `seed` is given, the state of its random generators.

    Args:
        model: A Keras model with one output.
        x: Inputs, anything `model.predict` accepts (arrays, a `tf.data`
            dataset, a `PyDataset`).
        samples: Positive integer, the number of stochastic forward passes.
        batch_size: Integer, as in `model.predict` (default 32).
        seed: Integer, optional. With a seed, the dropout masks are the same at
            every call (the model's random generators are seeded for the call
            and restored afterwards); without, each call draws new ones.
        from_logits: Whether the model outputs logits (softmax, or sigmoid for
            one unit, is applied to each sample before averaging).
        return_samples: Whether to also return every single prediction.
        verbose: As in `model.predict`.

    Returns:
        A `MonteCarloPrediction` with `mean`, `variance`, `predictive_entropy`
        and `mutual_information` (entropies in nats; `None` when the outputs
        are not class probabilities), `samples` and `dropout_layers`.

    Raises:
        ValueError: If the model has no dropout layer (every sample would be
            the same), or several outputs, or `samples` is not a positive
            integer, or `x` holds no samples.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu"),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.Dropout(0.5),
    ...     keras.layers.Dense(3, activation="softmax"),
    ... ])
    >>> result = mc_predict(model, np.ones((5, 4)), samples=20, seed=0)
    >>> result.mean.shape, result.predictive_entropy.shape
    ((5, 3), (5,))
    >>> bool(np.all(result.mutual_information >= -1e-6))
    True

    Reference:
        - [Gal & Ghahramani, 2016](https://arxiv.org/abs/1506.02142), Dropout
          as a Bayesian Approximation: Representing Model Uncertainty in Deep
          Learning.
        - [Houlsby et al., 2011](https://arxiv.org/abs/1112.5745), the mutual
          information between prediction and weights (BALD).
    """
    samples = check_at_least("samples", samples, integer=True, minimum=1)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"mc_predict expects a keras.Model. Received: model={model!r} "
            f"(of type {type(model).__name__})"
        )
    if seed is not None:
        seed = check_at_least("seed", seed, integer=True, minimum=0)
    _check_not_empty(x)
    layers = dropout_layers(model)
    if not layers:
        raise ValueError(
            "mc_predict found no dropout layer in the model, so every sample would be "
            "the same prediction. Monte-Carlo dropout needs dropout layers (Keras's "
            "Dropout family, RNN dropout, kreg's dropout layers)."
        )
    sampler = _Sampler(model, samples, from_logits, return_samples)
    states = _seed_states(model)
    saved = [ops.convert_to_numpy(state) for state in states] if seed is not None else []
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(_global_torch_generator_seeded(seed))
            stack.callback(_assign_all, states, saved)  # restored on the way out
            for index, state in enumerate(states):
                # A distinct, reproducible stream for every generator.
                stream = zlib.crc32(f"{seed}/{index}".encode()) & 0x7FFFFFFF
                state.assign(np.array([stream, 0]).astype(saved[index].dtype))
        for layer in layers:
            stack.enter_context(call_replaced(layer, _always_training(layer)))
        outputs = _predict_some(sampler, x, batch_size, verbose)

    paths = [layer.name for layer in layers]
    if return_samples:
        drawn = np.moveaxis(np.asarray(outputs), 1, 0)
        mean = drawn.mean(axis=0)
        mean_square = np.mean(np.square(drawn), axis=0)
        mean_entropy = np.mean(
            [ops.convert_to_numpy(_entropy(ops.convert_to_tensor(d))) for d in drawn], axis=0
        )
    else:
        drawn = None
        mean, mean_square, mean_entropy = (np.asarray(o) for o in outputs)
    result = MonteCarloPrediction(
        mean=mean,
        variance=np.maximum(mean_square - np.square(mean), 0.0),
        samples=drawn,
        dropout_layers=paths,
    )
    if _are_probabilities(mean, from_logits):
        entropy = ops.convert_to_numpy(_entropy(ops.convert_to_tensor(mean)))
        result.predictive_entropy = entropy
        result.mutual_information = np.maximum(entropy - mean_entropy, 0.0)
    return result
