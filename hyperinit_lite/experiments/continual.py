"""Continual learning of three regression tasks with a task-conditioned hypernetwork (Chapter 9; paper §5.2).

A hypernet ``h`` maps a trainable task embedding ``e_T`` (size 2) to every weight and bias of a mainnet
``1-10-10-1``; the mainnet is fit to task ``T``'s data. The three tasks of
:mod:`hyperinit_lite.regression_data` are learned in sequence. While learning task ``T > 1`` the objective is

    L = MSE_T(theta, e_T) + beta_output / (T - 1) * sum_{j<T} sum_p (h_p(e_j; theta) - h_p(e_j; theta*))^2

where ``theta*`` are the hypernet parameters before task ``T`` (the targets are computed once, then fixed) and
the earlier embeddings ``e_j`` are frozen; ``theta`` and the current ``e_T`` are trained. With
``lookahead=True`` the penalty's gradient is taken at ``theta + Delta theta``, ``Delta theta`` the step the
optimizer would take on the task loss alone (detached), as von Oswald et al.'s code (hypercl) does.

Two models: the paper's (Appendix B.2: ReLU mainnet and hypernet, ``U(-sqrt 3, sqrt 3)`` embeddings; presets
``quick`` and ``paper``) and the reference code's defaults (sigmoid mainnet and hypernet, Xavier-uniform with
zero biases, ``N(0, 1)`` embeddings, look-ahead penalty, batches reshuffled once per epoch; preset
``reference``). A config trains a main sweep (inits x learning rates x seeds with ``optimizer``) and, where
``adam_runs > 0``, Adam runs of ``adam_init`` at ``adam_lr`` on the same model, for each ``beta_output`` in
``betas`` (the first is the config's own).

All runs of a sweep train at once: their parameters are stacked with ``torch.func.stack_module_state``, the
objective of all runs is one ``torch.func.vmap`` of a ``torch.func.functional_call`` of the hypernet, and
since runs share no parameter, the gradient of the summed objective is every run's own gradient
(``tests/test_continual.py`` checks this against a plain loop). A run whose objective becomes non-finite is
recorded as diverged at that task and iteration, frozen, and reported as NaN from then on.

Command line: ``python -m hyperinit_lite continual --preset quick|paper|reference [--set FIELD=VALUE]
[--resume]`` (the experiment skeleton's options; checkpoints after every task).
"""
import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from ..classical import MODES, NONLINEARITIES, init_variance
from ..hyperfan import hyperfan_variances
from ..hypernet import ACTIVATIONS, Hypernet, mainnet_forward, uniform_embeddings
from ..initializers import hyperfan_in_, hyperfan_out_, kaiming_, xavier_
from ..regression_data import TASK_NAMES, make_tasks
from ..results import as_array
from ..validate import check_choice, check_positive, check_positive_int
from . import resolve_device, seeded_generator, skeleton
from .skeleton import Experiment


INITS = ("xavier", "kaiming_fan_in", "kaiming_fan_out", "hyperfan_in", "hyperfan_out")
INIT_LABELS = {"xavier": "Xavier", "kaiming_fan_in": "Kaiming fan-in", "kaiming_fan_out": "Kaiming fan-out",
               "hyperfan_in": "hyperfan-in", "hyperfan_out": "hyperfan-out"}
OPTIMIZERS = ("sgd", "adam")
NETWORK_ACTIVATIONS = ("relu", "tanh", "sigmoid")
EMBEDDING_DISTRIBUTIONS = ("uniform", "normal")
BATCHINGS = ("independent", "epoch")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
EMBEDDING_KEYS = ("weight_embeddings", "bias_embeddings")


@dataclass(frozen=True)
class ContinualConfig:
    """Everything that determines a continual-learning experiment (stored beside its results).

    Model: ``mainnet_activation`` / ``hypernet_activation`` (hidden layers), ``embedding_distribution``
    (``'uniform'``: ``U(-sqrt 3, sqrt 3)``; ``'normal'``: ``N(0, 1)``; both variance 1), ``lookahead``
    (penalty gradient after the pending optimizer step), ``batching`` (``'independent'``: each batch drawn
    afresh; ``'epoch'``: one permutation per epoch, consecutive batches). ``xavier_mode``: ``'harmonic'`` is
    ``2 / (fan_in + fan_out)``, as ``torch.nn.init.xavier_uniform_`` and the reference code.
    """
    name: str = "paper"
    inits: tuple = INITS
    learning_rates: tuple = (1e-2, 1e-3, 1e-4, 1e-5)
    runs: int = 15
    iterations: int = 6000
    batch_size: int = 32
    record_every: int = 100
    optimizer: str = "sgd"
    beta_output: float = 0.005
    xavier_mode: str = "harmonic"
    seed: int = 0
    data_seed: int = 42
    n_train: int = 100
    n_test: int = 50
    noise_std: float = 0.05
    mainnet_hidden: tuple = (10, 10)
    hypernet_hidden: tuple = (10, 10)
    embedding_dim: int = 2
    mainnet_activation: str = "relu"
    hypernet_activation: str = "relu"
    embedding_distribution: str = "uniform"
    lookahead: bool = False
    batching: str = "independent"
    adam_init: str = "hyperfan_in"
    adam_lr: float = 1e-2
    adam_iterations: int = 4001
    adam_runs: int = 15
    betas: tuple = ()

    def __post_init__(self):
        if not self.inits:
            raise ValueError(f"inits must name at least one of {', '.join(map(repr, INITS))}")
        for init in (*self.inits, self.adam_init):
            check_choice("inits" if init != self.adam_init else "adam_init", init, INITS)
        for name, allowed in (("optimizer", OPTIMIZERS), ("xavier_mode", MODES), ("batching", BATCHINGS),
                              ("mainnet_activation", NETWORK_ACTIVATIONS),
                              ("hypernet_activation", NETWORK_ACTIVATIONS),
                              ("embedding_distribution", EMBEDDING_DISTRIBUTIONS)):
            check_choice(name, getattr(self, name), allowed)
        if not self.learning_rates:
            raise ValueError("learning_rates must hold at least one learning rate")
        for i, lr in enumerate(self.learning_rates):
            check_positive(f"learning_rates[{i}]", lr)
        check_positive("adam_lr", self.adam_lr)
        for name in ("runs", "iterations", "batch_size", "record_every", "n_train", "n_test", "embedding_dim",
                     "adam_iterations"):
            check_positive_int(name, getattr(self, name))
        if self.adam_runs != 0:
            check_positive_int("adam_runs", self.adam_runs)
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})")
        for name, value in [("beta_output", self.beta_output), ("noise_std", self.noise_std)] + [
                (f"betas[{i}]", b) for i, b in enumerate(self.betas)]:
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        hyperfan = [i for i in (*self.inits, self.adam_init) if i.startswith("hyperfan")]
        if hyperfan and self.hypernet_activation == "sigmoid":
            raise ValueError(f"inits {hyperfan[0]!r} needs a relu or tanh hypernet body (its fan-in body "
                             "init assumes a zero-mean nonlinearity); with hypernet_activation='sigmoid' use "
                             "xavier or kaiming inits")

    @property
    def layer_sizes(self):
        """The mainnet's layer sizes ``[1, *mainnet_hidden, 1]``."""
        return [1, *self.mainnet_hidden, 1]


# The reference code's defaults (hypercl toy_example): sigmoid networks, Xavier-uniform (harmonic) with zero
# biases, N(0, 1) embeddings, look-ahead penalty, Adam lr 1e-2, 4001 iterations per task, epoch batches.
REFERENCE_MODEL = dict(mainnet_activation="sigmoid", hypernet_activation="sigmoid",
                       embedding_distribution="normal", lookahead=True, batching="epoch",
                       xavier_mode="harmonic", adam_init="xavier", adam_lr=1e-2, adam_iterations=4001)

PRESETS = {
    # about a minute on a 2-core CPU: every init and learning rate with 5 seeds and 1/6 of the paper's
    # iterations; Adam on the paper's ReLU model with hyperfan-in, 5 seeds, half the reference iterations
    "quick": ContinualConfig(name="quick", runs=5, iterations=1000, record_every=20, adam_runs=5,
                             adam_iterations=2000),
    # Appendix B.2: SGD, 6000 iterations per task, batch 32, lr from {1e-2, ..., 1e-5}, 15 runs
    "paper": ContinualConfig(),
    # the reference code's setting (Adam) beside SGD on the same model, and the beta_output trade-off
    "reference": ContinualConfig(name="reference", inits=("xavier",), learning_rates=(1e-1, 1e-2, 1e-3),
                                 iterations=4001, record_every=100, betas=(0.005, 0.0, 0.0005, 0.05, 0.5),
                                 **REFERENCE_MODEL),
}


def get_config(preset, **overrides):
    """The config of a preset (``'quick'``, ``'paper'``, ``'reference'``), with ``overrides``."""
    check_choice("preset", preset, tuple(PRESETS))
    return dataclasses.replace(PRESETS[preset], **overrides)


# ----------------------------------------------------------------------------------------------- randomness
def init_hypernet(config, init, run):
    """The hypernet of run ``run`` initialized with ``init`` (one of ``INITS``); same seed, same draws.

    A body of ``hypernet_hidden`` layers (``hypernet_activation``) on the task embedding and one head per
    mainnet weight and bias (Appendix B.2). Hyperfan's gain ``c`` is 2 for a ReLU mainnet, else 1.
    """
    check_choice("init", init, INITS)
    mainnet = config.mainnet_activation if config.mainnet_activation in NONLINEARITIES else "linear"
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global RNG
        hypernet = Hypernet(config.layer_sizes, config.embedding_dim, hidden_sizes=config.hypernet_hidden,
                            generates_bias=True, body_activation=config.hypernet_activation,
                            activation=mainnet)
    g = seeded_generator(0, config.seed, run)
    if init == "xavier":
        xavier_(hypernet, mode=config.xavier_mode, generator=g)
    elif init.startswith("kaiming"):
        kaiming_(hypernet, mode=init[len("kaiming_"):], generator=g)
    elif init == "hyperfan_in":
        hyperfan_in_(hypernet, generator=g)
    else:
        hyperfan_out_(hypernet, generator=g)
    return hypernet


def initial_embeddings(config, run, n_tasks=3):
    """Run ``run``'s task embeddings, one row per task: ``U(-sqrt 3, sqrt 3)`` or ``N(0, 1)`` (variance 1)."""
    g = seeded_generator(1, config.seed, run)
    if config.embedding_distribution == "normal":
        return torch.randn(n_tasks, config.embedding_dim, generator=g)
    return uniform_embeddings(n_tasks, config.embedding_dim, g)


def batch_indices(config, run, task, iterations):
    """Indices ``(iterations, batch_size)`` of run ``run``'s minibatches on ``task``.

    ``batching='independent'``: each row drawn without replacement, independently per iteration;
    ``'epoch'``: one permutation of the ``n_train`` points per epoch, cut into consecutive batches (a batch
    may span two epochs), as the reference code's data handler does.
    """
    g = seeded_generator(2, config.seed, run, task)
    n, b = config.n_train, config.batch_size
    if config.batching == "independent":
        return torch.rand(iterations, n, generator=g).argsort(dim=1)[:, :b]
    epochs = -(-iterations * b // n)
    return torch.rand(epochs, n, generator=g).argsort(dim=1).reshape(-1)[:iterations * b].view(iterations, b)


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
    def generate_flat(params, embedding):
        return flatten_generated(*generate(hypernet, params, embedding))

    def objective(params, embedding, previous, targets, x, y, beta):
        if n_previous == 0:
            weights, biases = generate(hypernet, params, embedding)
        else:
            flat = vmap(generate_flat, in_dims=(None, 0))(params, torch.cat([embedding[None], previous]))
            weights, biases = unflatten_generated(flat[0], hypernet.shapes)
        mse = ((mainnet_forward(x, weights, biases, activation) - y) ** 2).mean()
        if n_previous == 0:
            return mse, mse
        return mse + beta * output_regularizer(flat[1:], targets), mse
    return objective


def make_penalty(hypernet):
    """The per-run penalty ``(params, previous_e, targets, beta) -> beta * output_regularizer`` alone (the
    look-ahead evaluates it at other parameters than the task loss)."""
    def generate_flat(params, embedding):
        return flatten_generated(*generate(hypernet, params, embedding))

    def penalty(params, previous, targets, beta):
        return beta * output_regularizer(vmap(generate_flat, in_dims=(None, 0))(params, previous), targets)
    return penalty


def _view(vector, like):
    """``vector`` of shape ``(R,)`` reshaped to broadcast against ``like`` of shape ``(R, ...)``."""
    return vector.view(-1, *([1] * (like.dim() - 1)))


def optimizer_step(optimizer, grad, moments, step, lr):
    """``(Delta, moments')``: the step ``Delta`` that SGD (``-lr g``) or Adam (``-lr m_hat / (sqrt(v_hat) +
    eps)``, iteration ``step`` counted from 1) takes with gradient ``grad``, and Adam's updated moments."""
    if optimizer == "sgd":
        return -_view(lr, grad) * grad, moments
    m = ADAM_BETAS[0] * moments[0] + (1 - ADAM_BETAS[0]) * grad
    v = ADAM_BETAS[1] * moments[1] + (1 - ADAM_BETAS[1]) * grad * grad
    m_hat, v_hat = m / (1 - ADAM_BETAS[0] ** step), v / (1 - ADAM_BETAS[1] ** step)
    return -_view(lr, grad) * m_hat / (v_hat.sqrt() + ADAM_EPS), (m, v)


# ----------------------------------------------------------------------------------------------- training
def train_runs(config, inits, learning_rates, optimizer, iterations, runs, device="cpu", progress=True,
               desc=None, beta_output=None):
    """Train every (init, learning rate, seed) combination at once; arrays have leading dims
    ``(len(inits), len(learning_rates), runs)`` (see :func:`train_grid`)."""
    beta = config.beta_output if beta_output is None else beta_output
    grid = [(init, lr, beta, run) for init in inits for lr in learning_rates for run in range(runs)]
    return train_grid(config, grid, optimizer, iterations, (len(inits), len(learning_rates), runs), device,
                      progress, desc)


def train_grid(config, grid, optimizer, iterations, shape, device="cpu", progress=True, desc=None, state=None,
               on_task=None):
    """Train the runs ``grid`` (tuples ``(init, lr, beta_output, seed)``) at once, on one CPU thread.

    The tensors are tiny, so more threads only add synchronization (and on a busy machine slow every step down
    many times over); the previous thread count is restored. Results are reshaped to ``shape + ...``.
    ``state``: a state passed to ``on_task(state, task)`` after an earlier task, to continue from there.
    """
    threads = torch.get_num_threads()
    device = resolve_device(device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _train_grid(config, grid, optimizer, iterations, shape, device, progress, desc, state, on_task)
    finally:
        torch.set_num_threads(threads)


def initial_state(config, grid, iterations, device):
    """The training state before task 1: stacked hypernet parameters of every run, task embeddings, and empty
    records (see ``_train_grid`` for the record arrays)."""
    models = [init_hypernet(config, init, run) for init, _, _, run in grid]
    stacked, _ = stack_module_state(models)
    embeddings = torch.stack([initial_embeddings(config, run) for *_, run in grid]).to(device)
    R, n_records = len(grid), len(record_iterations(config, iterations))
    params = {k: v.detach().to(device) for k, v in stacked.items() if k not in EMBEDDING_KEYS}
    return {"task": 0, "params": params,
            "embeddings": embeddings, "start_embeddings": embeddings.clone(),
            "train_loss": torch.full((R, 3, n_records), math.nan, device=device),
            "test_mse": torch.full((R, 3, 3), math.nan, device=device),
            "alive": torch.ones(R, dtype=torch.bool, device=device),
            "diverged_task": torch.full((R,), -1, dtype=torch.long, device=device),
            "diverged_iteration": torch.full((R,), -1, dtype=torch.long, device=device),
            "targets": torch.zeros(R, 0, 1, device=device)}


def record_iterations(config, iterations):
    """The iterations after which the training loss is recorded: every ``record_every`` and the last."""
    return sorted(set(range(0, iterations + 1, config.record_every)) | {iterations})


def _train_grid(config, grid, optimizer, iterations, shape, device, progress, desc, state, on_task):
    """Train the runs of ``grid`` on the three tasks in sequence.

    Returns a dict of tensors with leading dims ``shape``: ``train_loss`` ``(..., 3, n_records)`` the MSE on
    the current task's full training set after each recorded iteration (NaN once diverged); ``test_mse``
    ``(..., 3, 3)`` the test MSE of task ``j`` (last axis) after learning task ``t`` (NaN for ``j > t``);
    ``diverged_task`` / ``diverged_iteration`` (-1 if the run never diverged); ``predictions``
    ``(..., 3, n_test)`` the mainnet on each task's test inputs after the sequence; ``embedding_shift``
    ``(..., 3)`` how far training moved each task embedding, ``|e_t - e_t(init)|``; ``record_iterations``.
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    tasks = [t.to(device) for t in make_tasks(config.n_train, config.n_test, config.noise_std,
                                              config.data_seed)]
    s = initial_state(config, grid, iterations, device) if state is None else state
    base = copy.deepcopy(init_hypernet(config, grid[0][0], 0)).to("meta")
    lr = torch.tensor([lr for _, lr, _, _ in grid], device=device)
    beta = torch.tensor([b for _, _, b, _ in grid], device=device)
    seeds = sorted({run for *_, run in grid})
    row_of = torch.tensor([seeds.index(run) for *_, run in grid], device=device)
    records = record_iterations(config, iterations)
    record_at = {it: k for k, it in enumerate(records)}
    act = config.mainnet_activation

    def predict(p, e, x):
        return mainnet_forward(x, *generate(base, p, e), act)
    batched_predict = vmap(predict, in_dims=(0, 0, None))
    batched_generate = vmap(lambda p, e: flatten_generated(*generate(base, p, e)))
    batched_penalty = vmap(make_penalty(base))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks) * iterations, initial=s["task"] * iterations, mininterval=2.0,
                   desc=desc or f"{optimizer} x{len(grid)} runs")
    for t in range(s["task"], len(tasks)):
        task, params, alive = tasks[t], s["params"], s["alive"]
        lookahead = config.lookahead and t > 0
        batched_objective = vmap(make_objective(base, 0 if lookahead else t, act))   # look-ahead: MSE alone
        previous, targets = s["embeddings"][:, :t], s["targets"]
        e = s["embeddings"][:, t].clone()
        batches = torch.stack([batch_indices(config, run, t, iterations) for run in seeds]).to(device)
        keys = [*params, "__embedding__"]
        moments = {k: (torch.zeros_like(v), torch.zeros_like(v))
                   for k, v in [*params.items(), ("__embedding__", e)]}
        for it in range(iterations + 1):
            if it in record_at:
                with torch.no_grad():
                    loss = ((batched_predict(params, e, task.x_train) - task.y_train) ** 2).mean(dim=(1, 2))
                s["train_loss"][:, t, record_at[it]] = torch.where(alive, loss, math.nan)
            if it == iterations:
                break
            idx = batches[row_of, it]
            current = {k: v.requires_grad_() for k, v in params.items()}
            with torch.enable_grad():
                value, _ = batched_objective(current, e.requires_grad_(), previous, targets,
                                             task.x_train[idx], task.y_train[idx], beta)
                # runs share no parameters, so the gradient of the sum is every run's own gradient
                grads = dict(zip(keys, torch.autograd.grad(value.sum(), [*current.values(), e])))
                if lookahead:   # the penalty's gradient at theta + Delta(task loss alone), Delta detached
                    ahead = {k: (v + optimizer_step(optimizer, grads[k], moments[k], it + 1, lr)[0]).detach()
                             .requires_grad_() for k, v in params.items()}
                    penalty = batched_penalty(ahead, previous, targets, beta)
                    for k, g in zip(params, torch.autograd.grad(penalty.sum(), list(ahead.values()))):
                        grads[k] = grads[k] + g
                    value = value + penalty
            finite = torch.isfinite(value.detach())
            newly = alive & ~finite
            s["diverged_task"] = torch.where(newly, t, s["diverged_task"])
            s["diverged_iteration"] = torch.where(newly, it, s["diverged_iteration"])
            alive = alive & finite
            with torch.no_grad():
                for k in keys:
                    p = e if k == "__embedding__" else params[k]
                    step, new_moments = optimizer_step(optimizer, grads[k], moments[k], it + 1, lr)
                    moments[k] = tuple(torch.where(_view(alive, m), n, m)
                                       for m, n in zip(moments[k], new_moments))
                    new = torch.where(_view(alive, p), p + step, p)
                    if k == "__embedding__":
                        e = new
                    else:
                        params[k] = new
            if bar is not None:
                bar.update(1)
        s["alive"] = alive
        s["embeddings"][:, t] = e.detach()
        with torch.no_grad():
            for j in range(t + 1):
                out = batched_predict(params, s["embeddings"][:, j], tasks[j].x_test)
                s["test_mse"][:, t, j] = torch.where(alive, ((out - tasks[j].y_test) ** 2).mean(dim=(1, 2)),
                                                     math.nan)
            s["targets"] = torch.stack([batched_generate(params, s["embeddings"][:, j])
                                        for j in range(t + 1)], dim=1)
        s["params"], s["task"] = {k: v.detach() for k, v in params.items()}, t + 1
        if on_task is not None:
            on_task(s, t)
    if bar is not None:
        bar.close()
    return _finish(s, batched_predict, tasks, shape, records)


def _finish(s, batched_predict, tasks, shape, records):
    """The results of a finished training state (see ``_train_grid``)."""
    alive, embeddings = s["alive"], s["embeddings"]
    with torch.no_grad():
        predictions = torch.stack([batched_predict(s["params"], embeddings[:, j], tasks[j].x_test)[..., 0]
                                   for j in range(len(tasks))], dim=1)
        predictions = torch.where(_view(alive, predictions), predictions, math.nan)
        moved = embeddings - s["start_embeddings"]
        shift = torch.where(_view(alive, embeddings), moved, math.nan).norm(dim=-1)
    out = {"train_loss": s["train_loss"], "test_mse": s["test_mse"], "diverged_task": s["diverged_task"],
           "diverged_iteration": s["diverged_iteration"], "predictions": predictions,
           "embedding_shift": shift}
    out = {k: v.detach().cpu().reshape(*shape, *v.shape[1:]) for k, v in out.items()}
    out["record_iterations"] = records
    return out


# ---------------------------------------------------------------------------------------- at initialization
def predicted_generated_variances(config, init):
    """``(Var(W[t]), Var(b[t]))`` per mainnet layer of the mainnet a freshly initialized hypernet generates.

    Variance propagation (Chapters 4-6): the body's output has second moment ``q = E[h^2]``, starting from
    ``Var(e) = 1`` and updated by each ReLU body layer with ``n`` inputs and weight variance ``v`` as
    ``q <- n v q / 2``; a head with weight variance ``Var(H)`` then generates ``Var(W) = d_k Var(H) q``
    (likewise ``Var(b) = d_k Var(G) q``), ``d_k`` the body width. Classical inits use ``init_variance`` with
    gain 1 (Xavier, ``config.xavier_mode``) or 2 (Kaiming) on every layer; hyperfan inits give the body fan-in
    init (``q`` stays 1) and the heads the Table 1 variances. Needs a ReLU hypernet and mainnet.
    """
    check_choice("init", init, INITS)
    for name in ("mainnet_activation", "hypernet_activation"):
        check_choice(name, getattr(config, name), ("relu",))
    sizes = [config.embedding_dim, *config.hypernet_hidden]
    shapes = [(o, i) for i, o in zip(config.layer_sizes[:-1], config.layer_sizes[1:])]
    nonlinearities = ["relu"] * (len(shapes) - 1) + ["linear"]
    d_k = sizes[-1]
    q = 1.0
    if init.startswith("hyperfan"):
        heads = [hyperfan_variances(init[len("hyperfan_"):], d_in, d_out, d_k, d_k, 1.0, nl, True)
                 for (d_out, d_in), nl in zip(shapes, nonlinearities)]
    else:
        mode, gain = (config.xavier_mode, 1.0) if init == "xavier" else (init[len("kaiming_"):], 2.0)
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            q = n_in * init_variance(n_in, n_out, mode, gain) * q / 2.0
        heads = [(init_variance(d_k, d_out * d_in, mode, gain), init_variance(d_k, d_out, mode, gain))
                 for d_out, d_in in shapes]
    return [d_k * v_h * q for v_h, _ in heads], [d_k * v_g * q for _, v_g in heads]


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


# ------------------------------------------------------------------------------------------------ analysis
def select_learning_rate(train_loss, learning_rates):
    """Index of the best learning rate for one init, and the criterion per rate.

    ``train_loss`` has shape ``(n_lr, runs, tasks, n_records)``. The criterion, per rate: first the number of
    diverged runs (fewer is better), then the mean over surviving runs and the three tasks of the training
    loss at the end of each task (smaller is better).
    """
    loss = as_array(train_loss)
    final = loss[..., -1]                                   # (n_lr, runs, tasks)
    diverged = (~np.isfinite(final)).any(axis=-1).sum(axis=-1)
    mean_final = np.array([np.nanmean(f) if np.isfinite(f).any() else np.inf for f in final])
    best = min(range(len(learning_rates)), key=lambda i: (diverged[i], mean_final[i]))
    return best, {"diverged_runs": diverged.tolist(), "mean_final_train_loss": mean_final.tolist()}


def adam_betas(config):
    """The ``beta_output`` values of the Adam runs: the config's own first, then the others of ``betas``."""
    return (config.beta_output, *[b for b in config.betas if b != config.beta_output])


def run(config, device="auto", progress=True, checkpoint=None):
    """The whole experiment of ``config``: the main sweep, the learning-rate choice per init, and the Adam
    runs (arrays with leading dims ``(len(adam_betas(config)), adam_runs)``).

    With a :class:`~hyperinit_lite.results.Checkpoint`, the state is saved after every task of every part
    (``"sweep, task 2"``) and a run continues from the last one saved; the results equal an uninterrupted
    run's.
    """
    if isinstance(config, str):
        config = get_config(config)
    device = resolve_device(device)
    start = time.perf_counter()
    state = (checkpoint.load() if checkpoint is not None else None) or {"done": {}, "partial": None}
    sweep = _part(state, checkpoint, "sweep", lambda resume, save: train_grid(
        config, [(init, lr, config.beta_output, r) for init in config.inits for lr in config.learning_rates
                 for r in range(config.runs)],
        config.optimizer, config.iterations, (len(config.inits), len(config.learning_rates), config.runs),
        device, progress, f"{config.name}: {config.optimizer} sweep", resume, save))
    chosen, criterion = {}, {}
    for i, init in enumerate(config.inits):
        best, criterion[init] = select_learning_rate(sweep["train_loss"][i], config.learning_rates)
        chosen[init] = config.learning_rates[best]
    results = {"inits": list(config.inits), "learning_rates": list(config.learning_rates),
               "task_names": list(TASK_NAMES), "sweep": sweep, "chosen_lr": chosen, "criterion": criterion}
    if config.adam_runs:
        betas = adam_betas(config)
        grid = [(config.adam_init, config.adam_lr, b, r) for b in betas for r in range(config.adam_runs)]
        results["adam"] = _part(state, checkpoint, "adam", lambda resume, save: train_grid(
            config, grid, "adam", config.adam_iterations, (len(betas), config.adam_runs), device, progress,
            f"{config.name}: Adam", resume, save))
        results["adam_betas"] = list(betas)
    results["seconds"] = time.perf_counter() - start
    results["device"] = str(device)
    return results


def _part(state, checkpoint, name, train):
    """Part ``name`` of a run (``train(resume, on_task)``), taken from ``state`` when done, continued from its
    last saved task when interrupted; with a checkpoint, saved after each task."""
    if name in state["done"]:
        return state["done"][name]
    partial = state["partial"]
    resume = partial["state"] if partial is not None and partial["part"] == name else None

    def save(task_state, task):
        if checkpoint is not None:
            state["partial"] = {"part": name, "state": task_state}
            checkpoint.save(state, f"{name}, task {task + 1}")

    out = train(resume, save)
    state["done"][name], state["partial"] = out, None
    return out


def _quiet(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with numpy's all-NaN warnings silenced (every run diverged: NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def _chosen(results, init):
    """Indices ``(i, l)`` of ``init`` and of its chosen learning rate in the sweep arrays."""
    return results["inits"].index(init), results["learning_rates"].index(results["chosen_lr"][init])


def sweep_test_mse(results, init, lr=None):
    """Test MSEs ``(runs, after task t, of task j)`` of ``init`` at ``lr`` (default: its chosen rate)."""
    i, l = _chosen(results, init)
    if lr is not None:
        l = results["learning_rates"].index(lr)
    return as_array(results["sweep"]["test_mse"])[i, l]


def adam_test_mse(results, beta=None):
    """Test MSEs ``(runs, after task t, of task j)`` of the Adam runs at ``beta`` (default: the config's)."""
    k = 0 if beta is None else [float(b) for b in results["adam_betas"]].index(float(beta))
    return as_array(results["adam"]["test_mse"])[k]


def after_learning(test_mse):
    """``(runs, tasks)``: each task's test MSE right after it was learned (the diagonal)."""
    return np.diagonal(as_array(test_mse), axis1=-2, axis2=-1)


def forgetting(test_mse):
    """``(runs, tasks)``: test MSE after the whole sequence divided by the test MSE right after learning the
    task (1 for the last task; above 1 means forgotten)."""
    test_mse = as_array(test_mse)
    return test_mse[:, -1] / after_learning(test_mse)


def summary(results):
    """One row per init at its chosen learning rate (means over the runs that did not diverge).

    ``loss_at_init`` / ``median_loss_at_init``: training MSE on task 1 at iteration 0, mean / median over
    runs;
    ``final_train_loss[t]``: training MSE of task ``t`` at the end of task ``t``; ``test_after_learning[t]``:
    test MSE of task ``t`` right after learning it; ``final_test_mse[t]``: test MSE of task ``t`` after the
    whole sequence; ``diverged_runs`` out of ``runs``.
    """
    sweep, rows = results["sweep"], []
    loss, tasks = as_array(sweep["train_loss"]), as_array(sweep["diverged_task"])
    for init in results["inits"]:
        i, l = _chosen(results, init)
        test = sweep_test_mse(results, init)
        rows.append({"init": init, "lr": results["chosen_lr"][init],
                     "loss_at_init": float(loss[i, l, :, 0, 0].mean()),
                     "median_loss_at_init": float(np.median(loss[i, l, :, 0, 0])),
                     "final_train_loss": _quiet(np.nanmean, loss[i, l, :, :, -1], axis=0).tolist(),
                     "test_after_learning": _quiet(np.nanmean, after_learning(test), axis=0).tolist(),
                     "final_test_mse": _quiet(np.nanmean, test[:, -1], axis=0).tolist(),
                     "diverged_runs": int((tasks[i, l] >= 0).sum()), "runs": loss.shape[2]})
    return rows


def divergence(results):
    """``{init: {lr: (diverged runs, runs, earliest (task, iteration) or None)}}`` over the whole sweep
    (tasks counted from 1)."""
    sweep, table = results["sweep"], {}
    tasks, iters = as_array(sweep["diverged_task"]), as_array(sweep["diverged_iteration"])
    for i, init in enumerate(results["inits"]):
        table[init] = {}
        for l, lr in enumerate(results["learning_rates"]):
            hit = tasks[i, l] >= 0
            first = None
            if hit.any():
                task, it = min(zip(tasks[i, l][hit].astype(int), iters[i, l][hit].astype(int)))
                first = (int(task) + 1, int(it))
            table[init][float(lr)] = (int(hit.sum()), int(hit.size), first)
    return table


def final_train_loss(results):
    """``{init: {lr: (mean final training loss of the surviving runs, surviving runs, runs)}}``: the
    training MSE at the end of each task, averaged over the three tasks and the runs that did not diverge."""
    loss = as_array(results["sweep"]["train_loss"])[..., -1]          # (inits, lrs, runs, tasks)
    table = {}
    for i, init in enumerate(results["inits"]):
        table[init] = {}
        for l, lr in enumerate(results["learning_rates"]):
            alive = np.isfinite(loss[i, l]).all(axis=-1)
            mean = float(loss[i, l][alive].mean()) if alive.any() else math.nan
            table[init][float(lr)] = (mean, int(alive.sum()), int(alive.size))
    return table


def _g(value):
    """A number with 2 significant figures for a table cell (``-`` for NaN)."""
    return "-" if not np.isfinite(value) else f"{value:.2g}"


def markdown_summary(results):
    """:func:`summary` as a markdown table (2 significant figures): the numbers behind Chapter 9's claims."""
    head = ("| init | lr | loss at init (median) | train loss, end of task 1/2/3 | test MSE after task 3, "
            "tasks 1/2/3 | diverged |\n| --- | --- | --- | --- | --- | --- |")
    rows = [f"| {INIT_LABELS[r['init']]} | {r['lr']:.0e} | {_g(r['median_loss_at_init'])} | "
            + " / ".join(map(_g, r["final_train_loss"])) + " | " + " / ".join(map(_g, r["final_test_mse"]))
            + f" | {r['diverged_runs']}/{r['runs']} |" for r in summary(results)]
    return "\n".join([head, *rows])


def markdown_final_loss(results):
    """Per init and learning rate: mean final training loss of the surviving runs (survivors / runs); the
    chosen rate in bold."""
    lrs = results["learning_rates"]
    lines = ["| init | " + " | ".join(f"lr {lr:.0e}" for lr in lrs) + " |", "| --- |" + " --- |" * len(lrs)]
    for init, per_lr in final_train_loss(results).items():
        cells = [f"{_g(m)} ({n}/{runs})" for m, n, runs in per_lr.values()]
        chosen = lrs.index(results["chosen_lr"][init])
        cells[chosen] = f"**{cells[chosen]}**"
        lines.append(f"| {INIT_LABELS[init]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_test_mse(columns):
    """A markdown table of test MSEs per task after the whole sequence: ``columns`` maps a label to test MSEs
    ``(runs, 3, 3)``; each cell is the median ``[min, max]`` over the runs that did not diverge."""
    labels = list(columns)
    lines = ["| task | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    finals = {k: as_array(v)[:, -1] for k, v in columns.items()}
    for t, name in enumerate(TASK_NAMES):
        cells = []
        for final in finals.values():
            col = final[np.isfinite(final[:, t]), t]
            cells.append(f"{np.median(col):.2g} [{col.min():.2g}, {col.max():.2g}]" if col.size else "-")
        lines.append(f"| {t + 1}: $y = {name}$ | " + " | ".join(cells) + " |")
    runs = [f"{np.isfinite(f).all(axis=1).sum()}/{len(f)}" for f in finals.values()]
    lines.append("| runs | " + " | ".join(runs) + " |")
    return "\n".join(lines)


def curves(results, init, lr=None):
    """``(iterations, mean, sem)`` of the training loss of the sweep's ``init`` over the runs that did not
    diverge, at ``lr`` (default: its chosen rate), the three tasks laid end to end."""
    i, l = _chosen(results, init)
    if lr is not None:
        l = results["learning_rates"].index(lr)
    loss = as_array(results["sweep"]["train_loss"])[i, l]               # (runs, tasks, records)
    recs = np.array(results["sweep"]["record_iterations"])
    x = np.concatenate([t * recs[-1] + recs for t in range(loss.shape[1])])
    values = loss.transpose(1, 2, 0).reshape(-1, loss.shape[0])          # (tasks*records, runs)
    n = np.isfinite(values).sum(axis=1)
    mean = _quiet(np.nanmean, values, axis=1)
    sem = _quiet(lambda v: np.nanstd(v, axis=1, ddof=1) / np.sqrt(n), values)
    return x, mean, sem


def plot_curves(results, ax=None, inits=None, lr=None):
    """The paper's Figure 4: training loss per init, mean +/- standard error over the runs that did not
    diverge, at each init's chosen learning rate (or at the common rate ``lr``)."""
    import matplotlib.pyplot as plt
    ax = ax or plt.gca()
    for init in inits or results["inits"]:
        x, mean, sem = curves(results, init, lr)
        rate = results["chosen_lr"][init] if lr is None else lr
        line, = ax.plot(x, mean, label=f"{INIT_LABELS[init]} (lr {rate:.0e})")
        ax.fill_between(x, np.maximum(mean - sem, 1e-12), mean + sem, color=line.get_color(), alpha=0.25)
    n_iter = results["sweep"]["record_iterations"][-1]
    for t in range(1, len(results["task_names"])):
        ax.axvline(t * n_iter, color="0.6", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="iteration (three tasks in sequence)",
           ylabel="training MSE of the current task")
    ax.legend(fontsize="small")
    return ax


def plot_fits(predictions, config, axes, color="C3", label="mainnet after task 3"):
    """The mainnets generated from each task's embedding after the whole sequence (``predictions``
    ``(runs, 3, n_test)``), one line per run, over each task's data on ``axes`` (three)."""
    tasks = make_tasks(config.n_train, config.n_test, config.noise_std, config.data_seed)
    pred = as_array(predictions)
    for t, (ax, task) in enumerate(zip(axes, tasks)):
        ax.plot(task.x_train[:, 0], task.y_train[:, 0], ".", color="0.6", ms=3, label="training data")
        ax.plot(task.x_test[:, 0], task.y_test[:, 0], "k-", lw=1, label="f(x)")
        for r in range(pred.shape[0]):
            ax.plot(task.x_test[:, 0], pred[r, t], "-", color=color, alpha=0.6, lw=1,
                    label=label if r == 0 else None)
        ax.set(title=f"task {t + 1}: y = {task.name}", xlabel="x")
    return axes


def plot_beta_sweep(results, ax=None):
    """Median test MSE after the whole sequence (lines) and right after learning (dashed) of each task
    against ``beta_output``, over the Adam runs (``beta_output = 0`` drawn at the left edge)."""
    import matplotlib.pyplot as plt
    ax = ax or plt.gca()
    betas = np.array(results["adam_betas"], dtype=float)
    order = np.argsort(betas)
    test = as_array(results["adam"]["test_mse"])[order]               # (betas, runs, 3, 3)
    positive = betas[order][betas[order] > 0]
    x = np.concatenate([[positive.min() / 10], positive]) if betas.min() == 0 else positive
    for t in range(test.shape[-1]):
        final = _quiet(np.nanmedian, test[:, :, -1, t], axis=1)
        now = _quiet(np.nanmedian, test[:, :, t, t], axis=1)
        line, = ax.plot(x, final, "o-", label=f"task {t + 1}, after task 3")
        ax.plot(x, now, "x--", color=line.get_color(), alpha=0.7,
                label=f"task {t + 1}, right after learning it")
    ticks = [f"{b:g}" for b in betas[order]]
    ax.set(xscale="log", yscale="log", xticks=x, xlabel=r"$\beta_\mathrm{output}$", ylabel="median test MSE")
    ax.set_xticklabels(ticks)
    ax.legend(fontsize="small", ncol=2)
    return ax


# ------------------------------------------------------------------------------------------------------ CLI
def report(results):
    """The terminal summary of a run: the learning-rate table, the per-init summary and the Adam runs."""
    parts = [markdown_final_loss(results), markdown_summary(results)]
    if "adam" in results:
        tests = as_array(results["adam"]["test_mse"])
        parts.append("Adam runs, test MSE after task 3:\n" + markdown_test_mse(
            {f"beta {b:g}": t for b, t in zip(results["adam_betas"], tests)}))
    return "\n\n".join(parts)


EXPERIMENT = Experiment("continual", ContinualConfig, PRESETS, run, report)
