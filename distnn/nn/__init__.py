"""Layers, losses, initialisation, the Sequential model, Numba kernels and gradient checking.

Nothing here imports communication (mpi4py, ray, distnn.comm, distnn.train).
Image layout is NHWC throughout.
"""

from distnn.nn.activations import ELU, LeakyReLU, Maxout, PReLU, ReLU, Sigmoid, Tanh
from distnn.nn.conv import Conv2D
from distnn.nn.dense import Dense, Flatten
from distnn.nn.errors import ShapeError, SpecError, StateError
from distnn.nn.gradcheck import check_layer, numerical_grad, rel_error
from distnn.nn.losses import LOSSES, softmax_cross_entropy, svm_hinge
from distnn.nn.model import Sequential
from distnn.nn.pool import AvgPool2D, GlobalAvgPool, MaxPool2D
from distnn.nn.registry import LAYERS, build_layer, build_layers
from distnn.nn.regularize import BatchNorm, Dropout

__all__ = [
    "AvgPool2D", "BatchNorm", "Conv2D", "Dense", "Dropout", "ELU", "Flatten", "GlobalAvgPool",
    "LAYERS", "LOSSES", "LeakyReLU", "MaxPool2D", "Maxout", "PReLU", "ReLU", "Sequential",
    "ShapeError", "Sigmoid", "SpecError", "StateError", "Tanh", "build_layer", "build_layers",
    "check_layer", "numerical_grad", "rel_error", "softmax_cross_entropy", "svm_hinge",
]
