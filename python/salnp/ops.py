"""Functional ops on NumPy arrays (float32, NCHW), forward and backward.

Inputs may be any array-like of real floats (shift offsets: integers); they are
converted to float32 (int32) C-contiguous arrays (a copy when needed, never written).
Outputs are new arrays.  Bad input raises TypeError or ValueError naming the function
and the argument.

Exceptions to "never written", each documented on the function: ``batch_norm`` and
``batch_norm_relu`` update ``running_mean``/``running_var`` in place in training mode,
and ``sgd_step`` updates ``params`` and ``momentum_buffer`` in place.  Those arrays must
already be float32, C-contiguous and writeable (an update into a silent copy would be
lost), otherwise ValueError/TypeError.

SAL skips the taps whose attention cannot change a float32 result: ``sal_conv2d`` and
``sal_conv2d_backward`` take ``tap_threshold`` (default ``TAP_THRESHOLD_DEFAULT`` = 2**-27;
0 runs the dense 3x3 convolution), and ``sal_kept_taps`` says which taps a call keeps::

    y = sal_conv2d(x, w, logits, beta)                        # sparse where that is faster
    y0 = sal_conv2d(x, w, logits, beta, tap_threshold=0)      # dense, equal to rounding
    kept = sal_kept_taps(logits, beta)                        # bool, logits' shape

Batch norm keeps no hidden state: the forward returns ``(y, save_mean, save_invstd)``,
the per-channel mean and 1/sqrt(var + eps) it normalised with (batch statistics in
training mode, running statistics in eval mode), and the backward takes them back::

    y, mean, invstd = batch_norm(x, gamma, beta, rm, rv, training=True)
    gx, ggamma, gbeta = batch_norm_backward(x, gamma, gy, mean, invstd, training=True)
"""
from ._core import (
    active_shift,
    active_shift_backward,
    add,
    batch_norm,
    batch_norm_backward,
    batch_norm_relu,
    batch_norm_relu_backward,
    conv2d,
    conv2d_algo,
    conv2d_backward,
    cross_entropy,
    cross_entropy_backward,
    default_shift_offsets,
    global_avg_pool,
    global_avg_pool_backward,
    linear,
    linear_backward,
    normalize_shift_grad,
    relu,
    relu_backward,
    TAP_THRESHOLD_DEFAULT,
    sal_conv2d,
    sal_conv2d_backward,
    sal_kept_taps,
    sal_probs,
    sgd_step,
    shift,
    shift_backward,
    shift_conv1x1,
    shift_conv1x1_backward,
)

__all__ = [
    "conv2d", "conv2d_backward", "conv2d_algo",
    "shift", "shift_backward", "default_shift_offsets",
    "shift_conv1x1", "shift_conv1x1_backward",
    "active_shift", "active_shift_backward", "normalize_shift_grad",
    "sal_conv2d", "sal_conv2d_backward", "sal_probs", "sal_kept_taps",
    "batch_norm", "batch_norm_backward", "batch_norm_relu", "batch_norm_relu_backward",
    "relu", "relu_backward", "add",
    "global_avg_pool", "global_avg_pool_backward",
    "linear", "linear_backward",
    "cross_entropy", "cross_entropy_backward",
    "sgd_step",
]
