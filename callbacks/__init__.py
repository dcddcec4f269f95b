"""Callbacks for `model.fit`, installed as `kreg.callbacks`.

This folder sits at the top of the repository and installs as a subpackage of
kreg (see `package-dir` in pyproject.toml). Its callbacks arrive with later work.
"""

__all__ = []
