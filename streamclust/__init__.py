"""streamclust: cluster and screen very large sets of image descriptors out of core."""

__version__ = "0.1.0"
