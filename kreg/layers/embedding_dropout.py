"""An `Embedding` that drops whole words: rows of its matrix, one draw per batch."""

import keras
from keras import ops

from kreg._validation import check_rate
from kreg._validation import keras_keywords
from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import dropout
from kreg.layers.adjustable_rates import rate_property


@keras.saving.register_keras_serializable(package="kreg")
class EmbeddingDropout(AdjustableRates, keras.layers.Embedding):
    """Embedding that drops whole rows of its matrix (whole word ids) in training.

    Ordinary dropout after an embedding drops single features of single
    positions, so a word dropped at one position is still seen at the next.
    Embedding dropout draws, once per batch, which rows of the embedding matrix
    (which ids) to drop: a dropped id embeds to zeros at every position of every
    sequence in the batch, and the kept rows are scaled by `1 / (1 - rate)`.
    The network cannot rely on any single word being present. At inference the
    layer is exactly `keras.layers.Embedding`.

    The result equals AWD-LSTM's `embedded_dropout` (masking the whole matrix,
    then looking up), but the row mask is gathered at the looked-up ids instead
    of multiplying the whole `(input_dim, output_dim)` matrix, so the cost does
    not grow with the vocabulary.

    The layer is a `keras.layers.Embedding` with one extra argument (keyword-only:
    Keras's arguments keep their positions): the same
    weights (`set_weights` / `get_weights` work both ways with a plain
    `Embedding`, and `weights=` loads a pretrained matrix), the same
    `mask_zero` masking and LoRA. `layer.quantize("int8")` / `"int4"` (and
    `model.quantize`) quantize it as they quantize `keras.layers.Embedding`; a
    quantized layer still drops rows of its (de-quantized) lookup in training.

    Args:
        input_dim: Integer. Size of the vocabulary (largest id + 1).
        output_dim: Integer. Dimension of the embedding.
        rate: Float in `[0, 1)`. Fraction of the vocabulary's rows dropped per
            batch. Defaults to `0.0`; AWD-LSTM uses 0.1. Held in a variable that
            `call` reads, so `layer.rate = ...` on a live model (a callback)
            takes effect at the next step without a retrace; a layer built with
            rate 0 never drops.
        seed: Integer, optional. Seed of the row masks.
        **kwargs: Every other argument of `keras.layers.Embedding`
            (`embeddings_initializer`, `mask_zero`, `embeddings_regularizer`,
            `name`, `dtype`, ...).

    Call arguments:
        inputs: An integer tensor of ids, any shape `(batch, ...)`.
        training: Python boolean. Whether to drop rows (`True` in `fit`).

    Example:

    >>> layer = EmbeddingDropout(10, 4, rate=0.5, seed=3)
    >>> ids = np.array([[1, 2, 1, 2], [2, 1, 2, 1]])
    >>> y = keras.ops.convert_to_numpy(layer(ids, training=True))
    >>> # An id is dropped everywhere or nowhere in the batch.
    >>> bool(np.all((y[0, 0] == 0) == (y[1, 1] == 0)))
    True

    Reference:
        - [Gal & Ghahramani, 2016](https://arxiv.org/abs/1512.05287), dropout on
          word embeddings: whole words dropped, the same at every position.
        - [Merity et al., 2018](https://arxiv.org/abs/1708.02182), embedding
          dropout in AWD-LSTM.
    """

    rate = rate_property("rate", "The current fraction of rows dropped per batch.")

    def __init__(self, input_dim, output_dim, *args, rate=0.0, seed=None, **kwargs):
        # Keras's positional arguments pass through (a drop-in for `Embedding`),
        # named, so that `weights` given by position loads here too.
        kwargs = keras_keywords(keras.layers.Embedding, 2, args, kwargs, "rate")
        weights = kwargs.pop("weights", None)
        rate = check_rate("rate", rate)
        super().__init__(input_dim, output_dim, **kwargs)
        self.add_rate("rate", rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        if weights is not None:
            # As `Embedding.__init__` does, once this layer's own state exists:
            # a built layer takes no new state.
            self.build()
            self.set_weights(
                weights if isinstance(weights, list) and len(weights) == 1 else [weights]
            )

    def call(self, inputs, training=False):
        return self._rows_dropped(inputs, super().call(inputs), training)

    def quantized_call(self, inputs, training=False):
        # Keras calls this instead of `call` once the layer is quantized.
        return self._rows_dropped(
            inputs, super().quantized_call(inputs, training=training), training
        )

    def _rows_dropped(self, inputs, outputs, training):
        if not training or not self.rate_in_use("rate"):
            return outputs
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = ops.cast(inputs, "int32")
        kept_rows = dropout(
            ops.ones((self.input_dim,), dtype=outputs.dtype),
            self.rate_variable("rate"),
            seed=self.seed_generator,
        )
        return outputs * ops.expand_dims(ops.take(kept_rows, inputs, axis=0), -1)

    def quantize(self, mode=None, type_check=True, config=None):
        # `Embedding.quantize` refuses every subclass (`type(self) is not
        # Embedding`); this one adds no weight, so its matrix quantizes as
        # Embedding's does. Its own subclasses are refused in turn.
        if type_check and type(self) is not EmbeddingDropout:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)

    def compute_output_spec(self, inputs, training=False):
        return super().compute_output_spec(inputs)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
