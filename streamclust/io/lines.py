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
    head : list of (line number, start, stop)
        The first data lines asked for: their 1-based line number and byte span (``"\\n"`` excluded).
    """

    n_bytes: int = 0
    n_data_lines: int = 0
    head: list[tuple[int, int, int]] = field(default_factory=list)


def _too_long(path: Path, line: int, limit: int, budget: int) -> InputError:
    return InputError(
        f"{path}: line {line:,} is longer than {limit:,} bytes, the longest line a memory budget of "
        f"{budget / 2**20:,.0f} MiB admits (one line per image); is it the right file? A larger "
        "--memory admits longer lines."
    )


@dataclass
class _Scanner:
    """The state of :func:`scan_lines` between two reads."""

    path: Path
    budget: int
    keep: int
    scan: LineScan = field(default_factory=LineScan)
    line_no: int = 1  # number of the line in progress
    line_start: int = 0  # its byte offset
    partial: int = 0  # its bytes read so far
    partial_cr: bool = False  # whether those are exactly "\r"
    offset: int = 0  # byte offset of the next read
    tail: bytes = b"\n\n"  # the last two bytes read (a line start before the first)

    def feed(self, chunk: bytes) -> None:
        """Account for the next read (at most :func:`line_limit` bytes, so only a line running over
        the edges of a read can be too long)."""
        limit = line_limit(self.budget)
        first, last = chunk.find(b"\n"), chunk.rfind(b"\n")
        if first < 0:
            self.partial_cr = self.partial == 0 and chunk == b"\r"
            self.partial += len(chunk)
            if self.partial > limit:
                raise _too_long(self.path, self.line_no, limit, self.budget)
        else:
            if self.partial + first > limit:
                raise _too_long(self.path, self.line_no, limit, self.budget)
            if len(self.scan.head) < self.keep:
                self._locate(chunk)
            newlines = chunk.count(b"\n")
            self.scan.n_data_lines += newlines - self._blank_lines(chunk)
            self.line_no += newlines
            self.line_start = self.offset + last + 1
            self.partial = len(chunk) - last - 1
            self.partial_cr = self.partial == 1 and chunk[-1] == _CR
        self.tail = (self.tail + chunk)[-2:]
        self.offset += len(chunk)

    def _blank_lines(self, chunk: bytes) -> int:
        """Empty and lone-``"\\r"`` lines ending in ``chunk``: a ``"\\n"`` after a line end, or after
        ``"\\r"`` after a line end (vectorised: no per-line work)."""
        window = np.frombuffer(self.tail + chunk, np.uint8)
        newline = window == _NEWLINE
        blank = int(np.count_nonzero(newline[2:] & newline[1:-1]))
        if b"\r" in chunk or b"\r" in self.tail:
            blank += int(np.count_nonzero(newline[2:] & (window[1:-1] == _CR) & newline[:-2]))
        return blank

    def _locate(self, chunk: bytes) -> None:
        """Record the spans of the first data lines ending in ``chunk`` until ``keep`` are known."""
        pos, line_no, start = 0, self.line_no, self.line_start
        while len(self.scan.head) < self.keep and (end := chunk.find(b"\n", pos)) >= 0:
            text = chunk[pos:end] if start >= self.offset else None
            length = end - pos + (self.partial if start < self.offset else 0)
            lone_cr = (text == b"\r") if text is not None else (length == 1 and self.partial_cr)
            if length and not lone_cr:
                self.scan.head.append((line_no, start, self.offset + end))
            pos, line_no, start = end + 1, line_no + 1, self.offset + end + 1

    def finish(self) -> LineScan:
        """The scan, once the whole file was fed."""
        if self.partial and not self.partial_cr:  # a last line without a newline
            self.scan.n_data_lines += 1
            if len(self.scan.head) < self.keep:
                self.scan.head.append((self.line_no, self.line_start, self.offset))
        self.scan.n_bytes = self.offset
        return self.scan


def scan_lines(path: str | os.PathLike[str], budget: int, *, keep: int = 1) -> LineScan:
    """Walk ``path`` once in reads of at most 1 MiB: count its data lines and locate the first ``keep``.

    Memory: one read and a few masks of it (about 4 MiB), whatever the lines' lengths.

    Raises
    ------
    InputError
        A line is longer than :func:`line_limit` of ``budget`` (named by its 1-based number);
        the file cannot be read.
    """
    path = Path(path)
    scanner = _Scanner(path, budget, keep)
    read = min(_READ_BYTES, line_limit(budget))
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(read), b""):
                scanner.feed(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc}).") from exc
    return scanner.finish()


def read_span(path: str | os.PathLike[str], start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of ``path`` (a line :func:`scan_lines` located), a trailing ``"\\r"`` removed."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(stop - start)
    return data[:-1] if data.endswith(b"\r") else data

