import numpy as np
import pytest
import torch

import hyperinit_lite as hl
from hyperinit_lite.validate import check_choice, check_positive, check_positive_int


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), torch.tensor(3)])
def test_sizes_of_any_integer_type_are_accepted_as_int(value):
    assert check_positive_int("width", value) == 3 and type(check_positive_int("width", value)) is int


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None, np.float64(3.0)])
def test_bad_sizes_name_the_parameter(value):
    with pytest.raises(ValueError, match="width must be a positive integer"):
        check_positive_int("width", value)


@pytest.mark.parametrize("value", [0.0, -1e-3, float("nan"), float("inf"), True, "1"])
def test_bad_positive_numbers_name_the_parameter(value):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        check_positive("lr", value)


def test_check_choice_lists_the_allowed_values():
    assert check_choice("init", "xavier", ("xavier", "kaiming")) == "xavier"
    with pytest.raises(ValueError, match="init must be one of 'xavier', 'kaiming'; got 'xavir'"):
        check_choice("init", "xavir", ("xavier", "kaiming"))


def test_numpy_sizes_reach_the_public_api():
    assert hl.fan_in_and_fan_out((np.int64(4), np.int64(3))) == (3, 4)


def test_seeds_are_distinct_non_negative_integers():
    from hyperinit_lite.validate import check_distinct, check_seed
    assert check_distinct("seeds", [0, 2], check_seed) == (0, 2)
    assert check_distinct("seeds", 3, check_seed) == (3,)
    for bad, message in (((), "distinct"), ((1, 1), "distinct"), ((0, -1), ">= 0"), ((True,), ">= 0"),
                         ((1.0,), ">= 0")):
        with pytest.raises(ValueError, match=f"seeds .*{message}"):
            check_distinct("seeds", bad, check_seed)
