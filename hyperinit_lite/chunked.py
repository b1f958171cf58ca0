"""A chunked static hypernetwork (Ha et al. 2016) that generates conv kernels, and its initializers (Chapter 7).

Architecture (Appendix A.2 of Chang, Flokas & Lipson 2020, Eq. 6)
-----------------------------------------------------------------
Layer ``t`` of the mainnet is a convolution whose kernel ``W[t]`` has torch's ``conv2d`` layout
``(N_out, N_in, kh, kw)``: **axis 0 = output channels, axis 1 = input channels**. With chunk size ``K`` the two
channel axes are cut into blocks of ``K`` channels, ``n_out = ceil(N_out / K)`` and ``n_in = ceil(N_in / K)``
blocks, and every pair of blocks is one chunk of shape ``(K, K, kh, kw)``, numbered row-major,
``m = r * n_in + s`` (``r``: output block, ``s``: input block). Chunk ``m`` has its own fixed embedding
``z[t][m]`` (size ``d_z``, drawn from ``U(-sqrt 3, sqrt 3)``, variance 1) and is generated in two linear steps:

    a[t][m]   = P[t] z[t][m] + gamma[t]                     K * d numbers, read as K vectors a[t][m][q] of size d
    W[t][r*K + p, s*K + q, u, v] = H[(p, u, v), :] . a[t][m][q] + beta[(p, u, v)]

In index notation (``k`` runs over the ``d`` hidden units, ``l`` over the ``d_z`` embedding entries)

    a[t][m]^{q k} = P[t]^{q k}_l z[t][m]^l + gamma[t]^{q k},      W[t]^{K r + p}_{K s + q, u v} = H^{p u v}_k a[t][m]^{q k} + beta^{p u v}.

So the ``q``-th hidden vector of a chunk is **input channel** ``s*K + q``, and the shared output layer ``(H, beta)``
turns it into the ``K`` **output channels** ``r*K + p`` times the ``kh * kw`` taps; this is Ha et al.'s
``K_i = <W_out, a_i>`` with ``a_i`` one vector per input channel. ``(P[t], gamma[t])`` is the *input layer*,
private to layer ``t`` (``input_layers='per_layer'``, one matrix shared by the layer's chunks) or to each chunk
(``input_layers='per_chunk'``, the literal ``P[t][m]`` of Eq. 6); ``(H, beta)`` is shared by every layer with the
same kernel size (one output layer per distinct ``(kh, kw)``, e.g. one for the 3x3 and one for the 1x1 convs of
an All Convolutional Net).

Channel counts that are not multiples of ``K`` (3 RGB input channels, 10 class scores): ``ceil(N / K)`` blocks are
generated and the kernel keeps the **first** ``N_out`` output and ``N_in`` input channels (generate, then slice).
Every kept entry has the same distribution as any other entry, so the variance analysis below is unchanged; the
discarded entries cost compute but receive zero gradient. Under this rule every kernel shape with positive sizes
can be chunked; the mainnet's biases are not generated (Table 1's case ``1_HBias = 0``): they are the mainnet's
own parameters, starting at zero.

Variance (Chapter 7)
--------------------
With ``beta = gamma = 0``, everything independent and zero-mean,

    Var(W[t]) = d Var(H) E[a^2],          E[a^2] = d_z Var(P[t]) Var(z).

``H`` serves layers of different fans, so it cannot carry any layer's fan: it gets **fan-in init**,
``Var(H) = 1/d`` (gain 1: ``H`` is linear), which passes the second moment of ``a`` on unchanged. The private
``P[t]`` becomes "the output layer" of hyperfan init:

    Var(P[t]) = c_t / (fan[t] d Var(H) d_z Var(z)) = c_t / (fan[t] d_z Var(z)),    so Var(W[t]) = c_t / fan[t],

with ``fan[t] = N_in kh kw`` (hyperfan-in) or ``N_out kh kw`` (hyperfan-out) of the *generated* conv layer and
``c_t = 2`` if a ReLU follows layer ``t`` (else 1). Classical init of every hypernet layer (method M1) gives
instead ``Var(W[t]) = d Var(H) d_z Var(P) Var(z)`` with ``Var(P) = gain / d_z`` or ``gain / (K d)`` and
``Var(H) = gain / d`` or ``gain / (K kh kw)``: the same value for every layer of a kernel size, blind to its fans.

Correlations (Chapter 7, Appendix A.1 reasoning): with ``input_layers='per_layer'`` two chunks ``m, m'`` of a
layer share ``P[t]``, and given the embeddings their entries at the same position have correlation
``cos(z[t][m], z[t][m'])`` (expectation over ``P`` and ``H``); with ``'per_chunk'`` that correlation is 0.
"""
import math

import torch
from torch import nn

from .classical import MODES, init_variance, relu_factor, sample_
from .validate import check_choice, check_positive, check_positive_int
from .fans import fan_in_and_fan_out
from .hyperfan import METHODS
from .hypernet import ACTIVATIONS, uniform_embeddings

INPUT_LAYERS = ("per_layer", "per_chunk")
CHUNKED_INITS = ("hyperfan_in", "hyperfan_out", "hyperfan_harmonic", "kaiming", "xavier")
HYPERFAN_MODE = {"in": "fan_in", "out": "fan_out", "harmonic": "harmonic"}


def check_conv_shapes(shapes):
    """Validate a list of conv kernel shapes ``(N_out, N_in, kh, kw)`` (positive integers, at least one layer)."""
    if isinstance(shapes, torch.Tensor) or not hasattr(shapes, "__iter__"):
        raise ValueError(f"shapes must be a list of (out_channels, in_channels, kh, kw) tuples, got {shapes!r}")
    shapes = [tuple(s) if hasattr(s, "__iter__") else s for s in shapes]
    if not shapes:
        raise ValueError("shapes must contain at least one (out_channels, in_channels, kh, kw) kernel shape")
    for t, shape in enumerate(shapes):
        if not isinstance(shape, tuple) or len(shape) != 4:
            raise ValueError(f"shapes[{t}] must be a conv kernel shape (out_channels, in_channels, kh, kw), "
                             f"got {shape!r}")
        for i, size in enumerate(shape):
            check_positive_int(f"shapes[{t}][{i}]", size)
    return shapes


class ChunkedHypernet(nn.Module):
    """Static chunked hypernet generating the conv kernels of ``shapes`` (Ha et al. 2016; Chapter 7).

    See the module docstring for the layout; ``forward()`` returns the list of kernels, in the order of
    ``shapes``, each of shape ``(N_out, N_in, kh, kw)``. Generation is vectorized per layer (one batched matrix
    product for all chunks of a layer) and runs on whatever device the module is on.

    Args:
        shapes: kernel shapes ``(N_out, N_in, kh, kw)`` of the mainnet's conv layers, in order.
        chunk_size: ``K``, channels per chunk along both channel axes.
        hidden_size: ``d``, size of each of the ``K`` hidden vectors of a chunk (input of the shared ``H``).
        embedding_dim: ``d_z``, size of each chunk embedding.
        activation: nonlinearity after every mainnet layer but the last (sets ``c_t`` for hyperfan init).
        last_activation: nonlinearity after the last mainnet layer.
        input_layers: ``'per_layer'`` (one ``P[t]`` per layer) or ``'per_chunk'`` (one ``P[t][m]`` per chunk).
        learn_embeddings: train the chunk embeddings instead of keeping them fixed.
        generator: ``torch.Generator`` for the embeddings and the initial parameters.

    The parameters start with chunked hyperfan-in init (:func:`chunked_hyperfan_in_`); apply any other
    initializer of this module afterwards. Attributes: ``embeddings[t]`` ``(n_chunks, d_z)``;
    ``input_weights[t]`` ``(1 or n_chunks, K*d, d_z)`` and ``input_biases[t]`` ``(1 or n_chunks, K*d)`` (``P``,
    ``gamma``); ``output_layers[h]`` an ``nn.Linear(d, K*kh*kw)`` (``H``, ``beta``) with ``h =
    output_layer_of[t]``; ``grid[t] = (n_out, n_in)``.
    """

    def __init__(self, shapes, chunk_size, hidden_size, embedding_dim, activation="relu", last_activation="linear",
                 input_layers="per_layer", learn_embeddings=False, generator=None):
        super().__init__()
        self.shapes = check_conv_shapes(shapes)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        check_choice("last_activation", last_activation, tuple(ACTIVATIONS))
        self.input_layers = check_choice("input_layers", input_layers, INPUT_LAYERS)
        self.nonlinearities = [activation] * (len(self.shapes) - 1) + [last_activation]
        self.embedding_variance = 1.0

        K, d, d_z = self.chunk_size, self.hidden_size, self.embedding_dim
        self.grid = [(math.ceil(o / K), math.ceil(i / K)) for o, i, _, _ in self.shapes]
        self.kernel_sizes = list(dict.fromkeys((kh, kw) for _, _, kh, kw in self.shapes))
        self.output_layer_of = [self.kernel_sizes.index((kh, kw)) for _, _, kh, kw in self.shapes]

        n_chunks = [n_o * n_i for n_o, n_i in self.grid]
        self.embeddings = nn.ParameterList(
            nn.Parameter(uniform_embeddings(n, d_z, generator), requires_grad=learn_embeddings) for n in n_chunks)
        n_g = [1 if input_layers == "per_layer" else n for n in n_chunks]
        self.input_weights = nn.ParameterList(nn.Parameter(torch.zeros(n, K * d, d_z)) for n in n_g)
        self.input_biases = nn.ParameterList(nn.Parameter(torch.zeros(n, K * d)) for n in n_g)
        self.output_layers = nn.ModuleList(nn.Linear(d, K * kh * kw) for kh, kw in self.kernel_sizes)
        chunked_hyperfan_in_(self, generator=generator)

    def hidden(self, t):
        """The hidden vectors ``a[t]`` of layer ``t``: shape ``(n_chunks, K, d)``, ``[m, q]`` = input channel ``q``."""
        z, g, gamma = self.embeddings[t], self.input_weights[t], self.input_biases[t]
        if g.shape[0] == 1:  # per_layer: one matrix product for all chunks
            a = z @ g[0].T + gamma[0]
        else:  # per_chunk: batched matrix-vector products
            a = torch.matmul(g, z.unsqueeze(-1)).squeeze(-1) + gamma
        return a.view(-1, self.chunk_size, self.hidden_size)

    def chunks(self, t):
        """All chunks of layer ``t``: shape ``(n_out, n_in, K_out, K_in, kh, kw)``, before slicing.

        ``chunks(t)[r, s, p, q]`` is the ``kh x kw`` filter from input channel ``s*K + q`` to output channel
        ``r*K + p``.
        """
        K = self.chunk_size
        n_o, n_i = self.grid[t]
        kh, kw = self.shapes[t][2:]
        out = self.output_layers[self.output_layer_of[t]](self.hidden(t))  # (n_chunks, K_in, K_out*kh*kw)
        return out.view(n_o, n_i, K, K, kh, kw).transpose(2, 3)

    def kernel(self, t):
        """The kernel of layer ``t``, shape ``shapes[t] = (N_out, N_in, kh, kw)`` (first channels of the blocks)."""
        n_out, n_in, kh, kw = self.shapes[t]
        n_o, n_i = self.grid[t]
        K = self.chunk_size
        full = self.chunks(t).permute(0, 2, 1, 3, 4, 5).reshape(n_o * K, n_i * K, kh, kw)
        return full[:n_out, :n_in]

    def forward(self):
        """Generate the kernels of all layers, in the order of ``shapes``."""
        return [self.kernel(t) for t in range(len(self.shapes))]

    def kept_fraction(self, t):
        """Share of each chunk of layer ``t`` that survives the slicing, shape ``(n_chunks,)`` (1 for full chunks)."""
        n_out, n_in = self.shapes[t][:2]
        n_o, n_i = self.grid[t]
        K = self.chunk_size
        rows = (n_out - K * torch.arange(n_o)).clamp(max=K)
        cols = (n_in - K * torch.arange(n_i)).clamp(max=K)
        return (rows[:, None] * cols[None, :]).flatten().double() / K ** 2

    def generated_numel(self):
        """``(generated, kept)``: numbers the hypernet produces vs entries of the kernels (slicing discards the rest)."""
        K = self.chunk_size
        made = sum(n_o * n_i * K * K * kh * kw for (n_o, n_i), (_, _, kh, kw) in zip(self.grid, self.shapes))
        return made, sum(math.prod(s) for s in self.shapes)


def _check(hnet):
    if not isinstance(hnet, ChunkedHypernet):
        raise TypeError(f"hnet must be a hyperinit_lite.chunked.ChunkedHypernet, got {type(hnet).__name__}")


def chunked_kernel_variance(input_variance, output_variance, hidden_size, embedding_dim, embedding_variance=1.0):
    """``Var(W) = d Var(H) d_z Var(P) Var(z)``: variance of a generated kernel entry (Chapter 7, Eq. chunk-var)."""
    return (check_positive_int("hidden_size", hidden_size) * output_variance
            * check_positive_int("embedding_dim", embedding_dim) * input_variance
            * check_positive("embedding_variance", embedding_variance))


def chunked_hyperfan_variances(method, fan_in, fan_out, hidden_size, embedding_dim, embedding_variance=1.0,
                               nonlinearity="relu"):
    """``(Var(P[t]), Var(H))`` of chunked hyperfan-``method`` for one generated conv layer (Chapter 7).

    ``Var(H) = 1/d`` (fan-in init of the shared output layer) and
    ``Var(P[t]) = target / (d Var(H) d_z Var(z))`` with ``target = c / fan_in``, ``c / fan_out`` or their
    harmonic mean for ``method`` ``'in'``, ``'out'``, ``'harmonic'``; ``fan_in = N_in kh kw``,
    ``fan_out = N_out kh kw``; ``c = 2`` for ReLU. Then ``Var(W[t]) = target`` exactly.
    """
    check_choice("method", method, METHODS)
    d = check_positive_int("hidden_size", hidden_size)
    var_h = 1.0 / d
    target = init_variance(fan_in, fan_out, HYPERFAN_MODE[method], relu_factor(nonlinearity))
    var_g = target / chunked_kernel_variance(1.0, var_h, d, embedding_dim, embedding_variance)
    return var_g, var_h


def chunked_init_variances(hnet, init, mode="fan_in", embedding_variance=None):
    """Per layer ``(Var(P[t]), Var(H))`` that initializer ``init`` (one of ``CHUNKED_INITS``) samples from.

    ``'hyperfan_in'``, ``'hyperfan_out'``, ``'hyperfan_harmonic'``: :func:`chunked_hyperfan_variances`
    (``mode`` is ignored). ``'kaiming'`` (gain 2) and ``'xavier'`` (gain 1): method M1, every hypernet layer
    gets ``init_variance(fan_in, fan_out, mode, gain)`` of its own shape: ``P`` maps ``d_z -> K d``, ``H`` maps
    ``d -> K kh kw``.
    """
    _check(hnet)
    check_choice("init", init, CHUNKED_INITS)
    check_choice("mode", mode, MODES)
    var_z = check_positive("embedding_variance",
                           hnet.embedding_variance if embedding_variance is None else embedding_variance)
    K, d, d_z = hnet.chunk_size, hnet.hidden_size, hnet.embedding_dim
    out = []
    for shape, nl in zip(hnet.shapes, hnet.nonlinearities):
        kh, kw = shape[2:]
        if init.startswith("hyperfan_"):
            out.append(chunked_hyperfan_variances(init[len("hyperfan_"):], *fan_in_and_fan_out(shape), d, d_z,
                                                  var_z, nl))
        else:
            gain = 2.0 if init == "kaiming" else 1.0
            out.append((init_variance(d_z, K * d, mode, gain), init_variance(d, K * kh * kw, mode, gain)))
    return out


def _sample_on_generator_device_(tensor, variance, distribution, generator):
    """:func:`sample_` that also fills a CUDA ``tensor`` from a CPU ``generator`` (drawn there, then copied)."""
    if generator is None or generator.device == tensor.device:
        return sample_(tensor, variance, distribution, generator)
    draw = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
    return tensor.copy_(sample_(draw, variance, distribution, generator))


@torch.no_grad()
def chunked_init_(hnet, init, mode="fan_in", embedding_variance=None, distribution="uniform", generator=None):
    """Initialize ``hnet`` in place with ``init`` (see :func:`chunked_init_variances`); ``gamma = beta = 0``.

    Each shared output layer is sampled once; all layers using it ask for the same ``Var(H)``. A CPU
    ``generator`` also initializes a hypernet on CUDA, with the same numbers as on the CPU.
    """
    variances = chunked_init_variances(hnet, init, mode, embedding_variance)
    check_choice("distribution", distribution, ("uniform", "normal"))
    done = set()
    for t, (var_g, var_h) in enumerate(variances):
        _sample_on_generator_device_(hnet.input_weights[t], var_g, distribution, generator)
        hnet.input_biases[t].zero_()
        h = hnet.output_layer_of[t]
        if h not in done:
            done.add(h)
            _sample_on_generator_device_(hnet.output_layers[h].weight, var_h, distribution, generator)
            hnet.output_layers[h].bias.zero_()
    return hnet


def chunked_hyperfan_in_(hnet, embedding_variance=None, distribution="uniform", generator=None):
    """Chunked hyperfan-in (Appendix A.2): ``Var(H) = 1/d``, ``Var(P[t]) = c_t / (fan_in[t] d_z Var(z))``."""
    return chunked_init_(hnet, "hyperfan_in", "fan_in", embedding_variance, distribution, generator)


def chunked_hyperfan_out_(hnet, embedding_variance=None, distribution="uniform", generator=None):
    """Chunked hyperfan-out (Appendix A.2): ``Var(H) = 1/d``, ``Var(P[t]) = c_t / (fan_out[t] d_z Var(z))``."""
    return chunked_init_(hnet, "hyperfan_out", "fan_in", embedding_variance, distribution, generator)


def chunked_hyperfan_harmonic_(hnet, embedding_variance=None, distribution="uniform", generator=None):
    """Harmonic mean of chunked hyperfan-in and hyperfan-out, layer by layer."""
    return chunked_init_(hnet, "hyperfan_harmonic", "fan_in", embedding_variance, distribution, generator)


def chunked_kaiming_(hnet, mode="fan_in", distribution="uniform", generator=None):
    """M1 with Kaiming (gain 2) on every hypernet layer, ``P`` and ``H`` alike (the paper's CIFAR baseline)."""
    return chunked_init_(hnet, "kaiming", mode, None, distribution, generator)


def chunked_xavier_(hnet, mode="fan_in", distribution="uniform", generator=None):
    """M1 with Xavier (gain 1) on every hypernet layer."""
    return chunked_init_(hnet, "xavier", mode, None, distribution, generator)


@torch.no_grad()
def chunked_kernel_variances(hnet):
    """Measured variance of each generated kernel (all entries of ``W[t]``, one float per layer)."""
    _check(hnet)
    return [k.var().item() for k in hnet()]


def chunked_target_variances(hnet, mode="fan_in"):
    """Classical target ``c_t / fan_in``, ``c_t / fan_out`` or their harmonic mean for each generated layer."""
    _check(hnet)
    return [init_variance(*fan_in_and_fan_out(s), mode, relu_factor(nl))
            for s, nl in zip(hnet.shapes, hnet.nonlinearities)]


@torch.no_grad()
def chunked_predicted_variances(hnet, init, mode="fan_in", embedding_variance=None, conditional=False):
    """Kernel variance that ``init`` predicts for each layer: :func:`chunked_kernel_variance` of its variances.

    With ``conditional=True`` the population ``Var(z)`` is replaced by the mean square of layer ``t``'s own
    fixed embeddings, each chunk weighted by the share of its entries that the kernel keeps
    (:meth:`ChunkedHypernet.kept_fraction`): the expected kernel variance *given* the sampled embeddings, i.e.
    the value the measurement fluctuates around when only ``P`` and ``H`` are redrawn.
    """
    variances = chunked_init_variances(hnet, init, mode, embedding_variance)
    var_z = hnet.embedding_variance if embedding_variance is None else embedding_variance
    out = []
    for t, (var_g, var_h) in enumerate(variances):
        if conditional:
            w = hnet.kept_fraction(t).to(hnet.embeddings[t].device)
            v = (w * hnet.embeddings[t].double().pow(2).mean(dim=1)).sum().item() / w.sum().item()
        else:
            v = var_z
        out.append(chunked_kernel_variance(var_g, var_h, hnet.hidden_size, hnet.embedding_dim, v))
    return out


def chunked_kernel_statistics(hnet, init, mode="fan_in", target_mode=None, embedding_variance=None):
    """Per-layer report of generated-kernel variance vs target for an ``hnet`` initialized with ``init``.

    Returns a dict of lists (one entry per layer): ``shape``, ``fan_in``, ``fan_out``, ``target`` (classical
    ``c_t / fan`` for ``target_mode``; default: the fan that ``init`` aims at), ``predicted`` (population
    formula), ``conditional`` (given the fixed embeddings), ``measured`` and ``ratio = measured / target``.
    """
    check_choice("init", init, CHUNKED_INITS)
    if target_mode is None:
        target_mode = {"hyperfan_in": "fan_in", "hyperfan_out": "fan_out", "hyperfan_harmonic": "harmonic"}.get(
            init, mode)
    target = chunked_target_variances(hnet, target_mode)
    measured = chunked_kernel_variances(hnet)
    fans = [fan_in_and_fan_out(s) for s in hnet.shapes]
    return {
        "shape": list(hnet.shapes),
        "fan_in": [f[0] for f in fans],
        "fan_out": [f[1] for f in fans],
        "target": target,
        "predicted": chunked_predicted_variances(hnet, init, mode, embedding_variance),
        "conditional": chunked_predicted_variances(hnet, init, mode, embedding_variance, conditional=True),
        "measured": measured,
        "ratio": [m / v for m, v in zip(measured, target)],
    }
