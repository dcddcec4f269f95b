"""EATA: entropy minimization on reliable, non-redundant samples, with SAR's collapse guard.

Tent (`entropy.py`) minimizes the entropy of every prediction. EATA (Niu et al.,
2022) keeps only the samples worth learning from, and weighs them:

- reliable: entropy below `entropy_factor * ln C` (`e_margin`; EATA uses 0.4);
- not redundant: the cosine similarity of the sample's predicted distribution
  to a moving average of the predictions already learned from is below
  `redundancy_threshold` (`d_margin`); a stream that keeps showing the same
  prediction stops pulling the model further towards it;
- weighted by confidence, `1 / exp(entropy - e_margin)`.

SAR (Niu et al., 2023) watches a moving average of that filtered entropy: when
it falls below `collapse_factor * ln C` the model has collapsed to confident,
constant predictions, and the adapter goes back to the source state.

EATA's Fisher regularizer (its anti-forgetting term) is not included: it needs
labelled or at least in-distribution source samples before adaptation, which a
`predict`-time user does not have at hand.
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from kreg import _keras_compat
from kreg._validation import check_at_least
from kreg._validation import check_between
from kreg._validation import check_rate
from kreg.adapt.batch_statistics_pass import batch_statistics_used
from kreg.adapt.batch_statistics_pass import strategy_scope
from kreg.adapt.entropy import EntropyMinimizer
from kreg.adapt.entropy import class_probabilities
from kreg.adapt.entropy import only_batch_norm_affine_trainable

# EATA's moving average of accepted predictions, and SAR's of the filtered
# entropy, both keep 0.9 of the old value per batch (their published code).
AVERAGE_MOMENTUM = 0.9


def check_eata_arguments(entropy_factor, redundancy_threshold, collapse_factor):
    """Checks EATA's three thresholds; returns them as floats (the redundancy one may be None)."""
    # A fraction of ln C, the largest entropy.
    entropy_factor = check_between("entropy_factor", entropy_factor, 0, 1, include_low=False)
    if redundancy_threshold is not None:
        redundancy_threshold = float(check_at_least("redundancy_threshold", redundancy_threshold))
    collapse_factor = check_rate("collapse_factor", collapse_factor)
    return entropy_factor, redundancy_threshold, collapse_factor


def entropy_of(probabilities):
    """Each row's entropy in nats (NumPy)."""
    return -np.sum(probabilities * np.log(np.clip(probabilities, 1e-7, 1.0)), axis=-1)


class SampleSelection:
    """EATA's sample filters and weights, and SAR's collapse watch, over NumPy predictions.

    Holds the state that lasts across batches: the moving average of accepted
    predictions and the moving average of the filtered entropy.
    """

    def __init__(self, entropy_factor=0.4, redundancy_threshold=0.4, collapse_factor=0.03):
        self.entropy_factor, self.redundancy_threshold, self.collapse_factor = check_eata_arguments(
            entropy_factor, redundancy_threshold, collapse_factor
        )
        self.reset()

    def reset(self):
        self.average_prediction = None
        self.average_entropy = None

    def state(self):
        return (self.average_prediction, self.average_entropy)

    def set_state(self, state):
        self.average_prediction, self.average_entropy = state

    def weights(self, probabilities):
        """Per-sample loss weights: 0 for the samples dropped, else `1 / exp(entropy - e_margin)`.

        Also moves the average of accepted predictions (EATA updates it before the
        gradient step, from the same forward pass).
        """
        probabilities = np.asarray(probabilities, np.float64)
        classes = self.classes = probabilities.shape[-1]
        margin = self.entropy_factor * math.log(classes)
        entropy = entropy_of(probabilities)
        kept = entropy < margin
        if self.redundancy_threshold is not None and self.average_prediction is not None:
            norms = np.linalg.norm(probabilities, axis=-1) * np.linalg.norm(self.average_prediction)
            cosine = probabilities @ self.average_prediction / np.maximum(norms, 1e-12)
            kept &= np.abs(cosine) < self.redundancy_threshold
        if kept.any():
            mean = probabilities[kept].mean(axis=0)
            self.average_prediction = (
                mean
                if self.average_prediction is None
                else AVERAGE_MOMENTUM * self.average_prediction + (1 - AVERAGE_MOMENTUM) * mean
            )
        weights = np.where(kept, np.exp(margin - entropy), 0.0).astype("float32")
        return weights, entropy

    def collapsed(self, weights, entropy):
        """Moves the average filtered entropy; whether it fell below the collapse threshold."""
        kept = weights > 0
        if not kept.any():
            return False
        filtered = float(np.mean(entropy[kept]))
        self.average_entropy = (
            filtered
            if self.average_entropy is None
            else AVERAGE_MOMENTUM * self.average_entropy + (1 - AVERAGE_MOMENTUM) * filtered
        )
        return self.average_entropy < self.collapse_factor * math.log(self.classes)


class AffineStepper:
    """One entropy-minimization step per batch on the batch norms' scale and shift.

    Tent's `EntropyMinimizer` compiled once and stepped with `train_on_batch`,
    the batch norms normalizing with the batch's statistics (as in Tent and
    EATA), every other weight frozen for the duration of each call only.
    """

    def __init__(
        self, model, layers, learning_rate, from_logits, method, train=True, stored_weight=0.0
    ):
        self.model, self.layers, self.method, self.from_logits = model, layers, method, from_logits
        self.train = train  # False: forward passes only (prediction-time BN)
        self.stored_weight = stored_weight  # of the stored statistics in each normalization
        with strategy_scope(model):
            self.minimizer = EntropyMinimizer(model, from_logits)
            self.minimizer.compile(optimizer=keras.optimizers.Adam(learning_rate))
        if train:
            with only_batch_norm_affine_trainable(model, layers, method):
                self.minimizer.optimizer.build(self.minimizer.trainable_variables)
            self.initial_optimizer_state = self.optimizer_state()

    @contextlib.contextmanager
    def _adapting(self):
        with contextlib.ExitStack() as stack:
            if self.train:
                stack.enter_context(
                    only_batch_norm_affine_trainable(self.model, self.layers, self.method)
                )
            stack.enter_context(
                batch_statistics_used(self.model, self.layers, stored_weight=self.stored_weight)
            )
            stack.enter_context(strategy_scope(self.model))
            yield

    def predict(self, x):
        """The model's outputs on `x` with the batch's statistics, and their class probabilities."""
        with self._adapting():
            outputs = self.minimizer.predict_on_batch(x)
        probabilities = ops.convert_to_numpy(class_probabilities(outputs, self.from_logits))
        return outputs, probabilities

    def step(self, x, sample_weight=None):
        with self._adapting():
            self.minimizer.train_on_batch(x, sample_weight=sample_weight)

    def optimizer_state(self):
        return [ops.convert_to_numpy(v).copy() for v in self.minimizer.optimizer.variables]

    def set_optimizer_state(self, state):
        for variable, value in zip(self.minimizer.optimizer.variables, state):
            variable.assign(value)


def minimize_selected_entropy(
    model, layers, data, epochs, learning_rate, from_logits, predict_options, selection
):
    """EATA over `data`, `epochs` times, batch by batch; returns the number of collapse resets.

    On a collapse the scale and shift go back to their values before adaptation
    (the statistics are re-estimated afterwards by the caller).
    """
    stepper = AffineStepper(model, layers, learning_rate, from_logits, "eata")
    affine = [v for layer in layers for v in (layer.gamma, layer.beta) if v is not None]
    source = [ops.convert_to_numpy(v).copy() for v in affine]
    resets = 0
    for _ in range(epochs):
        for x in _keras_compat.numpy_batches(
            data, predict_options["batch_size"], predict_options["steps"]
        ):
            _, probabilities = stepper.predict(x)
            weights, entropy = selection.weights(probabilities)
            if weights.any():
                stepper.step(x, weights)
            if selection.collapsed(weights, entropy):
                for variable, value in zip(affine, source):
                    variable.assign(value)
                stepper.set_optimizer_state(stepper.initial_optimizer_state)
                selection.reset()
                resets += 1
    return resets
