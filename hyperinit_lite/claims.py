"""How a chapter puts a run's numbers into its prose and what its checked cells print (CONTRIBUTING.md).

A training run's last digits move with the CPU (vector width, BLAS code path, thread count), so the book

* glues every number a run produced into the prose (:func:`glue`, read by myst-nb's ``{glue:text}`` role), and
* prints in checked cells (nbval tag ``nbval-check-output``) only what holds on any machine: formula values,
  counts, sampled statistics rounded to the precision their standard error supports (:func:`rounded`), and the
  text's claims as verdicts with the margin that was required of them (:func:`claim`, :func:`separation`).
"""
import math

import numpy as np


def _plain(value):
    """A numpy or torch scalar as a Python number (myst-nb parses the glued ``text/plain`` repr)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def glue(name, value):
    """Store ``value`` under ``name`` for the prose (``{glue:text}`name:.3f```) and return it.

    The value is stored with the cell's outputs (myst-nb), so the rendered page shows the number this run
    produced. Where myst-nb is not installed (Colab) nothing is stored and the value is only returned.
    """
    value = _plain(value)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return value
    myst_glue(name, value, display=False)
    return value


def claim(text, holds, margin=""):
    """Print the verdict ``"text: True (margin)"`` and return ``bool(holds)``.

    ``margin`` states what was required (``"gap >= 3 s.e."``), not the measured digits, so the printed line is
    the same on every machine where the claim holds.
    """
    holds = bool(holds)
    print(f"{text}: {holds}" + (f" ({margin})" if margin else ""))
    return holds


def standard_error(values):
    """Standard error of the mean of ``values`` (sample std with ``ddof=1`` over ``sqrt(n)``); 0 for one value."""
    values = np.asarray(values, dtype=float).ravel()
    if values.size < 2:
        return 0.0
    return float(values.std(ddof=1) / math.sqrt(values.size))


def separation(low, high):
    """How many standard errors separate the means of two samples: ``(mean(high) - mean(low)) / se``.

    ``se = sqrt(se_low^2 + se_high^2)``; ``inf`` (or ``-inf``) when both samples are constant and differ.
    """
    low, high = np.asarray(low, dtype=float).ravel(), np.asarray(high, dtype=float).ravel()
    gap = high.mean() - low.mean()
    se = math.hypot(standard_error(low), standard_error(high))
    if se == 0.0:
        return math.copysign(math.inf, gap) if gap != 0 else 0.0
    return float(gap / se)


def rounded(value, se):
    """``value`` as text, rounded to the decimal place of its standard error's leading digit.

    ``rounded(1.02345, 0.013) == "1.02"``; a zero standard error keeps 6 significant digits.
    """
    value, se = float(value), abs(float(se))
    if not math.isfinite(value):
        return str(value)
    if se == 0.0 or not math.isfinite(se):
        return f"{value:.6g}"
    decimals = max(0, -math.floor(math.log10(se)))
    return f"{value:.{decimals}f}"
