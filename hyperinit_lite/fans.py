"""Fan-in and fan-out of weight tensors (Chapters 2 and 3).

A weight of shape ``(out, in, *kernel)`` maps ``in * prod(kernel)`` numbers to each output unit, so

    fan_in  = in  * receptive_field,
    fan_out = out * receptive_field,   receptive_field = prod(kernel).

A linear weight ``(out, in)`` has receptive field 1.
"""
import math


def check_positive_int(name, value):
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_positive(name, value):
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def receptive_field(shape):
    """Number of input positions one kernel sees: ``prod(shape[2:])`` (1 for a linear weight)."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 dimensions (out, in, *kernel), got {shape}")
    for i, size in enumerate(shape):
        check_positive_int(f"shape[{i}]", size)
    return math.prod(shape[2:])


def fan_in_and_fan_out(shape):
    """Return ``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)``.

    ``fan_in = in * receptive_field`` and ``fan_out = out * receptive_field`` (Chapter 3, Eq. kaiming-conv).
    """
    rf = receptive_field(shape)
    return shape[1] * rf, shape[0] * rf
