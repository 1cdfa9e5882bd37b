"""Analysis of clusterings against per-image attributes: metadata, cluster profiles and
their sentences, and the comparison of descriptor sets.

Built on :mod:`streamclust.core` and :mod:`streamclust.estimators`.
"""

from streamclust.analysis.profiles import (
    CONDITION_ATTRIBUTES,
    VEHICLE_ATTRIBUTES,
    ClusterProfiles,
    SetComparison,
    cluster_spread,
    compare_sets,
    contingency_scores,
    profile_clusters,
    read_metadata,
)

__all__ = ["CONDITION_ATTRIBUTES", "VEHICLE_ATTRIBUTES", "ClusterProfiles", "SetComparison", "cluster_spread",
           "compare_sets", "contingency_scores", "profile_clusters", "read_metadata"]
