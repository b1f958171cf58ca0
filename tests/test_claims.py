import math

import numpy as np
import pytest
import torch

from hyperinit_lite.claims import claim, glue, rounded, separation, standard_error


def test_claim_prints_the_verdict_and_the_required_margin(capsys):
    assert claim("M1 below hyperfan-in", True, "gap >= 3 s.e.") is True
    assert claim("never", np.bool_(False)) is False
    assert capsys.readouterr().out == "M1 below hyperfan-in: True (gap >= 3 s.e.)\nnever: False\n"


def test_rounded_keeps_the_digits_the_standard_error_supports():
    assert rounded(1.02345, 0.013) == "1.02"
    assert rounded(1.02345, 0.0013) == "1.023"
    assert rounded(123.4, 7.0) == "123"
    assert rounded(0.5, 0.0) == "0.5"
    assert rounded(float("nan"), 0.1) == "nan"


def test_standard_error_and_separation_against_hand_computed_values():
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)  # std 1.414 / sqrt 2
    assert standard_error([5.0]) == 0.0
    # means 2 and 6, standard errors 1 and 1: gap 4 over sqrt(2)
    assert separation([1.0, 3.0], [5.0, 7.0]) == pytest.approx(4 / math.sqrt(2))
    assert separation([1.0, 1.0], [2.0, 2.0]) == math.inf
    assert separation([2.0, 2.0], [1.0, 1.0]) == -math.inf
    assert separation([1.0], [1.0]) == 0.0


def test_glue_returns_plain_python_numbers():
    assert type(glue("test-key", np.float32(0.25))) is float
    assert glue("test-key", torch.tensor(3)) == 3
    assert glue("test-key", "text") == "text"
