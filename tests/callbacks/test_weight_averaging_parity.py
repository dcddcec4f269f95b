"""WeightAveraging's arithmetic against PyTorch's `torch.optim.swa_utils`.

Given the same sequence of weights, the SWA average is `AveragedModel`'s, the
EMA is `AveragedModel` with `get_ema_multi_avg_fn` (and the formula), the
annealed learning rate is `SWALR`'s, and kreg's re-estimation gives the batch
norm statistics of `update_bn` on the same data and weights.
"""

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from kreg.callbacks.weight_average import WeightAverage
from kreg.callbacks.weight_average import annealed_learning_rate
from kreg.callbacks.weight_average import ema_decay

torch = pytest.importorskip("torch")
swa_utils = pytest.importorskip("torch.optim.swa_utils")


def _weight_sequence(steps=6, seed=0):
    rng = np.random.default_rng(seed)
    return [
        [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(3,)).astype("float32")]
        for _ in range(steps)
    ]


def _torch_average(sequence, **averaged_model_kwargs):
    linear = torch.nn.Linear(4, 3)
    averaged = swa_utils.AveragedModel(linear, **averaged_model_kwargs)
    for kernel, bias in sequence:
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel))
            linear.bias.copy_(torch.from_numpy(bias))
        averaged.update_parameters(linear)
    return [averaged.module.weight.detach().numpy(), averaged.module.bias.detach().numpy()]


def test_swa_average_is_averaged_models():
    sequence = _weight_sequence()
    average = WeightAverage()
    for weights in sequence:
        average.update_mean(weights)
    for mine, theirs in zip(average.values, _torch_average(sequence)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)


def test_ema_is_averaged_models_ema_and_the_formula():
    sequence, decay = _weight_sequence(), 0.8
    average = WeightAverage()
    for step, weights in enumerate(sequence, start=1):
        average.update_ema(weights, ema_decay(step, decay))
    theirs = _torch_average(sequence, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(decay))
    formula = [w.copy() for w in sequence[0]]
    for weights in sequence[1:]:
        formula = [decay * f + (1 - decay) * w for f, w in zip(formula, weights)]
    for mine, torch_value, by_hand in zip(average.values, theirs, formula):
        np.testing.assert_allclose(mine, torch_value, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(mine, by_hand, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_annealed_learning_rate_is_swalrs(strategy):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = swa_utils.SWALR(optimizer, swa_lr=0.01, anneal_epochs=3, anneal_strategy=strategy)
    for steps in range(1, 6):
        optimizer.step()
        scheduler.step()
        assert annealed_learning_rate(0.1, 0.01, steps, 3, strategy) == pytest.approx(
            optimizer.param_groups[0]["lr"]
        )


def _keras_cnn():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(epsilon=1e-3)(x))
    x = keras.layers.Conv2D(3, 3, use_bias=False)(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3)(x)
    return keras.Model(inputs, x)


def _torch_twin(model):
    """The same network in PyTorch (channels first), with the same weights."""
    first, second = (layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, bias=False), torch.nn.BatchNorm2d(4, eps=1e-3), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 3, 3, bias=False), torch.nn.BatchNorm2d(3, eps=1e-3),
    )  # fmt: skip
    with torch.no_grad():
        for conv, keras_conv in ((twin[0], first), (twin[3], second)):
            conv.weight.copy_(
                torch.from_numpy(
                    ops.convert_to_numpy(keras_conv.kernel).transpose(3, 2, 0, 1).copy()
                )
            )
        for norm, keras_norm in ((twin[1], norms[0]), (twin[4], norms[1])):
            norm.weight.copy_(torch.from_numpy(ops.convert_to_numpy(keras_norm.gamma)))
            norm.bias.copy_(torch.from_numpy(ops.convert_to_numpy(keras_norm.beta)))
    return twin, (twin[1], twin[4]), norms


def test_reestimated_statistics_are_update_bns():
    """On one batch holding all the data: the same means, and `update_bn`'s
    variances are the unbiased estimate of kreg's (Keras's batch norm keeps the
    population variance, as it normalizes with), so they differ by n / (n - 1)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 2.0, (20, 6, 6, 2)).astype("float32")
    model = _keras_cnn()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.normal(size=layer.beta.shape).astype("float32"))
    twin, torch_norms, keras_norms = _torch_twin(model)
    swa_utils.update_bn([torch.from_numpy(x.transpose(0, 3, 1, 2).copy())], twin)
    kreg.adapt_batchnorm(model, x, batch_size=len(x), verbose=0)
    for torch_norm, keras_norm, spatial in zip(torch_norms, keras_norms, (4 * 4, 2 * 2)):
        values = len(x) * spatial
        np.testing.assert_allclose(
            ops.convert_to_numpy(keras_norm.moving_mean),
            torch_norm.running_mean.numpy(),
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            ops.convert_to_numpy(keras_norm.moving_variance) * values / (values - 1),
            torch_norm.running_var.numpy(), rtol=1e-4, atol=1e-5,
        )  # fmt: skip
