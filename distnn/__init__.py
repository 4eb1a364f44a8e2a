"""distnn: a data-parallel trainer for convolutional networks in NumPy and Numba."""

__version__ = "0.1.0"
