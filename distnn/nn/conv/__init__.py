"""2-D convolution in NHWC, computed by one of several algorithms chosen per layer.

- layer.py: Conv2D, and ALGORITHMS, the algorithms in order of preference.
- algorithm.py: ConvAlgorithm, the interface each of them implements, and ConvLayer, what they
  may use of the layer.
- winograd4.py, winograd.py, direct.py, im2col.py: one algorithm each (the Numba kernels they
  drive are in distnn/nn/winograd4.py, winograd.py, direct.py and kernels.py).
- common.py: helpers they share (chunks of images on the thread pool, partial gradients).

A new algorithm is a ConvAlgorithm subclass in a file of its own, and an entry in ALGORITHMS.
"""

from distnn.nn.conv.algorithm import ConvAlgorithm
from distnn.nn.conv.direct import Direct
from distnn.nn.conv.im2col import Im2col
from distnn.nn.conv.layer import ALGORITHMS, Conv2D
from distnn.nn.conv.winograd import Winograd
from distnn.nn.conv.winograd4 import Winograd4

__all__ = ["ALGORITHMS", "Conv2D", "ConvAlgorithm", "Direct", "Im2col", "Winograd",
           "Winograd4"]
