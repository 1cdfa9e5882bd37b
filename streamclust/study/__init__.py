"""The study: every descriptor set and mixture reduced, clustered with several algorithms,
k chosen, outliers screened, sets compared, outputs and report written, models saved.

- :mod:`~streamclust.study.driver`: :func:`run_study`, the entry point, and the order of the steps.
- :mod:`~streamclust.study.rules`: what a study accepts and how it chooses (k, the best clustering).
- :mod:`~streamclust.study.algorithms`: the registry of clustering algorithms compared with k-means.
- :mod:`~streamclust.study.algorithm_comparison`: how the algorithms of a set compare, the one recommended.
- :mod:`~streamclust.study.steps`: the steps for one set or mixture, writing the run's arrays.
- :mod:`~streamclust.study.truth`: known outliers and how the flags agree with them.
- :mod:`~streamclust.study.outputs`: ``results.csv``, ``outliers.csv`` and the staged publication.
- :mod:`~streamclust.study.reporting`: the report's data, from a :class:`StudyResult`.
- :mod:`~streamclust.study.results`: :class:`SetResult`, :class:`StudyResult`.
"""

from streamclust.study.algorithm_comparison import ALGORITHM_RULE, AlgorithmComparison
from streamclust.study.algorithms import ALGORITHMS, parse_algorithms
from streamclust.study.driver import run_study
from streamclust.study.results import SetResult, StudyResult
from streamclust.study.rules import (
    BEST_RULE,
    K_RULE,
    K_TIE_MARGIN,
    LIBRARY_BASELINE,
    MIX_RULE,
    OUTLIER_NEIGHBORS,
    OUTLIER_SCORES,
    MixSpec,
    choose_k,
    outlier_index_neighbors,
    parse_k_range,
    parse_mix,
)
from streamclust.study.truth import outlier_quality, read_outlier_truth

__all__ = ["ALGORITHMS", "ALGORITHM_RULE", "BEST_RULE", "K_RULE", "K_TIE_MARGIN", "LIBRARY_BASELINE", "MIX_RULE",
           "OUTLIER_NEIGHBORS", "OUTLIER_SCORES", "AlgorithmComparison", "MixSpec", "SetResult", "StudyResult",
           "choose_k", "outlier_index_neighbors", "outlier_quality", "parse_algorithms", "parse_k_range", "parse_mix",
           "read_outlier_truth", "run_study"]
