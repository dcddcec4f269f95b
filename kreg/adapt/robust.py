"""The `"robust"` method of `OnlineAdapter`: adaptation that a stream's order cannot bend.

Built from the methods published for streams that are not shuffled, reading
their reference code:

- **RoTTA** (Yuan et al., CVPR 2023; github.com/BIT-DA/RoTTA). Taken: the robust
  batch norm (the model always predicts with global statistics, which follow
  the statistics of class-balanced batches by an exponential average,
  `alpha = 0.05` per update; the current batch's own statistics never normalize
  it, so a batch of one class, or of one sample, cannot erase the class
  signal); the category-balanced memory bank with timeliness and uncertainty
  (`memory_bank.py`), an update every `memory_size` samples from the bank only;
  and the time-aware reweighting of the bank's samples,
  `exp(-age) / (1 + exp(-age))`. Changed: the bank's statistics are taken with
  the model normalizing as it predicts (RoTTA's pass mixes in the bank's own
  statistics at every layer), and the first updates after a shift (below)
  weigh the bank as a running average would, the shift's statistics counted as
  the samples it pooled and each bank as the samples it holds, before `alpha`
  (a warm start: the statistics of 16 to 64 samples are not worth 19 of 20
  parts of each later bank). A bank keeps samples over updates, as RoTTA's
  does (the first after a shift can hold the batch the shift was tested on),
  so a sample counts once per bank that holds it; and an update mixes the
  variances linearly, as RoTTA's does, where a shift pools them exactly. The
  model's own statistics, estimated on its whole training set, follow `alpha`
  from the first update, as in RoTTA (`statistics_warm_start`; warm-starting
  them as well cost up to 3.1 points on clean streams of few classes,
  docs/BENCHMARKS.md). Not taken: the teacher-student pair with strong
  augmentations and a consistency loss: augmentations are data-specific, and
  the teacher doubles the model's memory and its inference cost.
- **EATA / SAR** (Niu et al., 2022, 2023). Taken: the entropy loss on reliable
  samples only (entropy below `entropy_factor * ln C`), weighted by confidence,
  and SAR's reset to the source state when the filtered entropy collapses.
  Not taken: EATA's redundancy filter (the bank is class-balanced already).
- **NOTE** (Gong et al., NeurIPS 2022). Its prediction-balanced reservoir
  sampling serves the same end as RoTTA's bank, which adds timeliness
  (`memory_fill="note"` offers it). Its instance-aware batch norm needs the
  layers replaced in the model, which kreg's adapter does not do to a user's
  model; its principle is taken by the shift test below: correct only the
  deviation that class-conditional variation does not explain.
- **DELTA** (Zhao et al., ICLR 2023). Its test-time batch renormalization
  normalizes with the batch's statistics corrected towards the moving ones;
  the robust batch norm normalizes with moving statistics alone, which is the
  limit of that correction and needs no batch at all (batch size 1 works). Its
  dynamic online reweighting against class bias is what the class-balanced
  bank does at the sample level. Not taken separately.

**The shift test** (`shift_distance`, on by default; kreg's own, built on
the measure of `label_shift.py`). RoTTA's bank balances the model's predicted
classes, and its statistics move by `alpha` per update: safe under label
shift, slow under a covariate shift, where the predictions it balances are
wrong (a corruption at full severity collapses them to one class, the bank
then holds `memory_size / classes` samples, and on `bench/adaptation_grid.py`
the model recovered a fifth of what re-estimating the statistics did). The
two shifts differ at the first batch norm after a convolution: its per-channel
statistics pool low-level features over all positions, whose class means lie
close together, so a stream of one class moves them little (at most 0.27 in
the distance of `label_shift.py` on the grid's clean one-class windows), and
a corruption moves them further (0.5 to 1.7 for blur, contrast, brightness,
pixelation, fog). So the samples of the stream since the last update (a
window: not the bank, under a covariate shift the predicted classes carry no
information) are tested at that layer before each batch that brings them past
a multiple of 16 samples, and before the batch that completes `memory_size` of
them (`shift_test="batch"`), the batch itself included: the first batch of a
new corruption is then predicted with its own statistics. Further than
`shift_distance` (`log 1.5`, `label_shift.py`'s bound for source-like
low-level statistics, not tuned) and their statistics, taken with every batch
norm normalizing with them (AdaBN on the window), replace the stored ones at
once, the bank is emptied and a new window starts; the next windows close to
those statistics are pooled in exactly (AdaBN over the stretch of that shift)
until the pool holds `memory_size` samples, and a window far from them starts
a new pool: another corruption (`shift_pool="close"`). Otherwise RoTTA's
update from the bank, every `memory_size` samples. Weak corruptions (noise,
speckle, quantization: 0.1 to 0.3) stay on RoTTA's slow path. A model whose
first batch norm follows a dense layer sees class-specific features there (one
class moves it by 1 to 2, as far as a corruption), so the test never fires in
it (the grid's MLP): RoTTA's path, though the test still runs. A test
reads the first batch norm's input only, which no batch norm's statistics
change: each sample is run once, through the layers before that batch norm
(`input_moments.py`), and its moments pool exactly with those of the samples
tested before it; a shift then runs the whole model on the window, for every
batch norm's statistics. (Where the model's graph gives no such part, a
subclassed or nested model, or its moments differ from a whole pass's, checked
at the first test, the whole model runs on the new samples; on the whole
window where their moments do not pool into the window's, as where a first
batch norm called twice normalizes its second input with the batch's
statistics.) At most one test per 16 samples of the stream when
`memory_size` is a multiple of 16 (below 16, once per `memory_size`, as
`"window"`). Each close window pooled in is written like a shift: before its batch is predicted,
emptying the bank, counted as an update. `shift_test="window"` tests once
per `memory_size` samples only, and `shift_pool="consecutive"` pools every
shifted window with those just before it, however far apart: the first
version of the test, whose window's statistics served the next corruption
where it changed every window.

Measured on `bench/adaptation_grid.py` (docs/BENCHMARKS.md), held-out half
of three training seeds (conv models, batch 16 and 64, 203 cells): mean
accuracy 80.1% against 64.1% for no adaptation; worst cell 1.04 points below
no adaptation (a clean label-shifted stream, where the test does not fire:
RoTTA's bank), against 12.3 for the per-window test with the warm start from
the source (a stream whose corruption changes every 64 samples) and 1.9 for
the per-batch test with it (a clean label-shifted stream). The
pre-registered rule chose each on the tuning half: the per-batch test,
`shift_pool="close"` (tied with `"consecutive"` on the worst cell, the higher
mean), then `statistics_warm_start="shift"` (tied with `None` on the worst
cell, the higher mean).

The entropy step is off unless `learning_rate` is given (a default chosen on
the tuning half of `bench/adaptation_grid.py`, see docs/BENCHMARKS.md).
"""

import keras
import numpy as np
from keras import ops

from kreg.adapt.batch_check import NonFiniteStatisticsError
from kreg.adapt.batch_statistics_pass import replicated
from kreg.adapt.eata import AffineStepper
from kreg.adapt.eata import entropy_of
from kreg.adapt.entropy import class_probabilities
from kreg.adapt.input_moments import input_moments_model
from kreg.adapt.input_moments import moments_of
from kreg.adapt.input_moments import same_moments
from kreg.adapt.label_shift import distance_from_stored_statistics
from kreg.adapt.memory_bank import MemoryBank
from kreg.adapt.memory_bank import timeliness_weights
from kreg.adapt.reestimation import assign_statistics
from kreg.adapt.reestimation import call_order
from kreg.adapt.reestimation import check_finite_statistics
from kreg.adapt.reestimation import collect_statistics
from kreg.adapt.reestimation import pool_layer_statistics
from kreg.adapt.reestimation import pool_statistics
from kreg.layers.batch_statistics import combine_statistics

# When the shift test runs: `"window"`, once per `memory_size` samples, on the
# samples since the last update; `"batch"`, also on the window so far at the
# batches that bring it past a multiple of `BATCH_TEST_SAMPLES` samples.
SHIFT_TESTS = ("window", "batch")
# What a shifted window's statistics pool with: `"consecutive"`, the shifted
# windows just before it; `"close"`, those only while it is within
# `shift_distance` of them (a window further from them is another shift).
SHIFT_POOLS = ("consecutive", "close")
# Which stored statistics the bank's first updates move faster (a running
# average's warm start, `_update_from_bank`): `"source"`, the model's from the
# first update (they count as one bank); `"shift"`, only those a shift wrote
# (they count as the samples it pooled), the model's following RoTTA's `alpha`
# from the first update; None, none (RoTTA's `alpha` always).
WARM_STARTS = ("source", "shift", None)
# The fewest samples `shift_test="batch"` tests: 16 samples of an 8x8 input
# give the first batch norm after a convolution 1,024 values per channel.
# It also bounds the test's calls: a test needs the window to pass a multiple
# of 16 samples, or an update to be due, so at most one per 16 samples of the
# stream when `memory_size` is a multiple of 16 (one more per `memory_size`
# otherwise), each on the samples no test has seen.
BATCH_TEST_SAMPLES = 16


def _rows(x):
    """The samples of a batch (a structure of arrays), one structure per sample.

    Views of a copy, not of `x`: the bank and the shift test's window hold them
    for many batches, and a caller may read its stream into one reused buffer.
    A plain array (the usual batch) is split by iterating over its copy,
    without packing a structure per sample (0.1 ms of a batch of 64 on
    TensorFlow, a twentieth of its `predict_on_batch`).
    """
    if not keras.tree.is_nested(x):
        return list(np.array(x, copy=True))
    leaves = [np.array(leaf, copy=True) for leaf in keras.tree.flatten(x)]
    return [
        keras.tree.pack_sequence_as(x, [leaf[i] for leaf in leaves]) for i in range(len(leaves[0]))
    ]


def _stack(samples):
    if not keras.tree.is_nested(samples[0]):
        return np.stack(samples)
    return keras.tree.map_structure(lambda *rows: np.stack(rows), *samples)


class RobustAdaptation:
    """The running state of the `"robust"` method for one model (see the module)."""

    def __init__(
        self,
        model,
        layers,
        memory_size,
        statistics_momentum,
        learning_rate,
        from_logits,
        selection,
        memory_fill,
        shift_distance=None,
        shift_test="window",
        shift_pool="consecutive",
        warm_start="source",
    ):
        self.model, self.layers = model, layers
        self.warm_start = warm_start
        self.shift_distance = shift_distance
        self.shift_test = shift_test
        self.shift_pool = shift_pool
        self.memory_size = memory_size
        self.momentum = statistics_momentum
        self.from_logits = from_logits
        self.selection = selection
        classes = (
            int(keras.tree.flatten(model.outputs)[0].shape[-1])
            if hasattr(model, "outputs")
            else None
        )
        self.bank = MemoryBank(memory_size, max(classes or 2, 2), memory_fill)
        # The part of the model before its first batch norm, which the shift
        # test runs on each sample once (`input_moments.py`): None until the
        # first test has found that batch norm. Where the model's graph gives
        # no such part, or its moments differ from a whole pass's: `"new"`,
        # the whole model on the samples no test has seen, where their moments
        # pool into the window's (checked at the first test), else `"window"`,
        # the whole model on the window.
        self._input_moments = None
        self.stepper = None
        if learning_rate:
            self.stepper = AffineStepper(
                model, layers, learning_rate, from_logits, "robust", stored_weight=1.0
            )
        self.reset()

    def reset(self):
        self.selection.reset()
        self.bank.reset()
        self.window = []  # with `shift_distance`: the samples since the last update
        # `(mean, variance, count, rows)`: the first batch norm's input moments
        # over the first `rows` samples of `window` (those a test has seen).
        self.window_moments = None
        self.since_update = 0
        self.updates = 0
        self.shift_updates = 0
        self.unsettled = None  # pooled statistics of consecutive shifted windows
        self.unsettled_samples = 0  # the samples pooled in `unsettled`
        # With `warm_start="shift"`: the samples the stored statistics average
        # since a shift wrote them (its pooled samples, then each bank's, a
        # sample once per bank that held it); None while they are the model's own.
        self.averaged_samples = None
        self._overwritten = None  # [(variable, value)] a shift wrote over in this batch

    def state(self):
        optimizer = self.stepper.optimizer_state() if self.stepper is not None else None
        return (
            self.bank.state(),
            self.since_update,
            self.updates,
            optimizer,
            self.selection.state(),
            list(self.window),
            self.shift_updates,
            self.unsettled,
            self.unsettled_samples,
            self.window_moments,
            self.averaged_samples,
        )

    def set_state(self, state):
        (
            bank,
            self.since_update,
            self.updates,
            optimizer,
            selection,
            window,
            self.shift_updates,
            self.unsettled,
            self.unsettled_samples,
            self.window_moments,
            self.averaged_samples,
        ) = state
        self.bank.set_state(bank)
        self.window = list(window)
        self.selection.set_state(selection)
        if optimizer is not None:
            self.stepper.set_optimizer_state(optimizer)

    def predict_and_adapt(self, x):
        """The model's predictions on `x` with its statistics as they are; then `x`
        goes into the bank, and every `memory_size` samples the model learns from
        the bank. Returns `(outputs, collapsed)`.

        With `shift_distance`, the shift test comes first, before the batch
        that completes `memory_size` samples is predicted (`shift_test="batch"`:
        also before each batch that brings them past a multiple of 16): when the samples
        since the last update (this batch included) sit further than
        `shift_distance` from the first batch norm's stored statistics, every
        batch norm takes their statistics outright and the bank (filled under
        predictions the shift made wrong) is emptied, in place of the bank's
        update; otherwise the bank's update follows the prediction, as without."""
        rows = _rows(x)
        # What the batch changes before a pass finds its statistics or outputs
        # not finite is put back, so that the next updates do not fail on its
        # samples. The bank changes before a pass only when an update is due,
        # or when a per-batch shift test empties it. The shift test writes the
        # statistics before the batch is predicted: a model that overflows on
        # the batch with them refuses it after that write, which
        # `_follow_a_shift` records in `_overwritten`.
        due = self.since_update + len(rows) >= self.memory_size
        # `shift_test="batch"` can empty the bank at any batch.
        bank_may_change = due or (self.shift_distance is not None and self.shift_test == "batch")
        counters = (
            self.updates,
            self.shift_updates,
            self.unsettled,
            self.unsettled_samples,
            self.averaged_samples,
        )
        before = (
            self.window,
            self.window_moments,
            self.since_update,
            self.bank.state() if bank_may_change else None,
        )
        self._overwritten = None
        try:
            return self._predict_and_adapt(x, rows)
        except NonFiniteStatisticsError:
            self.window, self.window_moments, self.since_update, bank = before
            (
                self.updates,
                self.shift_updates,
                self.unsettled,
                self.unsettled_samples,
                self.averaged_samples,
            ) = counters
            for variable, value in self._overwritten or ():
                variable.assign(value)
            self._overwritten = None
            if bank is not None:
                self.bank.set_state(bank)
                self._drop_unchecked_samples_that_overflow()
            raise

    def _drop_unchecked_samples_that_overflow(self):
        """After a failed update: when the bank, or the shift test's window, as
        they were before the batch fail as well, the cause came in earlier, with
        the samples added since the last update (a value that predicts finitely
        but whose square overflows float32 reaches no pass before the next
        update); those are dropped from both, or every later update would fail
        on them. The samples older than the last update passed its pass. One
        or two more passes, on this rare path only."""
        for samples, stored_weight in ((self.bank.contents()[0], 1.0), (self.window, 0.0)):
            if not samples:
                continue
            options = dict(steps=None, batch_size=len(samples), verbose=0)
            try:
                collect_statistics(
                    self.model, self.layers, _stack(list(samples)), options, False, stored_weight
                )
            except NonFiniteStatisticsError:
                self.bank.drop_since(self.bank.clock - self.since_update)
                self.window = []  # the samples since the last update, as dropped
                self.window_moments = None
                return

    def _predict_and_adapt(self, x, rows):
        shifted = False
        if self.shift_distance is not None:
            # Kept only once the test has taken the batch: a batch it refuses
            # (statistics not finite) must not stay to fail the next windows.
            window = self.window + rows
            due = self.since_update + len(rows) >= self.memory_size
            if self.shift_test == "window":
                shifted = due and self._follow_a_shift(window)
                self.window = [] if due else window
                if due:
                    self.window_moments = None
            else:
                # Tested before the batch is predicted, so that the first
                # batch of a new corruption is predicted with its statistics,
                # not the last one's; at most once per `BATCH_TEST_SAMPLES`
                # samples, which bounds the passes at a small batch size.
                step = min(BATCH_TEST_SAMPLES, self.memory_size)
                tested = due or len(window) // step > len(self.window) // step
                shifted = tested and self._follow_a_shift(window, settle=due)
                # A statistics write closes the window: the next one starts
                # from the statistics it wrote.
                self.window = [] if due or shifted else window
                if due or shifted:
                    self.window_moments = None
        outputs = self.model.predict_on_batch(x)
        probabilities = ops.convert_to_numpy(class_probabilities(outputs, self.from_logits))
        if not np.all(np.isfinite(probabilities)):
            # The model overflows on the batch: its samples would fail every
            # update of the bank they stayed in.
            raise NonFiniteStatisticsError("the model's outputs are not finite")
        if probabilities.shape[-1] != self.bank.classes and not len(self.bank):
            # A model without declared outputs (subclassed) tells its number of
            # classes by its first prediction; the bank is still empty then.
            self.bank = MemoryBank(self.memory_size, probabilities.shape[-1], self.bank.fill)
        self.bank.add(rows, probabilities.argmax(-1), entropy_of(probabilities))
        self.since_update += len(probabilities)
        collapsed = False
        if shifted:
            self.since_update = 0
        elif self.since_update >= self.memory_size:
            self.since_update = 0
            collapsed = self._update_from_bank()
        return outputs, collapsed

    def _follow_a_shift(self, window, settle=True):
        """The shift test on `window`, the samples since the last update; on a
        shift, their statistics (pooled with those of the shifted windows just
        before it) replace the stored ones. Returns whether it did.

        With `shift_test="batch"`, a window within `shift_distance` of the
        statistics of a shift that has pooled fewer than `memory_size`
        samples is pooled in as well (the same shift, its statistics from more
        samples); `settle=False` (a window that is not yet due) keeps the
        pool open when the window is close.

        A class-balanced bank protects the statistics from label shift, at the
        price of following a covariate shift by a few per cent per update; but
        the classes it balances are the model's predictions, which a covariate
        shift makes wrong (a corruption at full severity collapses them to
        one class, and RoTTA's bank then holds `memory_size / classes` samples).
        Where the shift is, the first batch norm tells: label shift moves its
        input by no more than the spread of the class means of low-level
        features, a corruption moves it further (`label_shift.py`). So the
        bank's balance is trusted, and its slow rate kept, until the recent
        stream is further than `shift_distance` from the stored statistics;
        then the statistics are those of the recent samples, taken with every
        batch norm normalizing with them (AdaBN on the window, the limit of
        DELTA's renormalization towards the batch, Zhao et al., 2023).
        """
        first, (mean, variance, count), statistics = self._first_input_moments(window)
        # Only statistics pooled over positions (a batch norm after a
        # convolution: more values per channel than samples) are low-level
        # features whose class means stay close; one after a dense layer on
        # the whole input already sees class-specific features, and a few
        # classes move it as far as a corruption does (docs/BENCHMARKS.md).
        if count <= len(window):
            return False
        distance = distance_from_stored_statistics(self.layers[first], mean, variance)
        if distance <= self.shift_distance:
            refine = (
                self.shift_test == "batch"
                and self.unsettled is not None
                and self.unsettled_samples < self.memory_size
            )
            if not refine:
                if settle:
                    # The stream has settled where the statistics are.
                    self.unsettled, self.unsettled_samples = None, 0
                return False
        elif self.shift_pool == "close":
            # Further than `shift_distance` from the stored statistics, which
            # are the pool's when one is open: another shift, a new pool.
            self.unsettled, self.unsettled_samples = None, 0
        if statistics is None:
            # Every batch norm's statistics over the window, each normalizing
            # with them (AdaBN on the window): on a shift only.
            statistics = self._window_statistics(window)
        # Windows found shifted one after another (corruptions that change
        # faster than a window) are pooled exactly: AdaBN over the stretch that
        # has not settled, rather than the last window's statistics alone.
        statistics = self.unsettled = pool_layer_statistics(self.unsettled, statistics)
        self.unsettled_samples += len(window)
        # Kept until the batch is predicted (see `predict_and_adapt`); read on
        # this path only, a shift, not at every update.
        self._overwritten = [
            (variable, ops.convert_to_numpy(variable).copy())
            for layer in self.layers
            for variable in layer.non_trainable_weights
        ]
        for layer, (mean, variance, count) in zip(self.layers, statistics):
            if count > 1:
                assign_statistics(layer, mean, variance)
        self.bank.reset()
        self.updates += 1
        self.shift_updates += 1
        self.averaged_samples = self.unsettled_samples
        return True

    def _bank_weight(self, samples):
        """The share of the bank's statistics in an update of `samples` samples.

        RoTTA's `alpha` (`statistics_momentum`), after a warm start: the
        first updates weigh the bank as a running average would, so that a
        stationary shift is followed within a few updates. `"source"`: from
        the model's statistics, counted as one full bank (`1/2, 1/3...` of a
        full bank; a bank still filling, a class-sorted start, moves them
        less). `"shift"`: from the statistics a shift wrote, counted as the
        samples it pooled (`samples / (pooled + samples)`, and so on); the
        model's own follow `alpha` from the first update, as they do in RoTTA:
        on a clean stream of few classes every update moves them away from
        statistics estimated on the whole training set.
        """
        if self.warm_start == "source":
            return max(self.momentum, samples / self.memory_size / (self.updates + 2))
        if self.warm_start == "shift" and self.averaged_samples is not None:
            return max(self.momentum, samples / (self.averaged_samples + samples))
        return self.momentum

    def _window_statistics(self, samples):
        options = dict(steps=None, batch_size=len(samples), verbose=0)
        statistics, _ = collect_statistics(
            self.model,
            self.layers,
            _stack(list(samples)),
            options,
            need_variance=False,
            stored_weight=0.0,
        )
        return statistics

    def _first_input_moments(self, window):
        """`(first, (mean, variance, count), statistics)`: the index of the
        first batch norm the model calls, its input moments over `window`, and
        every batch norm's statistics over `window` when a pass of the whole
        model over it was run (else None). Records the moments in
        `window_moments`.

        Each sample is measured once: the samples a test has not seen are run
        up to the first batch norm (`input_moments.py`) and their moments
        pooled exactly with those of the samples before them. The first test
        runs the whole model, which finds the first batch norm, and checks the
        shorter pass against it; a model where that pass cannot be built, or
        differs, runs the whole model on the samples not yet seen, or on the
        window where their moments do not pool into the window's (a first batch
        norm called twice normalizes its second input with the batch's
        statistics).
        """
        seen = 0 if self.window_moments is None else self.window_moments[3]
        statistics = None
        # The first test runs the whole model: the call order is known after a pass.
        if self._input_moments is None or self._input_moments == "window":
            statistics = self._window_statistics(window)
        first = call_order(self.model, self.layers)[0]
        if statistics is not None:
            moments = statistics[first]
            if self._input_moments is None:
                self._input_moments = self._checked_input_moments_model(first, window, moments)
        elif self._input_moments == "new":
            try:
                moments = self._window_statistics(window[seen:])[first]
            except NonFiniteStatisticsError:
                raise
            except ValueError:
                # New samples that leave a batch norm no value (all of them
                # masked): the whole window, whose earlier samples hold some,
                # as `collect_statistics` takes it.
                statistics = self._window_statistics(window)
                moments = statistics[first]
        else:
            moments = moments_of(self._input_moments, _stack(list(window[seen:])))
            check_finite_statistics(self.layers[first], *moments[:2])
        if self.window_moments is not None and statistics is None:
            moments = pool_statistics(*zip(self.window_moments[:3], moments))
        self.window_moments = (*moments, len(window))
        return first, moments, statistics

    def _checked_input_moments_model(self, first, window, moments):
        candidate = (
            None if replicated(self.model) else input_moments_model(self.model, self.layers[first])
        )
        if candidate is not None:
            try:
                shorter = moments_of(candidate, _stack(list(window)))
            except Exception:  # noqa: BLE001 - any failure means: use the whole pass
                shorter = None
            if shorter is not None and same_moments(shorter, moments):
                return candidate
        return "new" if self._new_samples_pool_exactly(first, window, moments) else "window"

    def _new_samples_pool_exactly(self, first, window, moments):
        """Whether whole passes over two halves of `window` give, pooled, the
        first batch norm's input moments over it (`moments`): they do where
        that input depends on each sample alone."""
        if len(window) < 2:
            return False
        half = len(window) // 2
        try:
            parts = [
                self._window_statistics(part)[first] for part in (window[:half], window[half:])
            ]
        except ValueError:  # a half not finite, or with every position masked
            return False
        return same_moments(pool_statistics(*zip(*parts)), moments)

    def _update_from_bank(self):
        samples, ages = self.bank.contents()
        x = _stack(samples)
        options = dict(steps=None, batch_size=len(samples), verbose=0)
        # The pass normalizes with the global statistics, as the model predicts:
        # each layer's bank statistics are those of the inputs it meets at
        # inference, and a bank of few classes distorts no layer but its own.
        # The stored statistics come with the pass, read by it: the values it
        # normalized with, without a separate read of each variable.
        statistics, _, stored_statistics = collect_statistics(
            self.model,
            self.layers,
            x,
            options,
            need_variance=False,
            stored_weight=1.0,
            with_stored=True,
        )
        # RoTTA's alpha, after a warm start (`warm_start`).
        alpha = self._bank_weight(len(samples))
        for layer, (mean, variance, count), stored in zip(
            self.layers, statistics, stored_statistics
        ):
            if count > 1:
                stored = tuple(v.astype("float64") for v in stored)
                assign_statistics(
                    layer, *combine_statistics(1.0 - alpha, stored, (mean, variance)), stored[1]
                )
        self.updates += 1
        if self.warm_start == "shift" and self.averaged_samples is not None:
            self.averaged_samples += len(samples)  # the running average's count
        if self.stepper is None:
            return False
        _, probabilities = self.stepper.predict(x)
        weights, entropy = self.selection.weights(probabilities)
        weights = (weights * timeliness_weights(ages)).astype("float32")
        # Each sample predicted finitely when it came, but the statistics just
        # written can make the model overflow on some: the filter gives them
        # weight 0, and 0 times their NaN loss is still NaN in every gradient.
        finite = np.all(np.isfinite(probabilities), axis=-1)
        if weights[finite].any():
            if finite.all():
                self.stepper.step(x, weights)
            else:
                self.stepper.step(
                    keras.tree.map_structure(lambda leaf: leaf[finite], x), weights[finite]
                )
        return self.selection.collapsed(weights, entropy)
