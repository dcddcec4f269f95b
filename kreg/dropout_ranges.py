"""The usual dropout rates by where the dropout sits: one table for the tuner and the linter.

`kreg.tuning.RegularizationSpace` searches each role's range, and `kreg.diagnose`
(`dropout-rate-range`, `early-conv-dropout`) warns about a rate above its role's
upper bound, so every rate the tuner can pick passes the linter. This module
imports nothing but the standard library: the rules read it without keras-tuner.

The convolution and dense rows are the tutorials' "Dropout Rate Guidelines":
early convolutions keep their low-level features (edges and textures every later
layer needs), late convolutions get mild regularization, dense layers (where
memorization happens) strong regularization.

The recurrent row covers dropout on a recurrent layer's inputs and outputs (kreg's
`ConsistentDropout`, one mask per sequence), a recurrent layer's own `dropout` and
`recurrent_dropout`, and `WeightDropLSTM`'s `weight_dropout`. Its bounds are those
of AWD-LSTM (Merity et al., 2018, https://arxiv.org/abs/1708.02182, section 5):
0.1 on the embedding, 0.25 between LSTM layers, 0.4 on the inputs and outputs
and 0.5 on the recurrent weights; Gal & Ghahramani (2016,
https://arxiv.org/abs/1512.05287) use 0.2-0.5 for masks held over a sequence.
"""

# {role: (low, high)}, rates in [0, 1).
USUAL_DROPOUT_RANGES = {
    "early_conv": (0.0, 0.1),
    "late_conv": (0.1, 0.3),
    "dense": (0.3, 0.5),
    "recurrent": (0.1, 0.5),
}


def early_conv_count(convolutions):
    """How many of a stack's first convolutions count as early: the first half, at least one.

    Early convolutions extract the edges and textures every later layer needs,
    which is why their dropout range is the lowest (kreg.rules._roles.early_convs
    applies the same split to a model's conv layers).
    """
    return max(1, convolutions // 2)
