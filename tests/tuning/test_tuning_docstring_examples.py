"""The `>>>` examples in kreg.tuning's docstrings run and print what they claim."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module_name", ["kreg.tuning.losses", "kreg.tuning.regularization_space"])
def test_examples(module_name):
    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed, result
