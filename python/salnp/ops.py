"""Functional ops on NumPy arrays (float32, NCHW), forward and backward.

Inputs may be any array-like of real floats (shift offsets: integers); they are
converted to float32 (int32) C-contiguous arrays (a copy when needed, never written).  Outputs are new arrays.
Bad input raises TypeError or ValueError naming the function and the argument.
"""
from ._core import (active_shift, active_shift_backward, conv2d, conv2d_backward,
                    default_shift_offsets, normalize_shift_grad, sal_conv2d, sal_conv2d_backward,
                    sal_probs, shift, shift_backward)

__all__ = ["conv2d", "conv2d_backward", "shift", "shift_backward", "default_shift_offsets",
           "active_shift", "active_shift_backward", "normalize_shift_grad", "sal_conv2d",
           "sal_conv2d_backward", "sal_probs"]
