"""One registry of the hypernet init methods the book compares (Chapters 4-7), for experiments and widgets.

Each :class:`InitMethod` has a ``name`` (what configs and results store), a ``label`` (what legends show),
knows how to initialize both hypernet kinds of the package, a :class:`~hyperinit_lite.hypernet.Hypernet`
(:mod:`~hyperinit_lite.initializers`) and a :class:`~hyperinit_lite.chunked.ChunkedHypernet`
(:mod:`~hyperinit_lite.chunked`), and predicts the variance of the weights they then generate:

* ``xavier_<mode>`` / ``kaiming_<mode>``: method M1 (Chapter 4), every hypernet layer initialized like an
  ordinary layer with gain 1 or 2 and ``mode`` ``fan_in``, ``fan_out`` or ``harmonic``;
* ``hyperfan_in`` / ``hyperfan_out`` / ``hyperfan_harmonic``: Table 1 (Chapters 5-7).

``xavier`` and ``kaiming`` are short for the fan-in forms (Eq. 1 of the paper). For a hypernetwork of your
own, initialize its output heads with :mod:`hyperinit_lite.head_init`.
"""
import dataclasses

from .chunked import ChunkedHypernet, chunked_init_, chunked_predicted_variances
from .classical import MODES, init_variance, relu_factor
from .hyperfan import hyperfan_variances
from .hypernet import Hypernet, layer_nonlinearities
from .initializers import classical_, hyperfan_
from .predict import hyperfan_generated_variances, m1_generated_variances, next_second_moment
from .validate import check_choice, check_positive

HYPERFAN_MODES = {"in": "fan_in", "out": "fan_out", "harmonic": "harmonic"}
MODE_LABELS = {"fan_in": "fan-in", "fan_out": "fan-out", "harmonic": "harmonic"}


@dataclasses.dataclass(frozen=True)
class InitMethod:
    """An init method: ``family`` ``'m1'`` (classical init of every hypernet layer, ``gain`` 1 or 2, ``mode``)
    or ``'hyperfan'`` (``mode`` ``'in'``, ``'out'`` or ``'harmonic'``)."""

    name: str
    label: str
    family: str
    mode: str
    gain: float = 1.0

    @property
    def target_mode(self):
        """The classical mode (``'fan_in'``, ``'fan_out'`` or ``'harmonic'``) whose variance ``c / fan`` the
        method aims the generated weights at: M1's own mode, or hyperfan-``mode``'s fan (Chapters 4-7)."""
        return HYPERFAN_MODES[self.mode] if self.family == "hyperfan" else self.mode

    def apply_(self, hypernet, generator=None, distribution="uniform", embedding_variance=None):
        """Initialize ``hypernet`` (a ``Hypernet`` or a ``ChunkedHypernet``) in place; returns it."""
        if isinstance(hypernet, ChunkedHypernet):
            init = f"hyperfan_{self.mode}" if self.family == "hyperfan" else _m1_name(self.gain)
            mode = "fan_in" if self.family == "hyperfan" else self.mode
            return chunked_init_(hypernet, init, mode, embedding_variance, distribution, generator)
        _check_hypernet(hypernet)
        if self.family == "hyperfan":
            return hyperfan_(hypernet, self.mode, embedding_variance, distribution, generator)
        return classical_(hypernet, self.mode, self.gain, distribution, generator)

    def predicted_variances(self, hypernet, embedding_variance=None):
        """``(Var(W[t]), Var(b[t]))`` per mainnet layer right after :meth:`apply_`, on average over the
        embeddings and the draws (``Var(b[t]) = 0`` for biases the hypernet does not generate).

        ``Hypernet``: ``Var(W[t]) = d_k E[h^2] Var(H[t])``, ``Var(b[t]) = d_l E[h^2] Var(G[t])`` with the
        head variances the method draws and the body's output second moment ``E[h^2]`` propagated layer by
        layer from ``Var(e)`` (tanh by quadrature, :func:`~hyperinit_lite.predict.next_second_moment`).
        ``ChunkedHypernet``: :func:`~hyperinit_lite.chunked.chunked_predicted_variances` (Chapter 7).
        """
        if isinstance(hypernet, ChunkedHypernet):
            init = f"hyperfan_{self.mode}" if self.family == "hyperfan" else _m1_name(self.gain)
            mode = "fan_in" if self.family == "hyperfan" else self.mode
            kernels = chunked_predicted_variances(hypernet, init, mode, embedding_variance)
            return kernels, [0.0] * len(kernels)
        _check_hypernet(hypernet)
        var_e = check_positive("embedding_variance", hypernet.embedding_variance if embedding_variance is None
                               else embedding_variance)
        second_moment = _body_second_moment(self, hypernet, var_e)
        weights, biases = [], []
        for var_h, var_g in self.head_variances(hypernet, var_e):
            weights.append(hypernet.head_dim * second_moment * var_h)
            biases.append(hypernet.head_dim * second_moment * var_g if var_g is not None else 0.0)
        return weights, biases

    def generated_variances(self, layer_sizes, d_k, activation="linear", generates_bias=False,
                            embedding_variance=1.0):
        """``(Var(W[t]), Var(b[t]))`` per layer of an MLP mainnet with ``layer_sizes`` that a one-layer
        (linear) hypernet with ``d_k``-dimensional embeddings generates after this method, on average over
        embeddings (:func:`~hyperinit_lite.predict.hyperfan_generated_variances` for hyperfan,
        :func:`~hyperinit_lite.predict.m1_generated_variances` for M1; Chapters 4-6). No hypernet is built,
        so the explorers of :mod:`~hyperinit_lite.widgets` predict at any width for free."""
        if self.family == "hyperfan":
            return hyperfan_generated_variances(self.mode, layer_sizes, d_k, activation, generates_bias,
                                                embedding_variance)
        return m1_generated_variances(layer_sizes, d_k, self.mode, self.gain, generates_bias, embedding_variance)

    def head_variances(self, hypernet, embedding_variance=1.0):
        """``(Var(H[t]), Var(G[t]) or None)`` per mainnet layer that :meth:`apply_` draws a ``Hypernet``'s
        heads from (Table 1 for hyperfan, ``init_variance`` of the head's shape for M1)."""
        _check_hypernet(hypernet)
        d_k = hypernet.head_dim
        nls = layer_nonlinearities(len(hypernet.shapes), hypernet.activation)
        out = []
        for (d_i, d_j), nl in zip(hypernet.shapes, nls):
            if self.family == "hyperfan":
                out.append(hyperfan_variances(self.mode, d_j, d_i, d_k, d_k, embedding_variance, nl,
                                              hypernet.generates_bias))
            else:
                var_g = init_variance(d_k, d_i, self.mode, self.gain) if hypernet.generates_bias else None
                out.append((init_variance(d_k, d_i * d_j, self.mode, self.gain), var_g))
        return out


def _m1_name(gain):
    return "kaiming" if gain == 2.0 else "xavier"


def _check_hypernet(hypernet):
    if not isinstance(hypernet, Hypernet):
        raise TypeError(f"hypernet must be a hyperinit_lite Hypernet or ChunkedHypernet, got "
                        f"{type(hypernet).__name__}; initialize your own hypernet's heads with "
                        "hyperinit_lite.head_init")


def _body_second_moment(method, hypernet, embedding_variance):
    """``E[h^2]`` at the body's output: each hidden layer maps second moment ``m`` to ``E[phi(y)^2]``,
    ``y ~ N(0, d_in Var(A) m)``, with ``Var(A)`` the body layer's variance under ``method`` (fan-in with the
    body's ReLU gain for hyperfan, :func:`~hyperinit_lite.initializers.fan_in_body_`)."""
    m = embedding_variance
    for d_in, d_out in zip([hypernet.embedding_dim] + hypernet.hidden_sizes, hypernet.hidden_sizes):
        if method.family == "hyperfan":
            var_a = relu_factor(hypernet.body_activation) / d_in
        else:
            var_a = init_variance(d_in, d_out, method.mode, method.gain)
        m = next_second_moment(hypernet.body_activation, d_in * var_a * m)
    return m


def _registry():
    methods = [InitMethod(f"{name}_{mode}", f"{name.capitalize()} {MODE_LABELS[mode]}", "m1", mode, gain)
               for name, gain in (("xavier", 1.0), ("kaiming", 2.0)) for mode in MODES]
    labels = {"in": "hyperfan-in", "out": "hyperfan-out", "harmonic": "hyperfan harmonic"}
    methods += [InitMethod(f"hyperfan_{mode}", labels[mode], "hyperfan", mode) for mode in HYPERFAN_MODES]
    return {m.name: m for m in methods}


METHODS = _registry()
ALIASES = {"xavier": "xavier_fan_in", "kaiming": "kaiming_fan_in"}


def get_method(name):
    """The :class:`InitMethod` called ``name`` (or one of ``ALIASES``); ``ValueError`` naming the choices."""
    if isinstance(name, InitMethod):
        return name
    check_choice("method", name, tuple(METHODS) + tuple(ALIASES))
    return METHODS[ALIASES.get(name, name)]


def init_(hypernet, method, generator=None, distribution="uniform", embedding_variance=None):
    """Initialize ``hypernet`` in place with the method called ``method``; returns it."""
    return get_method(method).apply_(hypernet, generator, distribution, embedding_variance)


def predicted_variances(hypernet, method, embedding_variance=None):
    """``(Var(W[t]), Var(b[t]))`` per mainnet layer that ``method`` predicts (see
    :meth:`InitMethod.predicted_variances`)."""
    return get_method(method).predicted_variances(hypernet, embedding_variance)


def label(method):
    """The legend label of ``method``, e.g. ``'Kaiming fan-out'`` or ``'hyperfan-in'``."""
    return get_method(method).label
