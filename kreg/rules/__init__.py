"""The rules `kreg.diagnose` checks, one module per rule.

A rule module defines three names:

- `ID`: the rule id shown in findings, kebab-case (`"early-conv-dropout"`).
- `SEVERITY`: `"error"` (the model trains or predicts wrongly), `"warning"`
  (it works, worse than it should) or `"info"` (advice).
- `check(view)`: yields `(layers, message, fix)` for each place the rule finds,
  where `layers` lists layer paths, `message` says in one line what is wrong and
  why, and `fix` names the Keras or kreg layer (or call) to use instead.
  `view` is a `kreg.diagnose.ModelView`: the model's calls (layers and
  `keras.ops` operations) as one graph, nested models opened up (a
  `kreg.model_graph.FlatGraph`), and the training batch size;
  `kreg.rules._roles` says what part a layer plays.

To add a rule: write `kreg/rules/<your_rule>.py` with those three names, add its
module name to `RULE_MODULES` below, and add a model with the mistake and its
corrected twin to `tests/test_diagnose.py::CASES`.
"""

import importlib

RULE_MODULES = (
    "early_conv_dropout",
    "activation_before_batch_norm",
    "bias_before_batch_norm",
    "dropout_on_output",
    "per_timestep_dropout_in_rnn",
    "batch_norm_small_batch",
    "dropout_rate_range",
    "batch_norm_on_recurrent_state",
    "missing_normalization",
    "recurrent_dropout_unfused",
    "training_true_call",
    "monte_carlo_dropout",
    "foldable_batch_norm",
    "element_dropout_on_feature_map",
    "dropout_before_batch_norm",
    "constant_stochastic_depth",
)

RULES = tuple(importlib.import_module(f"{__name__}.{name}") for name in RULE_MODULES)
