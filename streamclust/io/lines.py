"""Text files walked in bounded byte chunks, so that no line longer than the memory budget allows is ever held.

Descriptor CSVs and metadata files hold one image per line.  ``readline()``, ``for line in f`` or a
parser that grows its buffer to the length of a line would hold a 1 GB line whole (a sparse file,
a file of separators), several times over.  :func:`scan_lines` reads the file once, 1 MiB at a
time, counts its lines and refuses the first line longer than :func:`line_limit` allows, naming
its number; :func:`read_span` then reads a line it located.

A line *holds data* unless it is empty or a lone ``"\\r"`` (the blank lines parsers skip).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamclust.errors import InputError

__all__ = ["LineScan", "line_limit", "read_span", "scan_lines"]

#: Bytes read at a time by :func:`scan_lines`.
_READ_BYTES = 1 << 20
#: A line may take ``budget / _LINE_SHARE`` bytes: 8 MiB at the 1 GiB default budget, where a
#: descriptor line of 2-byte values (``0,``) parses to 32 MiB of float64.
_LINE_SHARE = 128
_NEWLINE = ord("\n")
_CR = ord("\r")


def line_limit(budget: int) -> int:
    """The longest line, in bytes (its newline excluded), that a memory budget of ``budget`` bytes admits."""
    return max(1, budget // _LINE_SHARE)


@dataclass
class LineScan:
    """What one pass over a text file found.

    Attributes
    ----------
    n_bytes : int
        Size of the file.
    n_data_lines : int
        Lines holding data (not empty, not a lone ``"\\r"``).
    longest : int
        Bytes of the longest line, its newline excluded.
    head : list of (line number, start, stop)
        The first data lines asked for: their 1-based line number and byte span (``"\\r\\n"`` excluded).
    """

    n_bytes: int = 0
    n_data_lines: int = 0
    longest: int = 0
    head: list[tuple[int, int, int]] = field(default_factory=list)


def _too_long(path: Path, line: int, limit: int, budget: int) -> InputError:
    return InputError(
        f"{path}: line {line:,} is longer than {limit:,} bytes, the longest line a memory budget of "
        f"{budget / 2**20:,.0f} MiB admits (one line per image); is it the right file? A larger "
        "--memory admits longer lines."
    )


def scan_lines(path: str | os.PathLike[str], budget: int, *, keep: int = 1) -> LineScan:
    """Walk ``path`` once in 1 MiB reads: count its data lines and locate the first ``keep`` of them.

    Memory: one read and its newline positions (at most 9 MiB), whatever the lines' lengths.

    Raises
    ------
    InputError
        A line is longer than :func:`line_limit` of ``budget`` (named by its 1-based number);
        the file cannot be read.
    """
    path = Path(path)
    limit = line_limit(budget)
    scan = LineScan()
    line_no = 1  # number of the line in progress
    line_start = 0  # its byte offset
    partial = 0  # its bytes read so far
    partial_cr = False  # whether those are exactly "\r"
    offset = 0  # byte offset of the chunk
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_READ_BYTES), b""):
                buf = np.frombuffer(chunk, np.uint8)
                ends = np.flatnonzero(buf == _NEWLINE)
                if not len(ends):
                    partial_cr = partial == 0 and chunk == b"\r"
                    partial += len(chunk)
                    if partial > limit:
                        raise _too_long(path, line_no, limit, budget)
                    offset += len(chunk)
                    continue
                lengths = np.diff(ends, prepend=-1) - 1  # bytes of each line ending in this chunk
                lengths[0] += partial
                over = np.flatnonzero(lengths > limit)
                if len(over):
                    raise _too_long(path, line_no + int(over[0]), limit, budget)
                empty = (lengths == 0) | ((lengths == 1) & (buf[np.maximum(ends - 1, 0)] == _CR))
                empty[0] = partial + int(ends[0]) == 0 or (
                    partial + int(ends[0]) == 1 and (partial_cr if partial else bool(buf[0] == _CR)))
                data = np.flatnonzero(~empty)
                for i in data[: max(0, keep - len(scan.head))].tolist():
                    start = line_start if i == 0 else offset + int(ends[i - 1]) + 1
                    stop = offset + int(ends[i])
                    scan.head.append((line_no + i, start, stop))
                scan.n_data_lines += len(data)
                scan.longest = max(scan.longest, int(lengths.max()))
                line_no += len(ends)
                line_start = offset + int(ends[-1]) + 1
                partial = len(chunk) - int(ends[-1]) - 1
                partial_cr = partial == 1 and chunk[-1] == _CR
                offset += len(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc}).") from exc
    scan.longest = max(scan.longest, partial)
    if partial and not partial_cr:  # a last line without a newline
        scan.n_data_lines += 1
        if len(scan.head) < keep:
            scan.head.append((line_no, line_start, offset))
    scan.n_bytes = offset
    return scan


def read_span(path: str | os.PathLike[str], start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of ``path`` (a line :func:`scan_lines` located), a trailing ``"\\r"`` removed."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(stop - start)
    return data[:-1] if data.endswith(b"\r") else data

