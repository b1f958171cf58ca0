"""Fan-in and fan-out of weight tensors (Chapters 2, 3 and 12).

A weight of shape ``(out, in, *kernel)`` (``Linear``, ``Conv1d/2d/3d``) maps ``in * prod(kernel)`` numbers to
each output unit, so

    fan_in  = in  * receptive_field,
    fan_out = out * receptive_field,   receptive_field = prod(kernel).

A linear weight ``(out, in)`` has receptive field 1. PyTorch stores a *transposed* convolution's weight
(``ConvTranspose1d/2d/3d``) the other way round, ``(in, out, *kernel)``, so its fans swap the first two sizes.
A recurrent layer stacks its gates along the first dimension (``LSTM``: ``(4 hidden, in)``); each gate is a
linear map ``(hidden, in)`` with its own fans (Chapter 12).
"""
import math

from torch import nn

from .validate import check_positive_int

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1, nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


def receptive_field(shape):
    """Number of input positions one kernel sees: ``prod(shape[2:])`` (1 for a linear weight)."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 dimensions (out, in, *kernel), got {shape}")
    for i, size in enumerate(shape):
        check_positive_int(f"shape[{i}]", size)
    return math.prod(shape[2:])


def fan_in_and_fan_out(shape, transposed=False):
    """Return ``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)``.

    ``fan_in = in * receptive_field`` and ``fan_out = out * receptive_field`` (Chapter 3, Eq. kaiming-conv).
    ``transposed=True`` reads the shape as ``(in, out, *kernel)``, PyTorch's layout of ``ConvTranspose``
    weights.
    """
    rf = receptive_field(shape)
    fan_in, fan_out = shape[1] * rf, shape[0] * rf
    return (fan_out, fan_in) if transposed else (fan_in, fan_out)


def parameter_fans(model):
    """``{name: (fan_in, fan_out)}`` of every weight (``ndim >= 2``) of ``model``, read by its layer type.

    ``ConvTranspose*`` weights are ``(in, out, *kernel)``; the weights of ``LSTM``/``GRU``/``RNN`` layers and
    cells stack ``g`` gates (4, 3, 1), and each gate ``(hidden, in)`` has ``fan_in = in``,
    ``fan_out = hidden``; every other weight is ``(out, in, *kernel)``.
    """
    fans = {}
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.ndim < 2:
                continue
            shape = tuple(p.shape)
            gates = GATES.get(type(module))
            if gates:
                shape = (shape[0] // gates,) + shape[1:]
            transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
            fans[f"{prefix}.{name}" if prefix else name] = fan_in_and_fan_out(shape, transposed)
    return fans
