"""hyperinit_lite.head_init: hyperfan for the output head of any hypernetwork (Chapter 14)."""
import types

import numpy as np
import pytest
import torch
from torch import nn

from hyperinit_lite.head_init import (head_variance, hmlp_init_, hmlp_targets, hyperfan_, hyperfan_harmonic_,
                                      hyperfan_in_, hyperfan_out_)


def test_head_variances_against_hand_derived_values():
    # weight head of a 300 x 784 layer fed by d_k = 50 features of second moment 1 (Table 1)
    assert head_variance("in", (300, 784), 50) == pytest.approx(1 / (784 * 50))
    assert head_variance("in", (300, 784), 50, generates_bias=True) == pytest.approx(1 / (2 * 784 * 50))
    assert head_variance("in", (300, 784), 50, 2.0, "relu") == pytest.approx(2 / (784 * 50 * 2.0))
    assert head_variance("out", (300, 784), 50) == pytest.approx(1 / (300 * 50))
    assert head_variance("harmonic", (300, 784), 50) == pytest.approx(2 / (50 * (784 + 300)))
    # bias heads: c / (2 d_l Var(e)) and max(c (1 - d_j / d_i) / (d_l Var(e)), 0)
    assert head_variance("in", (300, 784), 50, is_bias=True) == pytest.approx(1 / 100)
    assert head_variance("out", (300, 784), 50, is_bias=True) == 0.0
    assert head_variance("out", (784, 300), 50, is_bias=True) == pytest.approx((1 - 300 / 784) / 50)
    # conv kernels: fans include the receptive field; a transposed conv's weight is (in, out, kh, kw)
    assert head_variance("in", (64, 32, 3, 3), 10, nonlinearity="relu") == pytest.approx(2 / (288 * 10))
    assert head_variance("in", (32, 64, 3, 3), 10, transposed=True) == pytest.approx(1 / (288 * 10))
    assert head_variance("out", fans=(np.int64(288), 576), d_k=10) == pytest.approx(1 / 5760)


def test_heads_in_every_form_and_bad_input():
    gen = torch.Generator().manual_seed(0)
    head = nn.Linear(40, 30 * 20)
    assert hyperfan_in_(head, (30, 20), generator=gen) is head
    assert head.bias.abs().sum() == 0
    assert head.weight.var().item() == pytest.approx(1 / (20 * 40), rel=0.05)
    weight = torch.empty(600, 40)
    hyperfan_out_(weight, (30, 20), generator=gen)
    assert weight.var().item() == pytest.approx(1 / (30 * 40), rel=0.05)
    pair = (torch.empty(40, 600), torch.ones(600))  # a head used as h @ W: d_k given explicitly
    hyperfan_harmonic_(pair, (30, 20), d_k=40, generator=gen)
    assert pair[1].abs().sum() == 0
    assert pair[0].var().item() == pytest.approx(2 / (40 * 50), rel=0.05)
    with pytest.raises(TypeError, match="head must be"):
        hyperfan_in_(nn.Conv2d(1, 1, 1), (3, 4))
    with pytest.raises(ValueError, match="exactly one of layer_shape"):
        hyperfan_in_(head)
    with pytest.raises(ValueError, match="method must be one of"):
        hyperfan_(head, "fan_in", (30, 20))
    with pytest.raises(ValueError, match="embedding_variance"):
        hyperfan_in_(head, (30, 20), embedding_variance=0)


class MyHypernet(nn.Module):
    """A hypernet written as a plain module: embeddings -> ReLU layer -> one head per generated tensor."""

    def __init__(self, shapes, embedding_dim=8, hidden=64, generator=None):
        super().__init__()
        self.shapes = shapes
        self.embeddings = nn.Parameter(torch.empty(2 * len(shapes), embedding_dim).uniform_(
            -3 ** 0.5, 3 ** 0.5, generator=generator))
        self.body = nn.Linear(embedding_dim, hidden)
        self.weight_heads = nn.ModuleList(nn.Linear(hidden, o * i) for o, i in shapes)
        self.bias_heads = nn.ModuleList(nn.Linear(hidden, o) for o, _ in shapes)

    def forward(self, embeddings=None):
        h = torch.relu(self.body(self.embeddings if embeddings is None else embeddings))
        n = len(self.shapes)
        weights = [head(h[t]).view(shape)
                   for t, (head, shape) in enumerate(zip(self.weight_heads, self.shapes))]
        return weights, [head(h[n + t]) for t, head in enumerate(self.bias_heads)]


def test_a_plain_module_hypernet_generates_the_fan_in_variance():
    """Over 400 fixed draws of the embeddings, the generated weights have variance c / (2 d_j) and the
    biases c / 2 (Case 2 of hyperfan-in), within 5% (the spread of the mean over draws is about 1%)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(100, 50), (10, 100)]
    net = MyHypernet(shapes, generator=gen)
    with torch.no_grad():
        net.body.weight.uniform_(-(6 / 8) ** 0.5, (6 / 8) ** 0.5, generator=gen)  # fan-in, gain 2: E[h^2] = 1
        net.body.bias.zero_()
    for head, bias_head, shape, nl in zip(net.weight_heads, net.bias_heads, shapes, ("relu", "linear")):
        hyperfan_in_(head, shape, nonlinearity=nl, generates_bias=True, generator=gen)
        hyperfan_in_(bias_head, shape, nonlinearity=nl, is_bias=True, generator=gen)
    draws = (torch.rand(400, 4, 8, generator=gen) * 2 - 1) * 3 ** 0.5
    with torch.no_grad():
        generated = [net(e) for e in draws]
    for t, ((d_i, d_j), c) in enumerate(zip(shapes, (2.0, 1.0))):
        var_w = np.mean([w[t].var().item() for w, _ in generated])
        var_b = np.mean([b[t].pow(2).mean().item() for _, b in generated])
        assert var_w == pytest.approx(c / (2 * d_j), rel=0.05)
        assert var_b == pytest.approx(c / 2, rel=0.1)


def fake_hmlp(target_shapes, d_k=16, hidden=(32,), seed=0):
    """An object with the attributes of hypnettorch's HMLP that hmlp_init_ reads."""
    sizes = [8, *hidden, sum(int(np.prod(s)) for s in target_shapes)]
    weights = [torch.empty(o, i) for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [torch.ones(o) for o in sizes[1:]]
    return types.SimpleNamespace(target_shapes=target_shapes, layer_weight_tensors=weights,
                                 layer_bias_vectors=biases, has_bias=True)


def test_hmlp_blocks_get_their_targets_variances():
    targets = [[30, 20], [30], [10, 30]]
    assert hmlp_targets(targets) == [("weight", (30, 20)), ("bias", (30, 20)), ("weight", (10, 30))]
    hnet = fake_hmlp(targets)
    hmlp_init_(hnet, "in", generator=torch.Generator().manual_seed(0))
    out = hnet.layer_weight_tensors[-1]
    assert out[:600].var().item() == pytest.approx(2 / (2 * 20 * 32), rel=0.05)      # W1: ReLU, with bias
    assert out[630:].var().item() == pytest.approx(1 / (30 * 32), rel=0.05)          # W2: linear, no bias
    assert hnet.layer_weight_tensors[0].var().item() == pytest.approx(2 / 8, rel=0.15)  # fan-in body
    assert all(b.abs().sum() == 0 for b in hnet.layer_bias_vectors)
    with pytest.raises(ValueError, match="neither a weight nor the bias"):
        hmlp_targets([[5], [3, 2]])


def test_real_hmlp_if_installed():
    hnets = pytest.importorskip("hypnettorch.hnets")
    hnet = hnets.HMLP([[60, 40], [60], [10, 60], [10]], uncond_in_size=0, cond_in_size=32, layers=(64,),
                      num_cond_embs=100, verbose=False)
    hmlp_init_(hnet, "in", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        var_w = np.mean([hnet.forward(cond_id=i)[0].var().item() for i in range(100)])
    assert var_w == pytest.approx(2 / (2 * 40), rel=0.15)
