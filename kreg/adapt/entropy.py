"""Test-time entropy minimization on the batch norms' scale and shift (Tent)."""

import contextlib

import keras
import numpy as np
from keras import ops

from kreg import _keras_compat
from kreg.adapt.batch_statistics_pass import batch_statistics_used
from kreg.adapt.batch_statistics_pass import strategy_scope


class EntropyMinimizer(keras.Model):
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
        entropy = prediction_entropy(y_pred, self.from_logits)
        if sample_weight is None:
            return ops.mean(entropy)
        # Weighted mean over the samples kept (weight > 0), as EATA's loss is the
        # mean over its reliable samples of their weighted entropies.
        sample_weight = ops.cast(sample_weight, "float32")
        kept = ops.sum(ops.cast(sample_weight > 0, "float32"))
        return ops.sum(sample_weight * entropy) / ops.maximum(kept, 1.0)


def class_probabilities(y_pred, from_logits):
    """The class probabilities of a model's output, `(batch, classes)`, float32.

    The first output (of a multi-output model, in Keras's flattening order) is
    taken as the classifier's. One sigmoid unit gives the two classes `(1 - p, p)`.
    NumPy outputs (what `predict_on_batch` returns) give NumPy, computed in
    NumPy: the round trip through the backend cost about 0.1 ms a batch, half
    of a one-sample `predict_on_batch` on JAX (bench/adaptation_cost.py).
    """
    outputs = keras.tree.flatten(y_pred)[0]
    if isinstance(outputs, np.ndarray):
        return _numpy_class_probabilities(outputs, from_logits)
    outputs = ops.cast(outputs, "float32")
    if outputs.shape[-1] == 1:
        p = ops.sigmoid(outputs) if from_logits else outputs
        return ops.concatenate([1.0 - p, p], axis=-1)
    return ops.softmax(outputs, axis=-1) if from_logits else outputs


def _numpy_class_probabilities(outputs, from_logits):
    """`class_probabilities` of NumPy outputs, in NumPy.

    No NumPy `RuntimeWarning` on what a model can overflow to (TensorFlow's
    ops give none): float64 beyond float32's range (inf once cast), `exp(-x)`
    of a very negative logit (inf: p = 0), an infinite logit (`inf - inf`: a
    row of NaN, as the backends' softmax gives).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        outputs = outputs.astype("float32")
        if outputs.shape[-1] == 1:
            p = 1.0 / (1.0 + np.exp(-outputs)) if from_logits else outputs
            return np.concatenate([1.0 - p, p], axis=-1)
        if not from_logits:
            return outputs
        exponentials = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        return exponentials / exponentials.sum(axis=-1, keepdims=True)


_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def outputs_probabilities(model):
    """Whether the first output of `model` is probabilities (`True`: a softmax
    or sigmoid last: a layer's activation, a `Softmax` layer or a
    `keras.ops.softmax` / `keras.ops.sigmoid` call), logits (`False`: a linear
    last layer) or unknown (`None`: a subclassed model, another `ops` call,
    another activation)."""
    try:
        output = keras.tree.flatten(model.outputs)[0]
        operation, _, _ = _keras_compat.tensor_history(output)
    except (AttributeError, IndexError, ValueError):
        return None
    if isinstance(operation, keras.Model):
        return outputs_probabilities(operation)
    if isinstance(operation, (keras.layers.Softmax, *_keras_compat.PROBABILITY_OPERATIONS)):
        return True
    activation = getattr(operation, "activation", None)
    name = getattr(activation, "__name__", None)
    if name in _PROBABILITY_ACTIVATIONS:
        return True
    if name == "linear" and isinstance(operation, (keras.layers.Dense, keras.layers.EinsumDense)):
        return False
    return None


def check_from_logits(model, from_logits):
    """Refuses a `from_logits` that contradicts `model`'s last activation, where it is known."""
    probabilities = outputs_probabilities(model)
    if probabilities is None or probabilities != bool(from_logits):
        return
    if from_logits:
        raise ValueError(
            f"Invalid value received for argument `from_logits`. `{model.name}` ends in a "
            "softmax or sigmoid, so it outputs probabilities: expected from_logits=False. "
            "Received: from_logits=True"
        )
    raise ValueError(
        f"Invalid value received for argument `from_logits`. `{model.name}` ends in a "
        "linear layer, so it outputs logits: expected from_logits=True. "
        "Received: from_logits=False"
    )


def prediction_entropy(y_pred, from_logits):
    """The entropy (nats) of each sample's predicted class distribution, `(batch,)`."""
    # A tensor also for NumPy outputs, which `class_probabilities` keeps in
    # NumPy: on torch a NumPy array times a tensor is a TypeError.
    probabilities = ops.convert_to_tensor(class_probabilities(y_pred, from_logits))
    log_probabilities = ops.log(ops.clip(probabilities, 1e-7, 1.0))
    return -ops.sum(probabilities * log_probabilities, axis=-1)


@contextlib.contextmanager
def only_batch_norm_affine_trainable(model, layers, method="tent"):
    """Freezes every trainable variable of `model` but the batch norms' gamma and beta.

    Works on variables, not layers: a composite layer set `trainable=False` would
    also freeze a batch norm inside it. A batch norm that is itself frozen
    (`trainable=False`) keeps its scale and shift.
    """
    affine = {id(v) for layer in layers for v in (layer.gamma, layer.beta) if v is not None}
    frozen = [v for v in model.trainable_weights if id(v) not in affine]
    if len(frozen) == len(model.trainable_weights):
        raise ValueError(
            f"method={method!r} trains the batch norms' scale and shift, but `{model.name}` "
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


def minimize_entropy(model, layers, data, epochs, learning_rate, from_logits, predict_options):
    with (
        only_batch_norm_affine_trainable(model, layers),
        batch_statistics_used(model, layers),
        strategy_scope(model),
    ):
        minimizer = EntropyMinimizer(model, from_logits)
        minimizer.compile(optimizer=keras.optimizers.Adam(learning_rate))
        minimizer.fit(
            data,
            epochs=epochs,
            steps_per_epoch=predict_options["steps"],
            batch_size=predict_options["batch_size"],
            verbose=predict_options["verbose"],
            shuffle=False,
        )
