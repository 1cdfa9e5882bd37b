"""The checks :func:`~streamclust.study.run_study` makes of its arguments before any work: numbers
in range (:mod:`streamclust.core.arguments`) and an output folder that writing cannot damage an input,
a store or a model through (:mod:`streamclust.core.paths`).  The store and the sets, k, algorithms and
mixtures are checked against each other next (``_plan``), then the metadata, images and known outliers
are read (:mod:`~streamclust.study.case_files`), all before the run starts."""

from __future__ import annotations

import os
from typing import Any

from streamclust.core.arguments import pca_components, positive_int, random_seed
from streamclust.core.paths import check_output_path

__all__ = ["check_study_arguments"]


def check_study_arguments(store_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], n_components: Any,
                          n_init: Any, random_state: Any, outlier_neighbors: Any, *, metadata: Any, images: Any,
                          outlier_truth: Any) -> None:
    """Raise :class:`~streamclust.errors.InputError` naming the first bad argument of
    :func:`~streamclust.study.run_study` (same names; see the module docstring)."""
    pca_components("n_components", n_components)
    positive_int("n_init", n_init)
    random_seed("random_state", random_state)
    positive_int("outlier_neighbors", outlier_neighbors)
    check_output_path(out_dir, "folder", inputs=[store_path, metadata, images, outlier_truth])
