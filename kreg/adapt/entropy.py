"""Test-time entropy minimization on the batch norms' scale and shift (Tent)."""

import contextlib

import keras
from keras import ops

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


def minimize_entropy(model, layers, data, epochs, learning_rate, from_logits, predict_options):
    with (
        _only_batch_norm_affine_trainable(model, layers),
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
