"""Sparse categorical cross-entropy with label smoothing, for integer labels."""

import keras

from kreg._validation import check_rate


@keras.saving.register_keras_serializable(package="kreg")
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against class probabilities, with label smoothing.

    Keras's `SparseCategoricalCrossentropy` has no `label_smoothing`; its
    `CategoricalCrossentropy` has one but wants one-hot labels. This loss
    one-hot encodes the integer labels (as many classes as `y_pred` has) and
    applies `keras.losses.categorical_crossentropy` with the smoothing, so a
    model compiled for `sparse_categorical_crossentropy` keeps its labels.
    With `label_smoothing=0` it equals Keras's sparse loss.

    Args:
        label_smoothing: Float in `[0, 1)`: the targets become
            `(1 - label_smoothing) * one_hot + label_smoothing / num_classes`.
            Defaults to 0.
        from_logits: Whether `y_pred` holds logits. Defaults to `False`.
        reduction: As in every Keras loss. Defaults to `"sum_over_batch_size"`.
        name: Optional name. Defaults to
            `"sparse_categorical_crossentropy_with_label_smoothing"`.
        dtype: Optional dtype of the loss computation.

    Call arguments:
        y_true: Integer class indices, shape `(batch,)` or `(batch, 1)`.
        y_pred: Probabilities (or logits), shape `(batch, num_classes)`.

    Example:

    >>> loss = SparseCategoricalCrossentropy(label_smoothing=0.1)  # targets [0.95, 0.05]
    >>> round(float(loss([0], [[0.9, 0.1]])), 4)
    0.2152

    Reference:
        - [Szegedy et al., 2016](https://arxiv.org/abs/1512.00567), Rethinking
          the Inception Architecture (label smoothing, section 7).
    """

    def __init__(
        self,
        label_smoothing=0.0,
        from_logits=False,
        reduction="sum_over_batch_size",
        name="sparse_categorical_crossentropy_with_label_smoothing",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = check_rate("label_smoothing", label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = keras.ops.convert_to_tensor(y_pred)
        y_true = keras.ops.cast(keras.ops.convert_to_tensor(y_true), "int32")
        if len(y_true.shape) == len(y_pred.shape):
            y_true = keras.ops.squeeze(y_true, axis=-1)
        one_hot = keras.ops.one_hot(y_true, keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
        }
