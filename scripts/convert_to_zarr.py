#!/usr/bin/env python
"""Convert a case folder of raw descriptor files into a streamclust Zarr store.

A thin script around ``streamclust convert`` for people who prefer scripts:

    python scripts/convert_to_zarr.py CASE_DIR -o case.zarr [--descriptor NAME=FILE ...]

Run with --help for every option.
"""

import sys

from streamclust.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
