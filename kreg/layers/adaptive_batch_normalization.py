import functools
import weakref

import keras
from keras import ops

from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_rate
from kreg.layers.batch_statistics import batch_moments
from kreg.layers.batch_statistics import combine_statistics
from kreg.layers.batch_statistics import finite_samples
from kreg.layers.batch_statistics import in_statistics_dtype
from kreg.layers.batch_statistics import mixed_stored_weight
from kreg.layers.batch_statistics import normalize

# The index of each mode is what the `test_time_mode` variable holds.
TEST_TIME_MODES = ("running", "batch", "mixed", "online")
_RUNNING, _BATCH, _MIXED, _ONLINE = range(len(TEST_TIME_MODES))


def _concrete_mode(mode):
    """The mode variable's value as a Python int where the call runs op by op
    (torch outside `torch.compile`, JAX outside `jax.jit`), so that a Python
    branch on it traces nothing; `None` where the call is traced."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.compiler.is_compiling():
            return None
    elif backend == "jax":
        import jax

        # Inside Keras's stateless calls the variable reads the scope's value:
        # a tracer under `jax.jit`, an array otherwise.
        if isinstance(ops.convert_to_tensor(mode), jax.core.Tracer):
            return None
    else:
        return None
    return int(ops.convert_to_numpy(mode))


def _torch_statistics_op_serves():
    """Whether `_TORCH_STATISTICS` computes the statistics of a call traced on
    torch: under `torch.compile` without gradients (it guards on that: a change
    compiles another graph, never a wrong one). Not under `torch.export`, which
    traces with the same compiler: an exported program outlives the layer that
    the operator looks up, and runs where kreg's operator is not registered."""
    import torch

    return not torch.is_grad_enabled() and not torch.compiler.is_exporting()


def _adapted_statistics(
    inputs, mask, moving, mode, axis, prior_strength, online_momentum, synchronized=False
):
    """`(mean, variance, clean)` of the modes other than `"running"`: the
    statistics to normalize with, and whether the batch held no NaN or inf."""
    # A sample holding NaN or inf is left out of the statistics, so it changes no
    # other sample's output; a batch holding one is never written into the
    # running statistics ("online"). (`synchronized` layers keep their
    # all-replica statistics, which a mask would turn off, as in Keras's masked
    # path: NaN can spread there.)
    sample_mask, clean, samples = finite_samples(inputs, mask)
    if synchronized:
        sample_mask = mask
    mean, variance, count = batch_moments(inputs, axis, sample_mask, synchronized)
    # Every adaptive mode is `weight * running + (1 - weight) * batch`; they
    # differ only in the weight given to the running statistics.
    running_weight = ops.where(
        mode == _MIXED,
        mixed_stored_weight(prior_strength, samples),
        ops.where(mode == _ONLINE, online_momentum, 0.0),
    )
    # One value per channel has no variance: keep the running statistics.
    running_weight = ops.cast(ops.where(count > 1, running_weight, 1.0), inputs.dtype)
    mean, variance = combine_statistics(running_weight, moving, (mean, variance))
    return mean, variance, clean


# The layers that `_TORCH_STATISTICS` serves, by `id`: the compiled graph holds the
# key, and the operator reads and writes the layer's statistics outside the graph.
# Weak values: a collected layer leaves, so an `id` Python reuses never finds it.
# `importlib.reload` (IPython's autoreload) runs this module again in the same
# namespace (https://docs.python.org/3/library/importlib.html#importlib.reload):
# the layers made before it stay registered.
_TORCH_LAYERS = globals().get("_TORCH_LAYERS", weakref.WeakValueDictionary())


def _torch_statistics_op():
    """The statistics of a layer as one torch custom operator, which
    `torch.compile` keeps opaque: inside, the layer runs as in eager torch, a
    Python branch on the mode at each call (https://pytorch.org/docs/stable/
    library.html). So the running mode computes no batch moments, changing the
    mode compiles nothing, and the `"online"` write happens outside the
    compiled graph: a write of module parameters inside it, even of unchanged
    values in the other modes, cost more than the rest of the layer. The
    operator is declared without mutated arguments: what it writes, the layer's
    stored statistics, reaches the compiled graph only through the operator.

    Not `torch.cond`: in torch 2.13 Dynamo drops an attribute store that
    follows a `cond` when the same attribute was stored before it
    (torch/_dynamo/variables/higher_order_ops.py restores a copy of its side
    effects after tracing the branches), and Keras stores and resets its call
    context around every layer call (keras/src/layers/layer.py,
    `_maybe_reset_call_context`): the context leaked and every predict
    recompiled."""
    import torch

    @torch.library.custom_op("kreg::adaptive_batch_norm_statistics", mutates_args=())
    def statistics(
        inputs: torch.Tensor, mask: torch.Tensor | None, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = _TORCH_LAYERS[layer]
        mode = int(ops.convert_to_numpy(layer._mode.variable))
        mean, variance = layer._statistics_now(inputs, mask, mode)
        # Copies: a custom operator's outputs may not alias what it reads.
        return mean.clone(), variance.clone()

    @statistics.register_fake
    def _(inputs, mask, layer):
        channels = inputs.shape[_TORCH_LAYERS[layer].axis]
        return inputs.new_empty((channels,)), inputs.new_empty((channels,))

    return statistics


# Registered at import: Dynamo cannot trace the registration itself.
_TORCH_STATISTICS = _torch_statistics_op() if keras.backend.backend() == "torch" else None


class _ModeHolder:
    """Holds the mode variable out of Keras's attribute tracking.

    A variable assigned to a layer attribute becomes one of its weights (and, on
    torch, a parameter); held by a plain object it is neither, so the layer's
    weights stay `BatchNormalization`'s.
    """

    variable = None


@keras.saving.register_keras_serializable(package="kreg")
class AdaptiveBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization whose inference statistics can follow the test data.

    With the default `test_time_mode="running"` this is
    `keras.layers.BatchNormalization`: the same arguments, the same training, the
    same weights and the same outputs. At inference (`training=False`, or a frozen
    layer) three other modes re-estimate the statistics from the data the model
    meets, which recovers much of the accuracy a covariate shift (noise, blur,
    another camera) costs:

    - `"batch"`: normalize with the statistics of the current batch (AdaBN /
      prediction-time BN).
    - `"mixed"`: a prior-weighted mix of the running (source) statistics and the
      batch's: with `n` samples in the batch,
      `mean = N / (N + n) * running_mean + n / (N + n) * batch_mean`, and the same
      for the variance, where `N = prior_strength` (Schneider et al., 2020).
    - `"online"`: update the running statistics from every inference batch,
      `running = online_momentum * running + (1 - online_momentum) * batch`, and
      normalize with the updated statistics: for a stream whose distribution
      drifts.

    A batch with a single value per channel (a batch of one after a dense layer)
    has no variance to estimate; every mode then uses the running statistics for
    that batch, rather than dividing by a variance of zero.

    The layer's weights are exactly `BatchNormalization`'s (the same number,
    order and names), so `get_weights` / `set_weights` move weights between the
    two classes both ways. The mode is held apart from them, in an integer
    variable that `call` reads: switching it on a model that has already run
    (`layer.test_time_mode = "batch"`, or `kreg.set_test_time_mode(model,
    "batch")`) takes effect on the next `predict` without re-tracing, with or
    without `jit_compile`. That variable is not in `layer.weights`; on
    TensorFlow and JAX it is in `layer.variables`, the state JAX's compiled
    functions receive (as a `SeedGenerator`'s state is). The mode is saved with
    the model through `get_config`, not in its weights file, so `load_weights`
    leaves the mode as it is.

    Under `tf.distribute`, as for `BatchNormalization`, the batch statistics of
    each replica are its own share of the batch, and `"online"` updates each
    replica's copy of the running statistics from it, unless
    `synchronized=True`, which takes them over all replicas (and then computes
    them on every call, since an all-reduce cannot sit inside a conditional).

    Args:
        axis, momentum, epsilon, center, scale, beta_initializer,
        gamma_initializer, moving_mean_initializer, moving_variance_initializer,
        beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint,
        renorm, renorm_clipping, renorm_momentum, synchronized: As in
            `keras.layers.BatchNormalization`, with the same defaults. With
            `synchronized=True` (TensorFlow), the batch statistics of the test-time
            modes are also taken over all replicas.
        test_time_mode: One of `"running"` (default), `"batch"`, `"mixed"`,
            `"online"`: which statistics normalize at inference.
        prior_strength: Number >= 0, `N` of the `"mixed"` mode: how many samples
            the running statistics count as. `0` is the `"batch"` mode; large
            values approach `"running"`. Defaults to `16`.
        online_momentum: Float in `[0, 1)`, the momentum of the `"online"` mode's
            updates. Defaults to `0.9`: there are fewer batches at test time than
            in training, so it forgets faster than `momentum`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Input tensor of any rank.
        training: Python boolean. `True` normalizes with the batch's statistics
            and updates the running ones, exactly as `BatchNormalization`; `False`
            (or a layer with `trainable=False`) uses the test-time mode.
        mask: Optional boolean tensor of rank `inputs` - 1; masked positions are
            left out of the batch statistics.

    Example:

    >>> layer = AdaptiveBatchNormalization()
    >>> x = keras.ops.linspace(2.0, 4.0, 32)[:, None] * keras.ops.ones((1, 4))
    >>> y = layer(x)  # "running": the initial statistics (mean 0, variance 1)
    >>> round(float(keras.ops.mean(y)), 1)
    3.0
    >>> layer.test_time_mode = "batch"
    >>> round(float(keras.ops.mean(layer(x))), 1)  # the batch's own statistics
    0.0

    Reference:
        - [Li et al., 2016](https://arxiv.org/abs/1603.04779), AdaBN: batch norm
          statistics re-estimated on the target domain.
        - [Nado et al., 2020](https://arxiv.org/abs/2006.10963), prediction-time
          batch normalization.
        - [Schneider et al., 2020](https://arxiv.org/abs/2006.16971), source and
          target statistics mixed with a prior strength `N`.
    """

    def __init__(
        self,
        *args,
        test_time_mode="running",
        prior_strength=16,
        online_momentum=0.9,
        **kwargs,
    ):
        # Every BatchNormalization argument, positional ones included, goes to
        # Keras's class as it is: no copy of its list here to drift from it.
        super().__init__(*args, **kwargs)
        self._test_time_mode = check_choice("test_time_mode", test_time_mode, TEST_TIME_MODES)
        self.prior_strength = float(check_at_least("prior_strength", prior_strength))
        self.online_momentum = check_rate("online_momentum", online_momentum)
        self._mode = _ModeHolder()
        if keras.backend.backend() == "torch":
            _TORCH_LAYERS[id(self)] = self

    def build(self, input_shape):
        super().build(input_shape)
        # An initializer, not a value: a model first built inside a stateless
        # scope (JAX's `fit` of an unbuilt subclassed model) may only create
        # variables whose value Keras can fill in once the scope ends.
        self._mode.variable = keras.Variable(
            keras.initializers.Constant(TEST_TIME_MODES.index(self._test_time_mode)),
            shape=(),
            dtype="int32",
            trainable=False,
            name="test_time_mode",
        )

    @property
    def variables(self):
        # The mode variable is state, not a weight: listed here, and absent from
        # `weights`. JAX's compiled functions receive the state they read as
        # arguments (`layer.variables`, SeedGenerator states included), so a value
        # not listed would be frozen in at trace time; TensorFlow's `export`
        # tracks what is listed. On torch, Keras turns every listed variable
        # into a module parameter (keras/src/backend/torch/layer.py), one more
        # than `BatchNormalization` has, while compiled torch code reads the
        # tensor live: there it is not listed.
        variables = super().variables
        if self._mode.variable is not None and keras.backend.backend() != "torch":
            variables.append(self._mode.variable)
        return variables

    @property
    def test_time_mode(self):
        """The statistics used at inference: one of `TEST_TIME_MODES`."""
        if self._mode.variable is not None:
            return TEST_TIME_MODES[int(ops.convert_to_numpy(self._mode.variable))]
        return self._test_time_mode

    @test_time_mode.setter
    def test_time_mode(self, mode):
        self._test_time_mode = check_choice("test_time_mode", mode, TEST_TIME_MODES)
        if self._mode.variable is not None:
            self._mode.variable.assign(TEST_TIME_MODES.index(mode))

    def call(self, inputs, training=None, mask=None):
        if training and self.trainable:
            return super().call(inputs, training=training, mask=mask)
        inputs = in_statistics_dtype(inputs)
        moving_mean = ops.cast(self.moving_mean, inputs.dtype)
        moving_variance = ops.cast(self.moving_variance, inputs.dtype)
        mode = self._mode.variable

        adapted_statistics = functools.partial(
            _adapted_statistics,
            inputs,
            mask,
            (moving_mean, moving_variance),
            mode,
            self.axis,
            self.prior_strength,
            self.online_momentum,
            self.synchronized,
        )
        concrete_mode = None if self.synchronized else _concrete_mode(mode)
        on_torch = keras.backend.backend() == "torch" and not self.synchronized
        if concrete_mode is not None:
            # Eager torch (Keras's default there) or JAX without `jit_compile`:
            # a Python branch on the mode's value costs nothing to trace (where
            # `jax.lax.cond` would trace and compile both branches on every
            # call), so the running mode is exactly `BatchNormalization`'s
            # arithmetic, with no batch moments and no write.
            mean, variance = self._statistics_now(inputs, mask, concrete_mode)
            return normalize(self, inputs, mean, variance)
        if on_torch and _torch_statistics_op_serves():
            # Under `torch.compile` (Keras's `jit_compile=True`; `predict` and
            # `evaluate` run without gradients, keras/src/backend/torch/trainer.py),
            # `ops.cond` is a Python `if` on the mode's value (keras/src/backend/
            # torch/core.py), which would recompile at every mode change: the
            # same branch runs inside an operator the compiler does not look into.
            mean, variance = _TORCH_STATISTICS(inputs, mask, id(self))
            return normalize(self, inputs, mean, variance)
        if self.synchronized or keras.backend.backend() == "torch":
            # A cross-replica all-reduce cannot sit inside a `cond` branch under
            # tf.distribute, and that operator has no derivative (a compiled
            # step that differentiates through the statistics, as Tent's does)
            # nor a place in an exported program (`torch.export`): compute the
            # batch moments on every call and select, which reads
            # the mode live in one graph.
            adapted_mean, adapted_variance, clean = adapted_statistics()
            is_running = mode == _RUNNING
            mean = ops.where(is_running, moving_mean, adapted_mean)
            variance = ops.where(is_running, moving_variance, adapted_variance)
        else:
            # Only the modes that need them pay for the batch moments (`tf.cond`,
            # `jax.lax.cond`: one branch runs).
            mean, variance, clean = ops.cond(
                mode == _RUNNING,
                lambda: (moving_mean, moving_variance, ops.ones((), "bool")),
                adapted_statistics,
            )
        self._write_online_statistics(ops.logical_and(mode == _ONLINE, clean), mean, variance)
        return normalize(self, inputs, mean, variance)

    def _statistics_now(self, inputs, mask, mode):
        """`(mean, variance)` of `mode` (a Python int) for `inputs`, computed op
        by op, after the `"online"` mode's write."""
        stored = tuple(ops.cast(v, inputs.dtype) for v in (self.moving_mean, self.moving_variance))
        if mode == _RUNNING:
            return stored
        mean, variance, clean = _adapted_statistics(
            inputs,
            mask,
            stored,
            self._mode.variable,
            self.axis,
            self.prior_strength,
            self.online_momentum,
        )
        if mode == _ONLINE:
            self._write_online_statistics(clean, mean, variance)
        return mean, variance

    def _write_online_statistics(self, write_now, mean, variance):
        """Stores the `"online"` mode's updated statistics when `write_now`; other
        modes, a batch holding NaN or inf, and statistics that are not finite,
        write nothing. A channel whose
        variance would be 0 (constant over the batch, with `online_momentum=0`)
        keeps its stored variance, as `kreg.adapt_batchnorm` does: a stored 0
        would divide the next inputs that vary by `sqrt(epsilon)`."""

        def write(now):
            kept = ops.where(variance > 0, variance, ops.cast(self.moving_variance, variance.dtype))
            # Statistics that are not finite (inputs whose squares overflow, or a
            # NaN reaching a synchronized layer's all-replica statistics from
            # another replica's batch) are never written.
            finite = ops.logical_and(ops.all(ops.isfinite(mean)), ops.all(ops.isfinite(kept)))
            now = ops.logical_and(now, finite)
            for variable, value in ((self.moving_mean, mean), (self.moving_variance, kept)):
                variable.assign(ops.where(now, value, ops.convert_to_tensor(variable)))
            return ops.ones((), "bool")

        if keras.backend.backend() in ("jax", "torch"):
            # JAX cannot assign state inside a `cond` branch (and torch would
            # recompile on the mode, as above): write on every call, the
            # unchanged values outside the online mode.
            write(write_now)
            return
        # TensorFlow: the other modes skip the checks as well as the write.
        ops.cond(write_now, lambda: write(True), lambda: ops.zeros((), "bool"))

    def get_config(self):
        return {
            **super().get_config(),
            "test_time_mode": self.test_time_mode,
            "prior_strength": self.prior_strength,
            "online_momentum": self.online_momentum,
        }
