"""Continual learning of three regression tasks with a task-conditioned hypernetwork (Chapter 9; paper §5.2).

A hypernet ``h`` maps a trainable task embedding ``e_T`` (size 2, drawn from ``U(-sqrt 3, sqrt 3)``) to every
weight and bias of a ReLU mainnet ``1-10-10-1``; the mainnet is fit to task ``T``'s data. The three tasks of
:mod:`hyperinit_lite.regression_data` are learned in sequence. While learning task ``T > 1`` the objective is

    L = MSE_T(theta, e_T) + beta_output / (T - 1) * sum_{j<T} sum_p (h_p(e_j; theta) - h_p(e_j; theta*))^2

where ``theta*`` are the hypernet parameters before task ``T`` (the targets are computed once, then fixed) and
the earlier embeddings ``e_j`` are frozen; ``theta`` and the current ``e_T`` are trained.

All runs of a sweep (inits x learning rates x seeds) train at once: their parameters are stacked with
``torch.func.stack_module_state``, the objective of all runs is one ``torch.func.vmap`` of a
``torch.func.functional_call`` of the hypernet, and since runs share no parameter, the gradient of the summed
objective is every run's own gradient (``tests/test_continual.py`` checks this against a plain loop). A run
whose objective becomes non-finite (NaN or inf) is recorded as diverged at that task and iteration, frozen,
and reported as NaN from then on; the others continue.

Command line: ``python -m hyperinit_lite continual --preset quick|paper --device cpu|cuda --out DIR [--rerun]``.
"""
import copy
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from ..classical import MODES, check_choice, init_variance
from ..fans import check_positive, check_positive_int
from ..hyperfan import hyperfan_variances
from ..hypernet import Hypernet, mainnet_forward, uniform_embeddings
from ..initializers import hyperfan_in_, hyperfan_out_, kaiming_, xavier_
from ..regression_data import TASK_NAMES, make_tasks
from ..results import as_array, load_or_run

INITS = ("xavier", "kaiming_fan_in", "kaiming_fan_out", "hyperfan_in", "hyperfan_out")
INIT_LABELS = {"xavier": "Xavier", "kaiming_fan_in": "Kaiming fan-in", "kaiming_fan_out": "Kaiming fan-out",
               "hyperfan_in": "hyperfan-in", "hyperfan_out": "hyperfan-out"}
OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
EMBEDDING_KEYS = ("weight_embeddings", "bias_embeddings")
REFERENCE_TEST_MSE = (0.0042, 0.0024, 0.0061)  # the reference code's final test MSEs (Adam, lr 1e-2, 4001 it.)


@dataclass(frozen=True)
class ContinualConfig:
    """Everything that determines a continual-learning sweep (stored beside its results).

    The main sweep trains every init in ``inits`` at every rate in ``learning_rates`` with ``runs`` seeds
    using ``optimizer``; the reference run trains ``reference_init`` with Adam at ``reference_lr`` for
    ``reference_iterations`` per task (``reference_runs = 0`` skips it). ``xavier_mode`` is the mode of the
    Xavier init (``'harmonic'`` is Glorot & Bengio's ``2 / (fan_in + fan_out)``, as ``torch.nn.init``).
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
    reference_init: str = "hyperfan_in"
    reference_lr: float = 1e-2
    reference_iterations: int = 4001
    reference_runs: int = 15

    def __post_init__(self):
        if not self.inits:
            raise ValueError(f"inits must name at least one of {', '.join(map(repr, INITS))}")
        for init in self.inits:
            check_choice("inits", init, INITS)
        check_choice("reference_init", self.reference_init, INITS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("xavier_mode", self.xavier_mode, MODES)
        if not self.learning_rates:
            raise ValueError("learning_rates must hold at least one learning rate")
        for i, lr in enumerate(self.learning_rates):
            check_positive(f"learning_rates[{i}]", lr)
        check_positive("reference_lr", self.reference_lr)
        for name in ("runs", "iterations", "batch_size", "record_every", "n_train", "n_test", "embedding_dim",
                     "reference_iterations"):
            check_positive_int(name, getattr(self, name))
        if self.reference_runs != 0:
            check_positive_int("reference_runs", self.reference_runs)
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})")
        if not self.beta_output >= 0 or not self.noise_std >= 0:
            raise ValueError(f"beta_output and noise_std must be >= 0, got {self.beta_output!r}, {self.noise_std!r}")

    @property
    def layer_sizes(self):
        """The mainnet's layer sizes ``[1, *mainnet_hidden, 1]``."""
        return [1, *self.mainnet_hidden, 1]


PRESETS = {
    # about a minute on a 2-core CPU: every init and learning rate with 5 seeds and 1/6 of the paper's
    # iterations; the Adam reference in the reference code's own setting (4001 iterations per task), 3 seeds
    "quick": ContinualConfig(name="quick", runs=5, iterations=1000, record_every=20, reference_runs=3),
    # Appendix B.2: SGD, 6000 iterations per task, batch 32, lr from {1e-2, ..., 1e-5}, 15 runs
    "paper": ContinualConfig(),
}


def get_config(preset, **overrides):
    """The config of preset ``'quick'`` or ``'paper'``, with fields replaced by ``overrides``."""
    check_choice("preset", preset, tuple(PRESETS))
    return dataclasses.replace(PRESETS[preset], **overrides)


# ----------------------------------------------------------------------------------------------- randomness
def seeded_generator(*key):
    """A CPU ``torch.Generator`` seeded from a tuple of non-negative ints (independent streams per key)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def init_hypernet(config, init, run):
    """The hypernet of run ``run`` initialized with ``init`` (one of ``INITS``); same seed -> same draws per init.

    Architecture (Appendix B.2): a body of ``hypernet_hidden`` ReLU layers on the task embedding and one head
    per mainnet weight and bias; the mainnet is a ReLU MLP ``config.layer_sizes``.
    """
    check_choice("init", init, INITS)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init draws from the global RNG
        hypernet = Hypernet(config.layer_sizes, config.embedding_dim, hidden_sizes=config.hypernet_hidden,
                            generates_bias=True, activation="relu")
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
    """Run ``run``'s task embeddings, one row per task, from ``U(-sqrt 3, sqrt 3)`` (variance 1)."""
    return uniform_embeddings(n_tasks, config.embedding_dim, seeded_generator(1, config.seed, run))


def batch_indices(config, run, task, iterations):
    """Indices ``(iterations, batch_size)`` of run ``run``'s minibatches on ``task``: each row is a batch drawn
    without replacement from the ``n_train`` points, independently per iteration."""
    g = seeded_generator(2, config.seed, run, task)
    return torch.rand(iterations, config.n_train, generator=g).argsort(dim=1)[:, :config.batch_size]


# ------------------------------------------------------------------------------------------- model and loss
def generate(hypernet, params, embedding):
    """Mainnet ``(weights, biases)`` generated from one task ``embedding`` (every head sees the same ``e``)."""
    e = embedding.expand(len(hypernet.shapes), embedding.shape[-1])
    return functional_call(hypernet, params, (), {"weight_embeddings": e, "bias_embeddings": e})


def flatten_generated(weights, biases):
    """All generated mainnet parameters of one task as one vector ``h_p(e)`` (weights first, then biases)."""
    return torch.cat([w.reshape(-1) for w in weights] + [b.reshape(-1) for b in biases])


def output_regularizer(generated, targets):
    """``1/(T-1) sum_{j<T} sum_p (generated[j, p] - targets[j, p])^2``: the output regularizer of Chapter 9.

    ``generated`` and ``targets`` have shape ``(T - 1, P)``: row ``j`` is ``h(e_j)`` now and before task ``T``.
    With no earlier task (``T = 1``) it is 0.
    """
    if generated.shape != targets.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and targets {tuple(targets.shape)} differ in shape")
    if generated.shape[0] == 0:
        return generated.new_zeros(())
    return ((generated - targets) ** 2).sum() / generated.shape[0]


def unflatten_generated(flat, shapes):
    """Inverse of :func:`flatten_generated` for a mainnet with weight ``shapes``."""
    sizes = [o * i for o, i in shapes] + [o for o, _ in shapes]
    parts = torch.split(flat, sizes, dim=-1)
    n = len(shapes)
    return [p.view(*p.shape[:-1], *s) for p, s in zip(parts[:n], shapes)], list(parts[n:])


def make_objective(hypernet, n_previous, beta_output):
    """The per-run objective ``(params, e_T, previous_e, targets, x, y) -> (L, MSE)`` for task ``n_previous + 1``.

    ``previous_e`` ``(n_previous, dim)`` are the frozen earlier embeddings and ``targets`` ``(n_previous, P)``
    their generated outputs before this task. The generated parameters of all tasks come from one inner
    ``vmap`` over the embeddings.
    """
    def generate_flat(params, embedding):
        return flatten_generated(*generate(hypernet, params, embedding))

    def objective(params, embedding, previous, targets, x, y):
        if n_previous == 0:
            weights, biases = generate(hypernet, params, embedding)
        else:
            flat = vmap(generate_flat, in_dims=(None, 0))(params, torch.cat([embedding[None], previous]))
            weights, biases = unflatten_generated(flat[0], hypernet.shapes)
        mse = ((mainnet_forward(x, weights, biases, "relu") - y) ** 2).mean()
        if n_previous == 0:
            return mse, mse
        return mse + beta_output * output_regularizer(flat[1:], targets), mse
    return objective


def _view(vector, like):
    """``vector`` of shape ``(R,)`` reshaped to broadcast against ``like`` of shape ``(R, ...)``."""
    return vector.view(-1, *([1] * (like.dim() - 1)))


# ----------------------------------------------------------------------------------------------- training
def train_runs(config, inits, learning_rates, optimizer, iterations, runs, device="cpu", progress=True, desc=None):
    """Train every (init, learning rate, seed) combination at once (see ``_train_runs``).

    On the CPU this uses one thread: the tensors are tiny, so more threads only add synchronization (and on a
    busy machine they slow every step down many times over). The previous thread count is restored.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        return _train_runs(config, inits, learning_rates, optimizer, iterations, runs, device, progress, desc)
    finally:
        torch.set_num_threads(threads)


def _train_runs(config, inits, learning_rates, optimizer, iterations, runs, device, progress, desc):
    """Train every (init, learning rate, seed) combination at once on the three tasks in sequence.

    Returns a dict of tensors with leading dims ``(len(inits), len(learning_rates), runs)``:
    ``train_loss`` ``(..., 3, n_records)`` the MSE on the current task's full training set after each
    recorded iteration (NaN once diverged); ``test_mse`` ``(..., 3, 3)`` the test MSE of task ``j`` (last
    axis) after learning task ``t`` (NaN for ``j > t``); ``diverged_task`` / ``diverged_iteration`` (-1 if
    the run never diverged); ``predictions`` ``(..., 3, n_test)`` the mainnet on each task's test inputs after
    the sequence; ``embedding_shift`` ``(..., 3)`` how far training moved each task embedding,
    ``|e_t - e_t(init)|``; ``record_iterations``.
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    device = torch.device(device)
    tasks = [t.to(device) for t in make_tasks(config.n_train, config.n_test, config.noise_std, config.data_seed)]
    n_tasks = len(tasks)
    grid = [(init, lr, run) for init in inits for lr in learning_rates for run in range(runs)]
    R = len(grid)
    models = {(init, run): init_hypernet(config, init, run) for init in inits for run in range(runs)}
    stacked, _ = stack_module_state([models[init, run] for init, _, run in grid])
    params = {k: v.detach().to(device) for k, v in stacked.items() if k not in EMBEDDING_KEYS}
    base = copy.deepcopy(models[inits[0], 0]).to("meta")
    embeddings = torch.stack([initial_embeddings(config, run, n_tasks) for _, _, run in grid]).to(device)
    start_embeddings = embeddings.clone()
    lr = torch.tensor([lr for _, lr, _ in grid], device=device)
    run_of = torch.tensor([run for _, _, run in grid], device=device)

    record_iterations = sorted(set(range(0, iterations + 1, config.record_every)) | {iterations})
    record_at = {it: k for k, it in enumerate(record_iterations)}
    train_loss = torch.full((R, n_tasks, len(record_iterations)), math.nan, device=device)
    test_mse = torch.full((R, n_tasks, n_tasks), math.nan, device=device)
    alive = torch.ones(R, dtype=torch.bool, device=device)
    diverged_task = torch.full((R,), -1, dtype=torch.long, device=device)
    diverged_iteration = torch.full((R,), -1, dtype=torch.long, device=device)

    def predict(p, e, x):
        return mainnet_forward(x, *generate(base, p, e), "relu")
    batched_predict = vmap(predict, in_dims=(0, 0, None))
    batched_generate = vmap(lambda p, e: flatten_generated(*generate(base, p, e)))

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_tasks * iterations, desc=desc or f"{optimizer} x{R} runs", file=sys.stderr,
                   mininterval=2.0, ascii=True)
    targets = torch.zeros(R, 0, 1, device=device)
    for t, task in enumerate(tasks):
        batched_objective = vmap(make_objective(base, t, config.beta_output))
        previous = embeddings[:, :t]
        e = embeddings[:, t].clone()
        batches = torch.stack([batch_indices(config, run, t, iterations) for run in range(runs)]).to(device)
        moments = None
        if optimizer == "adam":
            moments = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}
            moments["__embedding__"] = (torch.zeros_like(e), torch.zeros_like(e))
        for it in range(iterations + 1):
            if it in record_at:
                with torch.no_grad():
                    out = batched_predict(params, e, task.x_train)
                    loss = ((out - task.y_train) ** 2).mean(dim=(1, 2))
                train_loss[:, t, record_at[it]] = torch.where(alive, loss, math.nan)
            if it == iterations:
                break
            idx = batches[run_of, it]
            current = {k: v.requires_grad_() for k, v in params.items()}
            current["__embedding__"] = e.requires_grad_()
            with torch.enable_grad():
                objective_value, _ = batched_objective({k: current[k] for k in params}, e, previous, targets,
                                                       task.x_train[idx], task.y_train[idx])
                # runs share no parameters, so the gradient of the sum is every run's own gradient
                grads = torch.autograd.grad(objective_value.sum(), list(current.values()))
            finite = torch.isfinite(objective_value.detach())
            newly = alive & ~finite
            diverged_task = torch.where(newly, t, diverged_task)
            diverged_iteration = torch.where(newly, it, diverged_iteration)
            alive = alive & finite
            with torch.no_grad():
                for (k, p), g in zip(current.items(), grads):
                    if optimizer == "sgd":
                        update = g
                    else:
                        m, v = moments[k]
                        m = torch.where(_view(alive, m), ADAM_BETAS[0] * m + (1 - ADAM_BETAS[0]) * g, m)
                        v = torch.where(_view(alive, v), ADAM_BETAS[1] * v + (1 - ADAM_BETAS[1]) * g * g, v)
                        moments[k] = (m, v)
                        m_hat = m / (1 - ADAM_BETAS[0] ** (it + 1))
                        v_hat = v / (1 - ADAM_BETAS[1] ** (it + 1))
                        update = m_hat / (v_hat.sqrt() + ADAM_EPS)
                    new = torch.where(_view(alive, p), p - _view(lr, p) * update, p)
                    if k == "__embedding__":
                        e = new
                    else:
                        params[k] = new
            if bar is not None:
                bar.update(1)
        embeddings[:, t] = e
        with torch.no_grad():
            for j in range(t + 1):
                out = batched_predict(params, embeddings[:, j], tasks[j].x_test)
                test_mse[:, t, j] = torch.where(alive, ((out - tasks[j].y_test) ** 2).mean(dim=(1, 2)), math.nan)
            targets = torch.stack([batched_generate(params, embeddings[:, j]) for j in range(t + 1)], dim=1)
    if bar is not None:
        bar.close()
    with torch.no_grad():
        predictions = torch.stack([batched_predict(params, embeddings[:, j], tasks[j].x_test)[..., 0]
                                   for j in range(n_tasks)], dim=1)
        predictions = torch.where(_view(alive, predictions), predictions, math.nan)

        shift = torch.where(_view(alive, embeddings), (embeddings - start_embeddings), math.nan).norm(dim=-1)

    shape = (len(inits), len(learning_rates), runs)
    out = {"train_loss": train_loss, "test_mse": test_mse, "diverged_task": diverged_task,
           "diverged_iteration": diverged_iteration, "predictions": predictions, "embedding_shift": shift}
    out = {k: v.detach().cpu().reshape(*shape, *v.shape[1:]) for k, v in out.items()}
    out["record_iterations"] = record_iterations
    return out


# ---------------------------------------------------------------------------------------- at initialization
def predicted_generated_variances(config, init):
    """``(Var(W[t]), Var(b[t]))`` per mainnet layer of the mainnet a freshly initialized hypernet generates.

    Variance propagation (Chapters 4-6): the body's output has second moment ``q = E[h^2]``, starting from
    ``Var(e) = 1`` and updated by each ReLU body layer with ``n`` inputs and weight variance ``v`` as
    ``q <- n v q / 2``; a head with weight variance ``Var(H)`` then generates ``Var(W) = d_k Var(H) q``
    (likewise ``Var(b) = d_k Var(G) q``), ``d_k`` the body width. Classical inits use ``init_variance`` with
    gain 1 (Xavier, ``config.xavier_mode``) or 2 (Kaiming) on every layer; hyperfan inits give the body fan-in
    init (``q`` stays 1) and the heads the Table 1 variances.
    """
    check_choice("init", init, INITS)
    sizes = [config.embedding_dim, *config.hypernet_hidden]
    shapes = [(o, i) for i, o in zip(config.layer_sizes[:-1], config.layer_sizes[1:])]
    nonlinearities = ["relu"] * (len(shapes) - 1) + ["linear"]
    d_k = sizes[-1]
    if init.startswith("hyperfan"):
        q = 1.0
        heads = [hyperfan_variances(init[len("hyperfan_"):], d_in, d_out, d_k, d_k, 1.0, nl, True)
                 for (d_out, d_in), nl in zip(shapes, nonlinearities)]
    else:
        mode, gain = (config.xavier_mode, 1.0) if init == "xavier" else (init[len("kaiming_"):], 2.0)
        q = 1.0
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
        out = vmap(mainnet_forward, in_dims=(None, 0, 0, None))(data.x_train, weights, biases, "relu")
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


def run(config, device="cpu", progress=True):
    """The whole experiment of ``config``: the SGD sweep, the learning-rate choice, and the Adam reference run."""
    if isinstance(config, str):
        config = get_config(config)
    start = time.perf_counter()
    sweep = train_runs(config, config.inits, config.learning_rates, config.optimizer, config.iterations,
                       config.runs, device, progress, desc=f"{config.name}: {config.optimizer} sweep")
    chosen, criterion = {}, {}
    for i, init in enumerate(config.inits):
        best, criterion[init] = select_learning_rate(sweep["train_loss"][i], config.learning_rates)
        chosen[init] = config.learning_rates[best]
    results = {"inits": list(config.inits), "learning_rates": list(config.learning_rates),
               "task_names": list(TASK_NAMES), "sweep": sweep, "chosen_lr": chosen, "criterion": criterion}
    if config.reference_runs:
        results["reference"] = train_runs(config, (config.reference_init,), (config.reference_lr,), "adam",
                                          config.reference_iterations, config.reference_runs, device, progress,
                                          desc=f"{config.name}: Adam reference")
    results["reference_paper_test_mse"] = list(REFERENCE_TEST_MSE)
    results["seconds"] = time.perf_counter() - start
    results["device"] = str(device)
    return results


def results_path(out_dir, preset):
    """Where the CLI and the chapter keep the results of ``preset``: ``out_dir/continual_<preset>.json``."""
    return Path(out_dir) / f"continual_{preset}.json"


def load_or_run_preset(preset, out_dir, device="cpu", progress=True, rerun=False):
    """Results of ``preset`` from ``out_dir`` if saved with the same config, else run and save them."""
    config = get_config(preset)
    return load_or_run(results_path(out_dir, preset), config, lambda c: run(c, device, progress), rerun=rerun)


def _mean_sem(values, axis=0):
    """Mean and standard error ``std / sqrt(n)`` along ``axis`` over the finite entries (diverged runs left out)."""
    values = as_array(values)
    values = np.where(np.isfinite(values), values, np.nan)
    n = np.isfinite(values).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # fewer than two finite runs give NaN
        return np.nanmean(values, axis=axis), np.nanstd(values, axis=axis, ddof=1) / np.sqrt(n)


def _chosen(results, init):
    """Indices ``(i, l)`` of ``init`` and of its chosen learning rate in the sweep arrays."""
    return results["inits"].index(init), results["learning_rates"].index(results["chosen_lr"][init])


def summary(results):
    """One row per init at its chosen learning rate (means over the runs that did not diverge).

    ``loss_at_init`` / ``median_loss_at_init``: training MSE on task 1 at iteration 0, mean / median over runs;
    ``final_train_loss[t]``: training MSE of task ``t`` at the end of task ``t``; ``test_after_learning[t]``:
    test MSE of task ``t`` right after learning it; ``final_test_mse[t]``: test MSE of task ``t`` after the
    whole sequence; ``diverged_runs`` out of ``runs``.
    """
    sweep, rows = results["sweep"], []
    loss, test = as_array(sweep["train_loss"]), as_array(sweep["test_mse"])
    tasks = as_array(sweep["diverged_task"])
    for init in results["inits"]:
        i, l = _chosen(results, init)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns (every run diverged) give NaN
            rows.append({"init": init, "lr": results["chosen_lr"][init],
                         "loss_at_init": float(loss[i, l, :, 0, 0].mean()),
                         "median_loss_at_init": float(np.median(loss[i, l, :, 0, 0])),
                         "final_train_loss": np.nanmean(loss[i, l, :, :, -1], axis=0).tolist(),
                         "test_after_learning": np.nanmean(np.diagonal(test[i, l], axis1=1, axis2=2),
                                                           axis=0).tolist(),
                         "final_test_mse": np.nanmean(test[i, l, :, -1], axis=0).tolist(),
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


def format_summary(results):
    """The table of :func:`summary` as text (2-3 significant figures): the numbers behind Chapter 9's claims."""
    fmt = lambda values: "".join(f"{v:>8.2g}" for v in values)  # noqa: E731
    lines = [f"{'':<16}{'lr':>6}{'loss at init':>18} | {'train loss, end of task':>24} | "
             f"{'test MSE after learning':>24} | {'test MSE after task 3':>24} | diverged",
             f"{'init':<16}{'':>6}{'mean':>9}{'median':>9} | " + " | ".join(
                 "".join(f"{t:>8}" for t in (1, 2, 3)) for _ in range(3)) + " |"]
    for r in summary(results):
        lines.append(f"{r['init']:<16}{r['lr']:>6.0e}{r['loss_at_init']:>9.3g}{r['median_loss_at_init']:>9.3g} | "
                     f"{fmt(r['final_train_loss'])} | {fmt(r['test_after_learning'])} | "
                     f"{fmt(r['final_test_mse'])} | {r['diverged_runs']:>3}/{r['runs']}")
    return "\n".join(lines)


def format_divergence(results):
    """Per init, the learning rates at which runs diverged: how many, and where the first one did."""
    lines = []
    for init, per_lr in divergence(results).items():
        parts = [f"lr {lr:.0e}: {n}/{m} (first: task {f[0]}, iteration {f[1]})"
                 for lr, (n, m, f) in per_lr.items() if n]
        lines.append(f"{init:<16}" + ("; ".join(parts) if parts else "no run diverged"))
    return "\n".join(lines)


def format_criterion(results):
    """The learning-rate choice per init and, at every rate, the two numbers of :func:`select_learning_rate`:
    diverged runs and mean final training loss."""
    lrs = results["learning_rates"]
    lines = [f"{'init':<16}{'chosen':>8}   " + "".join(f"{'lr ' + format(lr, '.0e'):>17}" for lr in lrs)]
    for init in results["inits"]:
        c = results["criterion"][init]
        cells = "".join(f"{d:>4} div, {float(v):>8.2g}" for d, v in zip(c["diverged_runs"],
                                                                          c["mean_final_train_loss"]))
        lines.append(f"{init:<16}{results['chosen_lr'][init]:>8.0e}   {cells}")
    return "\n".join(lines)


def format_reference(results):
    """The Adam reference runs: test MSE per task right after learning it and after the sequence (mean +/-
    standard error, and median, over runs), next to the reference code's final test MSEs."""
    test = as_array(results["reference"]["test_mse"])[0, 0]          # (runs, tasks after, task)
    after, final = np.diagonal(test, axis1=1, axis2=2), test[:, -1]
    (m1, s1), (m2, s2) = _mean_sem(after), _mean_sem(final)
    med1, med2 = np.median(after, axis=0), np.median(final, axis=0)
    lines = [f"{str(len(test)) + ' runs':<9}{'after learning it':>25}{'after task 3':>32}{'reference code':>18}",
             f"{'task':<6}{'mean +/- s.e.':>20}{'median':>12}{'mean +/- s.e.':>22}{'median':>12}{'after task 3':>16}"]
    for t in range(test.shape[-1]):
        lines.append(f"{t + 1:<6}{m1[t]:>11.2g} +/- {s1[t]:<7.1g}{med1[t]:>9.2g}{m2[t]:>13.2g} +/- {s2[t]:<7.1g}"
                     f"{med2[t]:>9.2g}{results['reference_paper_test_mse'][t]:>16.2g}")
    return "\n".join(lines)


def format_embedding_shift(results):
    """How far training moved each task embedding, ``|e_t - e_t(init)|``, median over runs: SGD per init at
    its chosen rate, and the Adam reference runs."""
    shift = as_array(results["sweep"]["embedding_shift"])
    lines = []
    for init in results["inits"]:
        i, l = _chosen(results, init)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # every run diverged: NaN
            median = np.nanmedian(shift[i, l], axis=0)
        lines.append(f"SGD  {init:<16} lr {results['chosen_lr'][init]:.0e}: " + "  ".join(f"{v:.2g}" for v in median))
    if "reference" in results:
        ref = as_array(results["reference"]["embedding_shift"])[0, 0]
        lines.append(f"Adam {'hyperfan_in':<16} lr 1e-02: " + "  ".join(f"{v:.2g}" for v in np.median(ref, axis=0)))
    return "\n".join(lines)


def curves(results, init, lr=None, which="sweep"):
    """``(iterations, mean, sem)`` of the training loss over runs, the three tasks laid end to end."""
    part = results[which]
    if which == "sweep":
        i = results["inits"].index(init)
        l = results["learning_rates"].index(results["chosen_lr"][init] if lr is None else lr)
        loss = as_array(part["train_loss"])[i, l]
    else:
        loss = as_array(part["train_loss"])[0, 0]
    recs = np.array(part["record_iterations"])
    n_iter = recs[-1]
    x = np.concatenate([t * n_iter + recs for t in range(loss.shape[1])])
    values = loss.transpose(1, 2, 0).reshape(-1, loss.shape[0])        # (tasks*records, runs)
    mean, sem = _mean_sem(values.T, axis=0)
    return x, mean, sem


def plot_curves(results, ax=None, inits=None, lr=None):
    """The paper's Figure 4: training loss per init, mean +/- standard error over the runs that did not diverge,
    at each init's chosen learning rate (or at the common rate ``lr``)."""
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
    ax.set(yscale="log", xlabel="iteration (three tasks in sequence)", ylabel="training MSE of the current task")
    ax.legend(fontsize="small")
    return ax


def plot_fits(results, init="hyperfan_in", which="sweep", axes=None, config=None, color="C3"):
    """The mainnet generated from each task's embedding after the whole sequence, over that task's data.

    ``which='sweep'`` draws the runs of ``init`` at its chosen learning rate, ``'reference'`` the Adam runs.
    """
    import matplotlib.pyplot as plt
    config = config or PRESETS["quick"]
    tasks = make_tasks(config.n_train, config.n_test, config.noise_std, config.data_seed)
    if axes is None:
        _, axes = plt.subplots(1, len(tasks), figsize=(10, 3))
    if which == "sweep":
        i = results["inits"].index(init)
        l = results["learning_rates"].index(results["chosen_lr"][init])
        pred = as_array(results["sweep"]["predictions"])[i, l]      # (runs, tasks, n_test)
    else:
        pred = as_array(results["reference"]["predictions"])[0, 0]
    for t, (ax, task) in enumerate(zip(axes, tasks)):
        ax.plot(task.x_train[:, 0], task.y_train[:, 0], ".", color="0.6", ms=3, label="training data")
        ax.plot(task.x_test[:, 0], task.y_test[:, 0], "k-", lw=1, label="f(x)")
        for r in range(pred.shape[0]):
            ax.plot(task.x_test[:, 0], pred[r, t], "-", color=color, alpha=0.6, lw=1,
                    label="mainnet after task 3" if r == 0 else None)
        ax.set(title=f"task {t + 1}: y = {task.name}", xlabel="x")
    axes[0].legend(fontsize="small")
    return axes


# ------------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser):
    """Options of ``python -m hyperinit_lite continual``."""
    parser.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                        help="quick: ~1 min on a CPU; paper: Appendix B.2 (SGD, 6000 it./task, 15 runs)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="results", help="directory of the JSON results (default: results)")
    parser.add_argument("--rerun", action="store_true", help="train even if results for this config exist")
    return parser


def main(args):
    """Run (or reload) a preset and print the learning-rate choice, the summary table, the divergences and the
    Adam reference run."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    results = load_or_run_preset(args.preset, args.out, args.device, progress=True, rerun=args.rerun)
    print(f"results: {results_path(args.out, args.preset)}")
    print(format_criterion(results), format_summary(results), format_divergence(results), sep="\n\n")
    if "reference" in results:
        print("\nAdam reference run (lr 1e-2, 4001 iterations per task):", format_reference(results), sep="\n")
    return 0
