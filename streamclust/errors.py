"""Exception types raised by streamclust.

Every error the package raises on purpose derives from :class:`StreamclustError`,
so callers (and the CLI) can tell "the input or the request is wrong" apart from
a bug.  Messages name the file, row or parameter concerned and, where one exists,
the fix.
"""

from __future__ import annotations

__all__ = [
    "StreamclustError",
    "InputError",
    "UnsafePickleError",
    "StoreError",
    "ModelError",
    "MemoryBudgetError",
    "SchedulerError",
    "StreamclustWarning",
    "one_line",
]


class StreamclustError(Exception):
    """Base class of every error streamclust raises deliberately."""


class InputError(StreamclustError, ValueError):
    """A raw input file or array is malformed: wrong shape, non-finite values,
    truncated, mismatched row counts, bad paths."""


class UnsafePickleError(InputError):
    """A pickle holds something other than a plain numeric numpy array, or would
    need to import or call code to be loaded."""


class StoreError(StreamclustError):
    """A Zarr store is missing, incomplete, of another schema version, or in use."""


class ModelError(StoreError, InputError):
    """A saved model folder is refused: edited or damaged files, another format, or values no
    fitted model holds.  A :class:`StoreError` (what loading a model always raised) and an
    :class:`InputError` (the model is an input of ``assign``)."""


class MemoryBudgetError(StreamclustError, ValueError):
    """A requested job cannot run within the given memory budget."""


class SchedulerError(StreamclustError, RuntimeError):
    """The Dask scheduler given by ``scheduler=`` cannot be reached, or the cluster
    went away during a run."""


class StreamclustWarning(UserWarning):
    """Base class of the warnings streamclust emits (errors in the test suite)."""


def one_line(exc: BaseException) -> str:
    """The text of a library's error on one line (fsspec and zarr errors may span several),
    for quoting inside streamclust's one-line messages."""
    return " ".join(str(exc).split())
