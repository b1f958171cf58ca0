"""Input checks shared by the whole package: each raises ``ValueError`` naming the parameter and what is allowed.

Sizes may be given as any integer type (Python ``int``, ``numpy.int64``, a 0-d integer tensor); they are
returned as ``int``. Positive numbers may be any finite real (returned as ``float``).
"""
import math
import numbers


def check_positive_int(name, value):
    """``int(value)``; ``ValueError`` naming ``name`` unless ``value`` is an integer > 0 (``bool`` is refused)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive(name, value):
    """``float(value)``; ``ValueError`` naming ``name`` unless ``value`` is a finite real number > 0."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_seed(name, seed):
    """``seed``; ``ValueError`` naming ``name`` unless it is an integer >= 0 (``bool`` is refused)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{name} must hold integers >= 0, got {seed!r}")
    return seed


def check_distinct(name, values, check):
    """``values`` as a non-empty tuple of distinct items, each passed through ``check(name, item)``."""
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty tuple of distinct values, got {values!r}")
    return tuple(check(name, v) for v in values)


def check_choice(name, value, allowed):
    """``value``; ``ValueError`` naming ``name`` and the allowed values unless ``value in allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value
