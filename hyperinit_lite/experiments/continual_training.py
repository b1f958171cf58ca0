"""Training every run of a continual-learning sweep at once (Chapter 9): minibatches, the optimizer steps and
the batched grid trainer, continued from a saved task.

All runs of a sweep train at once: their parameters are stacked with ``torch.func.stack_module_state``, the
objective of all runs is one ``torch.func.vmap`` of a ``torch.func.functional_call`` of the hypernet, and
since runs share no parameter, the gradient of the summed objective is every run's own gradient
(``tests/test_continual.py`` checks this against a plain loop). A run whose objective becomes non-finite is
recorded as diverged at that task and iteration, frozen, and reported as NaN from then on. With
``lookahead=True`` the penalty's gradient is taken at ``theta + Delta theta``, ``Delta theta`` the step the
optimizer would take on the task loss alone (detached), as von Oswald et al.'s code (hypercl) does.
"""
import copy
import math

import torch
from torch.func import stack_module_state, vmap

from ..hypernet import mainnet_forward
from ..regression_data import make_tasks
from ..validate import check_choice
from . import resolve_device, seeded_generator
from .continual_model import (EMBEDDING_KEYS, generate, generate_flat, init_hypernet, initial_embeddings,
                              make_objective, make_penalty)


OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


# ---------------------------------------------------------------------------------------------- minibatches
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


# ----------------------------------------------------------------------------------------------- optimizers
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


# ------------------------------------------------------------------------------------------------- training
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
    batched_generate = vmap(lambda p, e: generate_flat(base, p, e))
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
