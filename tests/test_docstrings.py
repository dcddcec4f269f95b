"""The `Example:` in every public docstring runs and prints what it claims."""

import doctest
import importlib

import keras
import numpy as np
import pytest

import kreg

MODULES = [
    "kreg.layers.consistent_dropout",
    "kreg.layers.consistent_dropout_cell",
    "kreg.layers.weight_drop_rnn",
    "kreg.layers.zoneout_rnn",
    "kreg.layers.embedding_dropout",
    "kreg.layers.activation_regularization",
    "kreg.layers.conv1d_batch_norm",
    "kreg.layers.conv2d_batch_norm",
    "kreg.layers.conv3d_batch_norm",
    "kreg.layers.dense_batch_norm",
    "kreg.layers.depthwise_conv2d_batch_norm",
    "kreg.layers.adaptive_batch_normalization",
    "kreg.fold",
    "kreg.adapt.adaptation",
    "kreg.adapt.online_adapter",
    "kreg.adapt.test_time_mode",
    "kreg.convert",
    "kreg.callbacks.precise_batch_norm",
    "kreg.layers.adjustable_dropout",
    "kreg.dropout_conversion",
    "kreg.callbacks.dropout_schedule",
    "kreg.callbacks.weight_averaging",
    "kreg.diagnose",
    "kreg.monte_carlo",
    "kreg.adapt.report",
    "kreg.stochastic_depth",
    "kreg.callbacks.early_stopping_with_checkpoint",
    "kreg.callbacks.checkpoint_writer",
    "kreg.callbacks.plotting",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    globs = {"keras": keras, "np": np, **{name: getattr(kreg, name) for name in kreg.__all__}}
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, globs=globs) if t.examples]
    assert tests, f"{module_name} has no docstring examples"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring examples failed"
