"""Functional ops on NumPy arrays (float32, NCHW), forward and backward.

Inputs may be any array-like of real floats; they are converted to float32
C-contiguous arrays (a copy when needed, never written).  Outputs are new arrays.
Bad input raises TypeError or ValueError naming the function and the argument.
"""
from ._core import conv2d, conv2d_backward

__all__ = ["conv2d", "conv2d_backward"]
