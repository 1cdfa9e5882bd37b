"""scikit-learn's common estimator checks on the streaming estimators."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from streamclust.estimators import StreamingKMeans, StreamingPCA, StreamingScaler, VarianceBalancer

#: Checks that cannot pass, per estimator class, each with the reason.  Empty:
#: every common check passes (tiny arrays, 1 row, n < block size, dtypes,
#: pickling, read-only memmaps, n_features checks, partial_fit, ...).
EXPECTED_FAILED: dict[str, dict[str, str]] = {}


def _expected_failed(estimator):
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


@parametrize_with_checks(
    [
        StreamingScaler(),
        StreamingScaler(with_mean=False, block_rows=7),
        StreamingPCA(n_components=2),
        StreamingPCA(n_components=2, l2_normalize=False, standardize=True, whiten=True, block_rows=7),
        StreamingPCA(n_components=2, solver="incremental"),
        StreamingKMeans(n_clusters=3, n_init=2, random_state=0),
        StreamingKMeans(n_clusters=3, block_rows=7, batch_rows=5, random_state=0),
        StreamingKMeans(),
        VarianceBalancer(),
    ],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
