"""Fans of every weight layout PyTorch has (hyperinit_lite.fans; Chapters 3 and 12, issue 13)."""
import pytest
from torch import nn

from hyperinit_lite.fans import fan_in_and_fan_out, parameter_fans

# (layer, {weight name: (fan_in, fan_out)}) written out by hand: fan_in = inputs summed into one output unit
LAYERS = [
    (nn.Linear(7, 5), {"weight": (7, 5)}),
    (nn.Conv1d(3, 6, 5), {"weight": (3 * 5, 6 * 5)}),
    (nn.Conv2d(3, 6, (3, 4)), {"weight": (3 * 12, 6 * 12)}),
    (nn.Conv3d(2, 4, 3), {"weight": (2 * 27, 4 * 27)}),
    (nn.ConvTranspose1d(3, 6, 5), {"weight": (3 * 5, 6 * 5)}),  # weight (3, 6, 5): (in, out, k)
    (nn.ConvTranspose2d(8, 1, 4, 2, 1), {"weight": (8 * 16, 1 * 16)}),  # the autoencoder's output layer
    (nn.ConvTranspose3d(2, 4, 3), {"weight": (2 * 27, 4 * 27)}),
    (nn.LSTM(5, 7, 2), {"weight_ih_l0": (5, 7), "weight_hh_l0": (7, 7),  # each gate (7, in) of (28, in)
                        "weight_ih_l1": (7, 7), "weight_hh_l1": (7, 7)}),
    (nn.GRU(5, 7), {"weight_ih_l0": (5, 7), "weight_hh_l0": (7, 7)}),
    (nn.LSTMCell(5, 7), {"weight_ih": (5, 7), "weight_hh": (7, 7)}),
]


@pytest.mark.parametrize("layer,expected", LAYERS,
                         ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_parameter_fans_of_every_layer_type(layer, expected):
    assert parameter_fans(layer) == expected


def test_parameter_fans_names_nested_modules():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 2, 3))
    assert parameter_fans(model) == {"0.weight": (9, 36), "2.weight": (36, 18)}


def test_transposed_flag_swaps_the_first_two_sizes():
    assert fan_in_and_fan_out((8, 1, 4, 4)) == (16, 128)
    assert fan_in_and_fan_out((8, 1, 4, 4), transposed=True) == (128, 16)
    assert fan_in_and_fan_out((500, 784)) == (784, 500)


def test_bad_shapes_name_the_parameter():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fan_in_and_fan_out((5,))
    with pytest.raises(ValueError, match=r"shape\[1\]"):
        fan_in_and_fan_out((5, 0))
