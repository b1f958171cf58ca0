"""All Convolutional Net C (Springenberg et al. 2014), the mainnet of the CIFAR-10 experiment (Chapters 7, 10):
its kernel shapes, a forward pass with given (generated) kernels, and how many outputs read each input of a
strided convolution (the stride caveat of fan-out init, Chapter 10). :mod:`~hyperinit_lite.chunked` generates
its kernels.
"""
import torch
import torch.nn.functional as F

from .hypernet import ACTIVATIONS
from .validate import check_choice, check_positive_int

# All Convolutional Net C (Springenberg et al. 2014): per layer (stride, padding) for the shapes below.
ALL_CONV_STRIDES = (1, 1, 2, 1, 1, 2, 1, 1, 1)
ALL_CONV_PADDINGS = (1, 1, 1, 1, 1, 1, 0, 0, 0)



def all_conv_net_shapes(width=96, in_channels=3, num_classes=10):
    """Kernel shapes of All-CNN-C (Springenberg et al. 2014) with ``width`` and ``2 * width`` channels.

    ``3x3 w, 3x3 w, 3x3 w /2, 3x3 2w, 3x3 2w, 3x3 2w /2, 3x3 2w (no padding), 1x1 2w, 1x1 num_classes``, then a
    global average over space (``/2``: stride 2; see ``ALL_CONV_STRIDES`` and ``ALL_CONV_PADDINGS``). The
    paper's network has ``width = 96``; with chunk size ``K = width`` every hidden width is a multiple of ``K``.
    """
    w = check_positive_int("width", width)
    c_in = check_positive_int("in_channels", in_channels)
    n = check_positive_int("num_classes", num_classes)
    return [(w, c_in, 3, 3), (w, w, 3, 3), (w, w, 3, 3), (2 * w, w, 3, 3), (2 * w, 2 * w, 3, 3),
            (2 * w, 2 * w, 3, 3), (2 * w, 2 * w, 3, 3), (2 * w, 2 * w, 1, 1), (n, 2 * w, 1, 1)]


def all_conv_net_forward(x, kernels, biases=None, activation="relu", last_activation="linear", trace=False):
    """Run All-CNN-C on images ``x`` of shape ``(batch, C, H, W)`` and return class scores ``(batch, classes)``.

    Layer ``t`` is ``conv2d(x, kernels[t], biases[t], ALL_CONV_STRIDES[t], ALL_CONV_PADDINGS[t])`` followed by
    ``activation`` (``last_activation`` on the last layer; Springenberg et al.'s table puts a ReLU there too), and
    the scores are averaged over space. With ``trace=True`` also return ``{"inputs", "preactivations"}`` lists.
    """
    if len(kernels) != len(ALL_CONV_STRIDES):
        raise ValueError(f"kernels must hold the {len(ALL_CONV_STRIDES)} kernels of all_conv_net_shapes, "
                         f"got {len(kernels)}")
    check_choice("activation", activation, tuple(ACTIVATIONS))
    check_choice("last_activation", last_activation, tuple(ACTIVATIONS))
    biases = [None] * len(kernels) if biases is None else list(biases)
    inputs, ys = [], []
    for t, (k, b) in enumerate(zip(kernels, biases)):
        if x.shape[1] != k.shape[1]:
            raise ValueError(f"layer {t}: input has {x.shape[1]} channels but kernel has shape {tuple(k.shape)}")
        inputs.append(x)
        y = F.conv2d(x, k, b, stride=ALL_CONV_STRIDES[t], padding=ALL_CONV_PADDINGS[t])
        ys.append(y)
        x = ACTIVATIONS[activation if t < len(kernels) - 1 else last_activation](y)
    out = x.mean(dim=(2, 3))
    return (out, {"inputs": inputs, "preactivations": ys}) if trace else out


def conv_input_coverage(kernel_size, stride=1, padding=0, input_size=32):
    """How many (output position, tap) pairs of an ``f x f`` convolution read each input position.

    Returns an ``(input_size, input_size)`` tensor ``n``: the backward pass sums ``dL/dy`` over exactly these
    pairs, so an input's gradient variance is ``N_out n Var(W) Var(dL/dy)`` and the fan-out that keeps it is
    ``N_out n``. Away from the borders ``n = f^2`` at stride 1 but about ``f^2 / stride^2`` at stride 2
    (1, 2 or 4 by the parity of the position for ``f = 3``): ``c / (N_out f^2)`` (hyperfan-out, Kaiming
    fan-out) then shrinks the gradient by ``n / f^2`` in that layer (Chapter 10). Computed as
    ``d(sum of outputs)/d(input)`` of an all-ones kernel.
    """
    f = check_positive_int("kernel_size", kernel_size)
    x = torch.ones(1, 1, check_positive_int("input_size", input_size), input_size, requires_grad=True)
    y = F.conv2d(x, torch.ones(1, 1, f, f), stride=check_positive_int("stride", stride), padding=padding)
    (grad,) = torch.autograd.grad(y.sum(), x)
    return grad[0, 0]


def all_conv_net_coverage(input_size=32):
    """Mean :func:`conv_input_coverage` of each All-CNN-C layer for ``input_size x input_size`` images."""
    shapes, size, out = all_conv_net_shapes(1, 1, 1), check_positive_int("input_size", input_size), []
    for (_, _, f, _), stride, pad in zip(shapes, ALL_CONV_STRIDES, ALL_CONV_PADDINGS):
        out.append(conv_input_coverage(f, stride, pad, size).mean().item())
        size = (size + 2 * pad - f) // stride + 1
    return out
