"""Images of a case read safely from a zip or a folder, whatever the case holds.

:class:`ImageSource` -- ``ImageSource.open(root)`` for a ``.zip`` file or a
folder of images; :meth:`ImageSource.read` returns a ``PIL.Image`` or ``None``
and records why in :attr:`ImageSource.skipped`.  Nothing in an untrusted case
can make it read outside the root, exhaust memory or raise:

- paths (the store ids) are normalised (backslashes -> ``/``) and refused
  when absolute, with a drive letter (``C:``), a ``..`` component or a NUL
  (:func:`safe_relpath`);
- in a folder, a path whose real location (symlinks resolved) is outside the
  root, or that is not a regular file, is refused;
- in a zip, entries whose names are unsafe in the same way are never
  readable (listed in :attr:`ZipImageSource.refused_entries`); an entry
  whose declared size exceeds ``max_bytes`` (20 MB) is skipped without being
  read, and every read is bounded to ``max_bytes + 1`` bytes, whatever the
  header claims (zip bombs); encrypted entries are skipped;
- images of more than ``max_pixels`` pixels (checked from the header,
  before decoding) are skipped; only common raster formats are decoded;
  corrupt or truncated files are skipped with the decoder's message.

A path with no entry of its exact name is looked up by its **longest common path suffix** with the
entries (:class:`SuffixIndex`): a zip whose members sit under ``images/00001/000001.jpg`` serves the
store path ``veriwild/1/00001/000001.jpg``.  The match must be unambiguous (two entries sharing the
longest suffix: no match) and cover the file name and its folder, unless one path is wholly the
other's suffix (a flat ``000001.jpg``).  Only safe entry names are indexed and every read goes through
the checks above, so matching never reaches outside the root.  :meth:`ImageSource.match_paths` counts
how many paths are found, without reading any image.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from streamclust.errors import InputError
from streamclust.report.zipdir import BadZip, ZipDirectory

__all__ = [
    "UnsafePathError",
    "safe_relpath",
    "ImageSource",
    "FolderImageSource",
    "ZipImageSource",
    "SuffixIndex",
    "PathMatch",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "IMAGE_FORMATS",
]

#: Largest image file read (bytes).
MAX_IMAGE_BYTES = 20 * 1000 * 1000

#: Largest image decoded (pixels; 40 megapixels, ~120 MB as RGB).
MAX_IMAGE_PIXELS = 40_000_000

#: Formats decoded (Pillow names).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePathError(InputError):
    """An image path could lead outside the image root."""


def safe_relpath(path: Any) -> str:
    """Normalise an image path to a safe relative POSIX path, or refuse it.

    Backslashes become ``/``; empty and ``.`` components are dropped.

    Raises
    ------
    UnsafePathError
        For non-strings, empty paths, NUL characters, absolute paths (``/x``,
        ``\\\\server\\x``), drive letters (``C:x``, ``C:\\x``) and any ``..``
        component.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise UnsafePathError(f"image path {path!r} is not a string.")
    if "\x00" in path:
        raise UnsafePathError(f"image path {path!r} contains a NUL character.")
    p = path.replace("\\", "/")
    if p.startswith("/"):
        raise UnsafePathError(f"image path {path!r} is absolute; paths must be relative to the image root.")
    if _DRIVE.match(p):
        raise UnsafePathError(f"image path {path!r} has a drive letter; paths must be relative.")
    parts = [s for s in p.split("/") if s not in ("", ".")]
    if any(s == ".." for s in parts):
        raise UnsafePathError(f"image path {path!r} has a '..' component.")
    if not parts:
        raise UnsafePathError(f"image path {path!r} is empty.")
    return "/".join(parts)


#: The character after ``/``: keys starting with ``P + "/"`` sort in ``[P + "/", P + _AFTER_SLASH)``.
_AFTER_SLASH = chr(ord("/") + 1)


class SuffixIndex:
    """Entry names of an image source, searchable by their longest common path suffix with a path.

    The names are kept once, as their components reversed and joined by ``/``
    (``images/00001/000001.jpg`` -> ``000001.jpg/00001/images``) in one sorted list, so that the
    entries ending with the same last ``L`` components form a contiguous run found by bisection.
    Memory: one string per entry (~40 MB for 416,314 entries); a lookup costs a few bisections
    per component of the path.

    Parameters
    ----------
    names : iterable of str
        Safe relative entry names with forward slashes (as :func:`safe_relpath` returns them).
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._keys = sorted({"/".join(reversed(name.split("/"))) for name in names})

    def __len__(self) -> int:
        return len(self._keys)

    def _count(self, prefix: str) -> tuple[int, int]:
        """``(count, first)``: how many keys equal ``prefix`` or start with ``prefix + "/"``, and the
        index of one of them (meaningful when the count is 1)."""
        keys = self._keys
        exact = bisect.bisect_left(keys, prefix)
        n_exact = int(exact < len(keys) and keys[exact] == prefix)
        lo = bisect.bisect_left(keys, prefix + "/")
        hi = bisect.bisect_left(keys, prefix + _AFTER_SLASH, lo)
        return n_exact + hi - lo, exact if n_exact else lo

    def resolve(self, rel: str) -> tuple[str | None, int, int]:
        """The entry sharing the longest path suffix with ``rel``.

        Parameters
        ----------
        rel : str
            A safe relative path (forward slashes).

        Returns
        -------
        name : str or None
            The entry, or None when no entry shares enough of the path or several tie.
        suffix : int
            Components in the longest common suffix (0: not even the file name).
        ties : int
            Entries sharing that suffix (> 1: ambiguous).
        """
        parts = rel.split("/")[::-1]
        best, where, ties = 0, -1, 0
        for length in range(1, len(parts) + 1):
            count, first = self._count("/".join(parts[:length]))
            if count == 0:
                break
            best, where, ties = length, first, count
        if ties != 1:
            return None, best, ties
        name_parts = self._keys[where].split("/")
        whole = best in (len(parts), len(name_parts))  # one path is wholly the other's suffix
        if best < 2 and not whole:  # only the file name is shared; its folders differ
            return None, best, ties
        return "/".join(reversed(name_parts)), best, ties


@dataclass
class PathMatch:
    """How many of a sequence of paths an image source holds (:meth:`ImageSource.match_paths`)."""

    #: The image source (zip file or folder).
    source: str
    n_paths: int = 0
    #: Paths found under their exact name.
    exact: int = 0
    #: Paths found through their longest common path suffix with an entry.
    by_suffix: int = 0
    #: Paths whose longest common suffix two or more entries share (not matched).
    ambiguous: int = 0
    #: Paths refused as unsafe (``..``, absolute, ...).
    unsafe: int = 0
    #: Up to 3 paths not found, and up to 3 ambiguous ones with their tie count, as examples.
    missing_examples: list[str] = field(default_factory=list)
    ambiguous_examples: list[tuple[str, int]] = field(default_factory=list)

    @property
    def found(self) -> int:
        """Paths found (exactly or by suffix)."""
        return self.exact + self.by_suffix

    @property
    def share(self) -> float:
        """``found / n_paths`` (0 for no path)."""
        return self.found / self.n_paths if self.n_paths else 0.0

    def text(self) -> str:
        """One line, e.g. ``19,873 of 20,000 paths found in /x/images.zip (99.4%; 19,873 by a common path
        suffix; 12 ambiguous, e.g. a/1.jpg: 2 entries; not found, e.g. b/2.jpg)``."""
        details = []
        if self.by_suffix:
            details.append(f"{self.by_suffix:,} by a common path suffix")
        if self.ambiguous:
            examples = ", ".join(f"{p}: {n} entries" for p, n in self.ambiguous_examples)
            details.append(f"{self.ambiguous:,} ambiguous (two or more entries share their longest "
                           f"suffix), e.g. {examples}")
        if self.unsafe:
            details.append(f"{self.unsafe:,} refused as unsafe")
        if self.missing_examples:
            details.append(f"not found, e.g. {', '.join(self.missing_examples)}")
        return (f"{self.found:,} of {self.n_paths:,} paths found in {self.source} ({self.share:.1%}"
                + "".join(f"; {d}" for d in details) + ")")


class ImageSource:
    """Images of a case by relative path; see the module docstring for the safety rules.

    Use :meth:`open`; subclasses implement :meth:`_read_bytes`, :meth:`_exists`, :meth:`_entry_names` and
    :meth:`_root_name`.

    Attributes
    ----------
    skipped : list of (path, reason)
        Every read that returned ``None``, in order.
    max_bytes, max_pixels : int
        Caps of one image file and one decoded image.
    """

    def __init__(self, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS,
                 prefix: str = "") -> None:
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.prefix = safe_relpath(prefix) if prefix else ""
        self.skipped: list[tuple[str, str]] = []
        self._suffix_index: SuffixIndex | None = None

    @staticmethod
    def open(root: str | os.PathLike[str], *, max_bytes: int = MAX_IMAGE_BYTES,
             max_pixels: int = MAX_IMAGE_PIXELS, prefix: str = "") -> ImageSource:
        """An image source for a ``.zip`` file or a folder.

        Parameters
        ----------
        root : path
            A zip file (e.g. the demo's ``images.zip``) or a folder.
        max_bytes : int
            Largest image file read (default 20 MB).
        max_pixels : int
            Largest image decoded (default 40 megapixels).
        prefix : str
            Prepended to every path read (e.g. ``"images"`` when the ids are
            relative to a sub-folder of the zip).

        Raises
        ------
        InputError
            If ``root`` does not exist or is neither a folder nor a readable zip.
        """
        p = Path(root)
        if p.is_dir():
            return FolderImageSource(p, max_bytes=max_bytes, max_pixels=max_pixels, prefix=prefix)
        if p.is_file():
            if not zipfile.is_zipfile(p):
                raise InputError(f"{p}: not a zip file nor a folder of images.")
            return ZipImageSource(p, max_bytes=max_bytes, max_pixels=max_pixels, prefix=prefix)
        raise InputError(f"{p}: no such image folder or zip file.")

    # -- finding ------------------------------------------------------------ #
    def _read_bytes(self, rel: str) -> tuple[bytes | None, str | None]:  # pragma: no cover
        raise NotImplementedError

    def _exists(self, rel: str) -> bool:  # pragma: no cover
        """Whether an entry of the exact name ``rel`` is there (no image read)."""
        raise NotImplementedError

    def _entry_names(self) -> Iterable[str]:  # pragma: no cover
        """Every safe entry name (files only), normalised by :func:`safe_relpath`."""
        raise NotImplementedError

    def _root_name(self) -> Path:  # pragma: no cover
        """The zip file or the folder."""
        raise NotImplementedError

    @property
    def suffix_index(self) -> SuffixIndex:
        """The :class:`SuffixIndex` of the entry names, built at first use."""
        if self._suffix_index is None:
            self._suffix_index = SuffixIndex(self._entry_names())
        return self._suffix_index

    def _relative(self, path: Any) -> str:
        """``path`` made safe (:func:`safe_relpath`) with the prefix; raises :class:`UnsafePathError`."""
        rel = safe_relpath(path)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def match_paths(self, paths: Iterable[Any], *, source: str | None = None) -> PathMatch:
        """Count how many ``paths`` this source holds, exactly or by their longest common suffix.

        No image is read: zip members are looked up in the central directory, files in the folder
        are stat'ed, and the entry names are indexed once (:attr:`suffix_index`) for the paths
        missing under their exact name.

        Parameters
        ----------
        paths : iterable of str
            E.g. the store ids, in blocks or whole.
        source : str, optional
            How :meth:`PathMatch.text` names this source (default: its root).
        """
        match = PathMatch(source=source or str(self._root_name()))
        for path in paths:
            match.n_paths += 1
            try:
                rel = self._relative(path)
            except UnsafePathError:
                match.unsafe += 1
                continue
            if self._exists(rel):
                match.exact += 1
                continue
            name, _, ties = self.suffix_index.resolve(rel)
            if name is not None:
                match.by_suffix += 1
            elif ties > 1:
                match.ambiguous += 1
                if len(match.ambiguous_examples) < 3:
                    match.ambiguous_examples.append((str(path), ties))
            elif len(match.missing_examples) < 3:
                match.missing_examples.append(str(path))
        return match

    def _read_found(self, rel: str) -> tuple[bytes | None, str | None]:
        """The bytes of ``rel``, or of the entry sharing its longest path suffix when ``rel`` is missing."""
        data, reason = self._read_bytes(rel)
        if data is not None or not str(reason).startswith("missing"):
            return data, reason
        name, suffix, ties = self.suffix_index.resolve(rel)
        if name is not None:
            return self._read_bytes(name)
        if ties > 1:
            tail = "/".join(rel.split("/")[-suffix:])
            return None, f"missing: ambiguous, {ties} entries end with {tail!r}"
        return data, reason

    # -- reading ------------------------------------------------------------ #
    def read_with_reason(self, path: Any, *, max_side: int | None = None
                         ) -> tuple[Image.Image | None, str | None]:
        """``(image, None)`` or ``(None, reason)``; never raises for bad input.

        Parameters
        ----------
        path : str
            Image path relative to the root (forward or back slashes).
        max_side : int, optional
            Decode JPEGs at a reduced scale (draft mode) and shrink the result
            so that no side exceeds this (keeps memory and time low for thumbnails).
        """
        try:
            rel = self._relative(path)
        except UnsafePathError as exc:
            return None, f"unsafe path: {exc}"
        try:
            data, reason = self._read_found(rel)
        except Exception as exc:  # I/O errors, broken zip members, ...
            return None, f"unreadable: {type(exc).__name__}: {exc}"
        if data is None:
            return None, reason
        return self._decode(data, max_side)

    def read(self, path: Any, *, max_side: int | None = None) -> Image.Image | None:
        """The RGB image at ``path``, or ``None`` (the reason goes to :attr:`skipped`)."""
        img, reason = self.read_with_reason(path, max_side=max_side)
        if img is None:
            self.skipped.append((str(path), str(reason)))
        return img

    def _decode(self, data: bytes, max_side: int | None) -> tuple[Image.Image | None, str | None]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
                w, h = im.size
                if w <= 0 or h <= 0:
                    return None, f"corrupt image: size {w}x{h}"
                if w * h > self.max_pixels:
                    return None, (f"image too large: {w}x{h} = {w * h:,} pixels "
                                  f"> cap {self.max_pixels:,}")
                if max_side and im.format == "JPEG":
                    im.draft("RGB", (int(max_side), int(max_side)))
                im.load()
                im = im.convert("RGB")
                if max_side and max(im.size) > max_side:
                    im.thumbnail((int(max_side), int(max_side)), Image.Resampling.LANCZOS)
                return im, None
        except Exception as exc:  # corrupt, truncated, unsupported, bomb, ...
            return None, f"corrupt image: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Release the underlying file (zip)."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FolderImageSource(ImageSource):
    """Images in a folder; symlinks may point anywhere *inside* the root only."""

    def __init__(self, root: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).resolve(strict=True)

    def _root_name(self) -> Path:
        return self.root

    def _regular_file(self, rel: str) -> tuple[Path | None, os.stat_result | None, str | None]:
        """``(real path, its stat, None)`` of the regular file ``rel`` inside the root, or ``(None, None, reason)``."""
        full = self.root.joinpath(*PurePosixPath(rel).parts)
        try:
            real = full.resolve(strict=True)
        except FileNotFoundError:
            return None, None, "missing: no such file"
        except (OSError, RuntimeError) as exc:  # symlink loops, permissions
            return None, None, f"unreadable: {exc}"
        if not real.is_relative_to(self.root):
            return None, None, "unsafe path: resolves (through a symlink) outside the image root"
        st = real.stat()
        if not stat.S_ISREG(st.st_mode):
            return None, None, "not a regular file"
        return real, st, None

    def _exists(self, rel: str) -> bool:
        return self._regular_file(rel)[0] is not None

    def _entry_names(self) -> Iterable[str]:
        """The files under the root, walked without following symlinked folders (symlinked files
        are listed; reading them still checks where they lead)."""
        for folder, _, files in os.walk(self.root, followlinks=False):
            base = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                rel = name if base == "." else f"{base}/{name}"
                try:
                    if safe_relpath(rel) == rel:  # a name with a backslash would read as another path
                        yield rel
                except UnsafePathError:
                    continue

    def _read_bytes(self, rel: str) -> tuple[bytes | None, str | None]:
        real, st, reason = self._regular_file(rel)
        if real is None or st is None:
            return None, reason
        if st.st_size > self.max_bytes:
            return None, f"file too large: {st.st_size:,} bytes > cap {self.max_bytes:,}"
        with open(real, "rb") as f:
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            return None, f"file too large: more than {self.max_bytes:,} bytes"
        return data, None


class ZipImageSource(ImageSource):
    """Images in a zip file, read member by member with bounded reads.

    A path is looked up (after :func:`safe_relpath`) under its exact member
    name, so members with unsafe names (``../x``, ``/x``, ``C:/x``) can never be
    matched; members stored with backslashes or ``./`` components are found
    under their normalised name.  Opening parses the zip's central directory into
    compact arrays (:class:`~streamclust.report.zipdir.ZipDirectory`): 86 MB for
    416,314 members, where :mod:`zipfile`'s objects took 241 MB.
    """

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        try:
            self._dir = ZipDirectory(self.path)
        except (BadZip, OSError) as exc:
            raise InputError(f"{self.path}: cannot open as a zip file ({exc}).") from exc
        # members whose stored name is not already the normalised one
        self._alias: dict[str, int] = {}
        for i, name in enumerate(self._dir.names):
            if "\\" in name or "//" in name or name.startswith("./") or "/./" in name:
                try:
                    norm = safe_relpath(name)
                except UnsafePathError:
                    continue
                if not self._dir.is_dir(i):
                    self._alias.setdefault(norm, i)

    @property
    def refused_entries(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of every member whose name is unsafe (never readable)."""
        out = []
        for name in self._dir.names:
            try:
                safe_relpath(name)
            except UnsafePathError as exc:
                out.append((name, str(exc)))
        return out

    def __len__(self) -> int:
        return len(self._dir)

    def _root_name(self) -> Path:
        return self.path

    def _exists(self, rel: str) -> bool:
        return self._lookup(rel) is not None

    def _entry_names(self) -> Iterable[str]:
        for i, name in enumerate(self._dir.names):
            if self._dir.is_dir(i):
                continue
            try:
                yield safe_relpath(name)
            except UnsafePathError:
                continue

    def _lookup(self, rel: str) -> int | None:
        i = self._dir.find(rel)
        if i is None:
            return self._alias.get(rel)
        return None if self._dir.is_dir(i) else i

    def _read_bytes(self, rel: str) -> tuple[bytes | None, str | None]:
        i = self._lookup(rel)
        if i is None:
            return None, "missing: no such entry in the zip"
        return self._dir.read(i, self.max_bytes)

    def close(self) -> None:
        self._dir.close()
