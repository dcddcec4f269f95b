"""Shared by the fused-layer and fold tests."""

import numpy as np


def randomize_batch_norm(bn, seed=0):
    """Non-trivial moving statistics and affine parameters, as after real training."""
    rng = np.random.default_rng(seed)
    shape = bn.moving_mean.shape
    bn.moving_mean.assign(rng.standard_normal(shape).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.2, 3.0, shape).astype("float32"))
    if bn.scale:
        bn.gamma.assign(rng.standard_normal(shape).astype("float32"))
    if bn.center:
        bn.beta.assign(rng.standard_normal(shape).astype("float32"))
