"""Files that readers see either whole or not at all: written to a temporary file beside the
target, flushed to disk, then renamed over it (``os.replace`` is atomic on one file system)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_output", "write_atomic", "write_csv_frames"]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    On an exception (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` keeps
    its old content.  The parent folder is created if needed; the file gets the permissions
    :func:`open` would give it (``0o666`` less the umask), not the temporary file's ``0o600``.

    Parameters
    ----------
    path : path
    mode : {"wb", "w"}
        Binary or text.
    **open_kwargs
        Passed to :func:`open` (e.g. ``newline=""`` for CSV text).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        with open(tmp, mode, **open_kwargs) as f:  # by name: ``f.name`` names the file in errors
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask: read from ``/proc/self/status`` (Linux), else by setting it and setting it
    back (a moment in which a file another thread creates would get ``0o022``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write a file so that readers see either the old or the whole new content."""
    with atomic_output(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_csv_frames(path: str | os.PathLike[str], frames: Iterable[Any]) -> None:
    """Stream DataFrames into one CSV file, atomically (:func:`atomic_output`).

    The first frame writes the header; no index; floats with 6 significant digits (``%.6g``).
    No frame at all gives an empty file.

    Parameters
    ----------
    path : path
    frames : iterable of pandas.DataFrame
        Blocks of rows with the same columns, in file order; consumed one at a time.
    """
    with atomic_output(path, "w", newline="") as f:
        for i, frame in enumerate(frames):
            frame.to_csv(f, header=i == 0, index=False, float_format="%.6g")
