"""The hypernet of the continual-learning experiment (Chapter 9): its inits, task embeddings, the mainnets it
generates, the output regularizer and the objectives, and its statistics at initialization.

A hypernet ``h`` maps a task embedding ``e_T`` (size 2) to every weight and bias of the mainnet; each run
of :mod:`hyperinit_lite.experiments.continual` draws its hypernet and embeddings from its own seeds. The
objective of task ``T`` (:func:`make_objective`) is the task's MSE plus ``beta_output`` times
:func:`output_regularizer` of the earlier embeddings' generated outputs against their values before task
``T``.
"""
import copy

import torch
from torch.func import functional_call, stack_module_state, vmap

from ..classical import NONLINEARITIES
from ..hypernet import Hypernet, mainnet_forward, uniform_embeddings
from ..init_methods import init_, label, predicted_variances
from ..regression_data import make_tasks
from ..validate import check_choice
from . import seeded_generator


INITS = ("xavier", "kaiming_fan_in", "kaiming_fan_out", "hyperfan_in", "hyperfan_out")
# the registry's labels; "xavier" is Xavier in the config's mode (init_method), so its label names no mode
INIT_LABELS = {"xavier": "Xavier", **{init: label(init) for init in INITS[1:]}}
EMBEDDING_KEYS = ("weight_embeddings", "bias_embeddings")


# ------------------------------------------------------------------------------------- inits and embeddings
def build_hypernet(config):
    """The experiment's hypernet before its init: a body of ``hypernet_hidden`` layers
    (``hypernet_activation``) on the task embedding and one head per mainnet weight and bias (Appendix B.2).
    Hyperfan's gain ``c`` is 2 for a ReLU mainnet, else 1."""
    mainnet = config.mainnet_activation if config.mainnet_activation in NONLINEARITIES else "linear"
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global RNG
        return Hypernet(config.layer_sizes, config.embedding_dim, hidden_sizes=config.hypernet_hidden,
                        generates_bias=True, body_activation=config.hypernet_activation, activation=mainnet)


def init_hypernet(config, init, run):
    """The hypernet of run ``run`` initialized with ``init`` (one of ``INITS``); same seed, same draws."""
    generator = seeded_generator(0, config.seed, run)
    return init_(build_hypernet(config), init_method(config, init), generator=generator)


def init_method(config, init):
    """The registry name (:mod:`hyperinit_lite.init_methods`) of ``init``: ``'xavier'`` is Xavier in
    ``config.xavier_mode``, the others are registry names already."""
    check_choice("init", init, INITS)
    return f"xavier_{config.xavier_mode}" if init == "xavier" else init


def initial_embeddings(config, run, n_tasks=3):
    """Run ``run``'s task embeddings, one row per task: ``U(-sqrt 3, sqrt 3)`` or ``N(0, 1)`` (variance 1)."""
    g = seeded_generator(1, config.seed, run)
    if config.embedding_distribution == "normal":
        return torch.randn(n_tasks, config.embedding_dim, generator=g)
    return uniform_embeddings(n_tasks, config.embedding_dim, g)


# ------------------------------------------------------------------------------------------- model and loss
def generate(hypernet, params, embedding):
    """Mainnet ``(weights, biases)`` generated from one task ``embedding`` (every head sees that ``e``)."""
    e = embedding.expand(len(hypernet.shapes), embedding.shape[-1])
    return functional_call(hypernet, params, (), {"weight_embeddings": e, "bias_embeddings": e})


def flatten_generated(weights, biases):
    """All generated mainnet parameters of one task as one vector ``h_p(e)`` (weights first, then biases)."""
    return torch.cat([w.reshape(-1) for w in weights] + [b.reshape(-1) for b in biases])


def output_regularizer(generated, targets):
    """``1/(T-1) sum_{j<T} sum_p (generated[j, p] - targets[j, p])^2``: the output regularizer of Chapter 9.

    ``generated`` and ``targets`` have shape ``(T - 1, P)``: row ``j`` is ``h(e_j)`` now and before task
    ``T``.
    With no earlier task (``T = 1``) it is 0.
    """
    if generated.shape != targets.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and targets {tuple(targets.shape)} differ in "
                         "shape")
    if generated.shape[0] == 0:
        return generated.new_zeros(())
    return ((generated - targets) ** 2).sum() / generated.shape[0]


def generate_flat(hypernet, params, embedding):
    """:func:`flatten_generated` of the mainnet generated from one task ``embedding``: the vector ``h(e)``."""
    return flatten_generated(*generate(hypernet, params, embedding))


def unflatten_generated(flat, shapes):
    """Inverse of :func:`flatten_generated` for a mainnet with weight ``shapes``."""
    sizes = [o * i for o, i in shapes] + [o for o, _ in shapes]
    parts = torch.split(flat, sizes, dim=-1)
    n = len(shapes)
    return [p.view(*p.shape[:-1], *s) for p, s in zip(parts[:n], shapes)], list(parts[n:])


def make_objective(hypernet, n_previous, activation="relu"):
    """The per-run objective ``(params, e_T, previous_e, targets, x, y, beta) -> (L, MSE)`` for task
    ``n_previous + 1``: ``L = MSE + beta * output_regularizer``.

    ``previous_e`` ``(n_previous, dim)`` are the frozen earlier embeddings and ``targets`` ``(n_previous, P)``
    their generated outputs before this task. The generated parameters of all tasks come from one inner
    ``vmap`` over the embeddings.
    """
    def generate_one(params, embedding):
        return generate_flat(hypernet, params, embedding)

    def objective(params, embedding, previous, targets, x, y, beta):
        if n_previous == 0:
            weights, biases = generate(hypernet, params, embedding)
        else:
            flat = vmap(generate_one, in_dims=(None, 0))(params, torch.cat([embedding[None], previous]))
            weights, biases = unflatten_generated(flat[0], hypernet.shapes)
        mse = ((mainnet_forward(x, weights, biases, activation) - y) ** 2).mean()
        if n_previous == 0:
            return mse, mse
        return mse + beta * output_regularizer(flat[1:], targets), mse
    return objective


def make_penalty(hypernet):
    """The per-run penalty ``(params, previous_e, targets, beta) -> beta * output_regularizer`` alone (the
    look-ahead evaluates it at other parameters than the task loss)."""
    def generate_one(params, embedding):
        return generate_flat(hypernet, params, embedding)

    def penalty(params, previous, targets, beta):
        return beta * output_regularizer(vmap(generate_one, in_dims=(None, 0))(params, previous), targets)
    return penalty


# ---------------------------------------------------------------------------------------- at initialization
def predicted_generated_variances(config, init):
    """``(Var(W[t]), Var(b[t]))`` per mainnet layer of the mainnet a freshly initialized hypernet generates.

    Variance propagation (Chapters 4-6): the body's output has second moment ``q = E[h^2]``, starting from
    ``Var(e) = 1`` and updated by each ReLU body layer with ``n`` inputs and weight variance ``v`` as
    ``q <- n v q / 2``; a head with weight variance ``Var(H)`` then generates ``Var(W) = d_k Var(H) q``
    (likewise ``Var(b) = d_k Var(G) q``), ``d_k`` the body width. Classical inits use ``init_variance`` with
    gain 1 (Xavier, ``config.xavier_mode``) or 2 (Kaiming) on every layer; hyperfan inits give the body fan-in
    init (``q`` stays 1) and the heads the Table 1 variances. This is the registry's
    :meth:`~hyperinit_lite.init_methods.InitMethod.predicted_variances`. Needs a ReLU hypernet and mainnet.
    """
    check_choice("init", init, INITS)
    for name in ("mainnet_activation", "hypernet_activation"):
        check_choice(name, getattr(config, name), ("relu",))
    return predicted_variances(build_hypernet(config), init_method(config, init))


def initial_statistics(config, init, n_seeds, task=0):
    """Measured at initialization over seeds ``0 .. n_seeds-1`` (the sweep's runs are the first seeds):
    ``weight`` / ``bias`` ``(n_seeds, layers)``, the mean of ``W[t]^2`` / ``b[t]^2`` over the entries of the
    mainnet generated from each seed's embedding of ``task``; ``loss`` ``(n_seeds,)``, each seed's MSE on
    ``task``'s training set."""
    data = make_tasks(config.n_train, config.n_test, config.noise_std, config.data_seed)[task]
    models = [init_hypernet(config, init, s) for s in range(n_seeds)]
    stacked, _ = stack_module_state(models)
    params = {k: v.detach() for k, v in stacked.items() if k not in EMBEDDING_KEYS}
    base = copy.deepcopy(models[0]).to("meta")
    e = torch.stack([initial_embeddings(config, s)[task] for s in range(n_seeds)])
    with torch.no_grad():
        weights, biases = vmap(lambda p, emb: generate(base, p, emb))(params, e)
        out = vmap(mainnet_forward, in_dims=(None, 0, 0, None))(data.x_train, weights, biases,
                                                                config.mainnet_activation)
    return {"weight": torch.stack([w.pow(2).flatten(1).mean(1) for w in weights], dim=1),
            "bias": torch.stack([b.pow(2).flatten(1).mean(1) for b in biases], dim=1),
            "loss": ((out - data.y_train) ** 2).mean(dim=(1, 2))}
