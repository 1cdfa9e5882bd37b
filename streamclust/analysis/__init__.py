"""Analysis of clusterings against per-image attributes: metadata, cluster profiles and
their sentences, and the comparison of descriptor sets.

Built on :mod:`streamclust.core` and :mod:`streamclust.estimators`.
"""
