"""Store locations: a local folder or an fsspec URL.

Dependency-free, so the CLI can tell them apart while it parses arguments without
importing zarr.
"""

from __future__ import annotations

import os
import re

__all__ = ["is_url"]

#: ``scheme://`` or a chained ``scheme::`` (fsspec); two letters at least, since ``C://`` is a drive.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+(://|::)")


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://bucket/case.zarr``, ``file:///data/case.zarr``,
    ``simplecache::s3://...``) rather than a local path (a ``Path`` never is one)."""
    return isinstance(path, str) and _URL.match(path) is not None
