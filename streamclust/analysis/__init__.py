"""Analysis of clusterings against per-image attributes: what is in each cluster, and
which descriptor set clusters best.

A study gives, per descriptor set, an ``(n,)`` integer label array (``-1`` =
noise), optionally an ``(n,)`` outlier score and flag and the ``(n, c)``
reduced rows.  This package turns them into something a person can read:

* :mod:`~streamclust.analysis.metadata` -- :func:`read_metadata` reads per-image
  metadata (VeRi-Wild ``vehicle_info.txt`` or any CSV / Parquet with a path
  column) and aligns it to the store's ids;
* :mod:`~streamclust.analysis.contingency` -- count tables accumulated block by
  block and :func:`contingency_scores` (purity, NMI, AMI, ARI);
* :mod:`~streamclust.analysis.profiles` -- :func:`profile_clusters` (per-cluster
  tables, agreement scores and ONE sentence per cluster that says only what the
  counts support) and :func:`cluster_spread`;
* :mod:`~streamclust.analysis.comparison` -- :func:`compare_sets` compares
  descriptor sets and recommends one;
* :mod:`~streamclust.analysis.rows` -- reading the inputs in row blocks.

Built on :mod:`streamclust.core` and :mod:`streamclust.estimators`.

Memory
------
Labels, flags and scores are read in row blocks (:func:`streamclust.core.blocks.iter_blocks`);
only the count tables (clusters x values) and fixed-size samples are kept.
The metadata DataFrame is in memory (it is small: a few bytes per row and
column once categorical).  :func:`compare_sets` reads reduced rows only
through seeded samples (20k rows by default).

Conventions
-----------
Noise (label ``-1``) is a group of its own everywhere: in the sizes, the
tables and the agreement scores (scikit-learn would treat it the same way if
given the labels).  Rows whose attribute value is missing (metadata not
matched) are left out of that attribute's table and scores; shares of a value
are among the cluster's rows whose value is known.
"""

from streamclust.analysis.comparison import SetComparison, compare_sets
from streamclust.analysis.contingency import contingency_scores
from streamclust.analysis.metadata import CONDITION_ATTRIBUTES, VEHICLE_ATTRIBUTES, read_metadata
from streamclust.analysis.profiles import ClusterProfiles, cluster_spread, profile_clusters

__all__ = ["CONDITION_ATTRIBUTES", "VEHICLE_ATTRIBUTES", "ClusterProfiles", "SetComparison", "cluster_spread",
           "compare_sets", "contingency_scores", "profile_clusters", "read_metadata"]
