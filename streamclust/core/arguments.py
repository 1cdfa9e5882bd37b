"""Numeric arguments checked before any work, the same way from the API and the CLI.

Each check returns the value in its working type or raises :class:`~streamclust.errors.InputError`
with one line naming the parameter (``name=value``) and what it should be.
"""

from __future__ import annotations

import math

import numpy as np

from streamclust.errors import InputError

__all__ = ["MAX_SEED", "positive_int", "random_seed", "pca_components"]

#: Largest seed numpy's legacy generators (and so scikit-learn) accept.
MAX_SEED = 2**32 - 1


def _whole(value: object) -> int | None:
    """``value`` as an int when it is a whole number (not a bool, not a float), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def positive_int(name: str, value: object) -> int:
    """``value`` when it is an integer >= 1 (``n_init``, a row count)."""
    number = _whole(value)
    if number is None or number < 1:
        raise InputError(f"{name}={value!r} should be an integer >= 1.")
    return number


def random_seed(name: str, value: object) -> int:
    """``value`` when it is an integer seed in ``0 .. 2**32 - 1``."""
    number = _whole(value)
    if number is None or not 0 <= number <= MAX_SEED:
        raise InputError(f"{name}={value!r} should be an integer from 0 to {MAX_SEED}.")
    return number


def pca_components(name: str, value: object) -> int | float:
    """``value`` when it is a number of PCA components (an integer >= 1) or a fraction of the
    variance to keep (a float strictly between 0 and 1); a float with a whole value >= 1 (``64.0``)
    is that many components."""
    number = _whole(value)
    if number is not None and number >= 1:
        return number
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        if 0 < value < 1:
            return float(value)
        if value >= 1 and float(value).is_integer():
            return int(value)
    raise InputError(f"{name}={value!r} should be a whole number of components >= 1 (e.g. 64) or a "
                     "fraction of the variance between 0 and 1 (e.g. 0.9).")
