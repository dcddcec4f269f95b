"""keras-tuner search spaces over regularization, installed as `kreg.tuning`.

This folder sits at the top of the repository and installs as a subpackage of
kreg (see `package-dir` in pyproject.toml). keras-tuner is imported only here.
Its search space arrives with later work.
"""

__all__ = []
