"""The saved model of a descriptor set, which labels and screens new data, and its drift checks.

- :mod:`~streamclust.model.descriptor_model`: :class:`DescriptorSetModel` (save, load, label and screen).
- :mod:`~streamclust.model.drift`: has a new batch drifted from the training data?
- :mod:`~streamclust.model.assign`: :func:`assign_new`, a model applied to a new file or store, streamed.
"""

from streamclust.model.assign import AssignResult, assign_new
from streamclust.model.descriptor_model import MODEL_KIND, DescriptorSetModel, MixPreprocessing
from streamclust.model.drift import DriftAccumulator, DriftReport, distance_quantiles, drift_report

__all__ = ["AssignResult", "assign_new", "MODEL_KIND", "DescriptorSetModel", "DriftAccumulator", "DriftReport",
           "MixPreprocessing", "distance_quantiles", "drift_report"]
