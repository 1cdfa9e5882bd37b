"""The study: every descriptor set and mixture reduced, clustered with several algorithms,
k chosen, outliers screened, sets compared, outputs and report written, models saved.

:func:`run_study` is the entry point (:mod:`~streamclust.study.driver`).
"""

from streamclust.study.driver import (
    ALGORITHMS,
    OUTLIER_NEIGHBORS,
    OUTLIER_SCORES,
    MixSpec,
    SetResult,
    StudyResult,
    choose_k,
    outlier_index_neighbors,
    outlier_quality,
    parse_algorithms,
    parse_k_range,
    parse_mix,
    read_outlier_truth,
    run_study,
)

__all__ = ["ALGORITHMS", "OUTLIER_NEIGHBORS", "OUTLIER_SCORES", "MixSpec", "SetResult", "StudyResult", "choose_k",
           "outlier_index_neighbors", "outlier_quality", "parse_algorithms", "parse_k_range", "parse_mix",
           "read_outlier_truth", "run_study"]
