"""Hyperfan-in and hyperfan-out variances: Table 1 of Chang, Flokas & Lipson (2020) (Chapters 5 and 6).

A hypernet with a linear output layer generates a mainnet layer ``y^i = W^i_j x^j + b^i`` as

    W^i_j = H^i_{jk} h(e[1])^k + beta^i_j,        b^i = G^i_l g(e[2])^l + gamma^i,

where ``h`` and ``g`` (all but the output layer) use fan-in init, so the second moment of their output
equals ``Var(e)``. With ``c = 2`` for a ReLU mainnet layer (else 1), ``d_j = fan_in``, ``d_i = fan_out``
(both including a conv receptive field), ``d_k`` and ``d_l`` the widths feeding the heads:

    hyperfan-in   Var(H) = c / (2^hbias d_j d_k Var(e))     Var(G) = c / (2 d_l Var(e))
    hyperfan-out  Var(H) = c / (d_i d_k Var(e))             Var(G) = max(c (1 - d_j / d_i) / (d_l Var(e)), 0)

``beta`` and ``gamma`` start at zero. ``harmonic`` takes the true harmonic mean of the two, component by
component (0 when either is 0).
"""
from .classical import harmonic_mean, relu_factor
from .validate import check_choice, check_positive

METHODS = ("in", "out", "harmonic")


def hyperfan_in_weight_variance(fan_in, d_k, embedding_variance=1.0, nonlinearity="linear",
                                generates_bias=False):
    """Hyperfan-in ``Var(H) = c / (2^hbias fan_in d_k Var(e))`` (Chapter 5, Cases 1 and 2)."""
    split = 2.0 if generates_bias else 1.0
    return relu_factor(nonlinearity) / (split * check_positive("fan_in", fan_in) * check_positive("d_k", d_k)
                                        * check_positive("embedding_variance", embedding_variance))


def hyperfan_in_bias_variance(d_l, embedding_variance=1.0, nonlinearity="linear"):
    """Hyperfan-in ``Var(G) = c / (2 d_l Var(e))``: the bias takes the other half of the variance (Chapter 5)."""
    return relu_factor(nonlinearity) / (2.0 * check_positive("d_l", d_l)
                                        * check_positive("embedding_variance", embedding_variance))


def hyperfan_out_weight_variance(fan_out, d_k, embedding_variance=1.0, nonlinearity="linear"):
    """Hyperfan-out ``Var(H) = c / (fan_out d_k Var(e))`` (Chapter 6, Eq. 4)."""
    return relu_factor(nonlinearity) / (check_positive("fan_out", fan_out) * check_positive("d_k", d_k)
                                        * check_positive("embedding_variance", embedding_variance))


def hyperfan_out_bias_variance(fan_in, fan_out, d_l, embedding_variance=1.0, nonlinearity="linear"):
    """Hyperfan-out ``Var(G) = max(c (1 - fan_in/fan_out) / (d_l Var(e)), 0)`` (Chapter 6, Eq. 5).

    Zero whenever ``fan_in >= fan_out``: the generated weights alone already carry the forward variance.
    """
    ratio = check_positive("fan_in", fan_in) / check_positive("fan_out", fan_out)
    value = relu_factor(nonlinearity) * (1.0 - ratio) / (check_positive("d_l", d_l)
                                                        * check_positive("embedding_variance", embedding_variance))
    return max(value, 0.0)


def hyperfan_variances(method, fan_in, fan_out, d_k, d_l=None, embedding_variance=1.0, nonlinearity="linear",
                       generates_bias=False):
    """Return ``(Var(H), Var(G))`` for ``method`` in ``'in'``, ``'out'``, ``'harmonic'`` (Table 1, Chapter 6).

    ``Var(G)`` is ``None`` when the hypernet does not generate the bias (``generates_bias=False``).
    """
    check_choice("method", method, METHODS)
    d_l = d_k if d_l is None else d_l
    w_in = hyperfan_in_weight_variance(fan_in, d_k, embedding_variance, nonlinearity, generates_bias)
    w_out = hyperfan_out_weight_variance(fan_out, d_k, embedding_variance, nonlinearity)
    b_in = b_out = None
    if generates_bias:
        b_in = hyperfan_in_bias_variance(d_l, embedding_variance, nonlinearity)
        b_out = hyperfan_out_bias_variance(fan_in, fan_out, d_l, embedding_variance, nonlinearity)
    if method == "in":
        return w_in, b_in
    if method == "out":
        return w_out, b_out
    return harmonic_mean(w_in, w_out), (harmonic_mean(b_in, b_out) if generates_bias else None)
