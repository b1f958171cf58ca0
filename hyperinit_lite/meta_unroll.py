"""DIMAML's differentiable inner loop: training unrolled so that autograd reaches the init (Chapter 11).

From ``theta_0`` (sampled by a :class:`~hyperinit_lite.dimaml.LearnedInitializer`), :func:`unroll` runs ``K``
differentiable inner steps ``theta_{t+1} = U(theta_t, grad L_train(theta_t))`` (:class:`InnerOptimizer`: SGD,
momentum, Adam) through ``torch.func.functional_call``; the meta-loss is the mean validation loss at the steps
``S``, ``L_meta = (1/|S|) sum_{t in S} L_val(theta_t)``. Batch-norm running statistics are part of the
differentiable state: ``mean_{t+1} = (1 - m) mean_t + m b``, ``var_{t+1} = (1 - m) var_t + m v`` with the
batch mean ``b`` and variance ``v``. Gradient checkpointing every ``C`` inner steps stores only the states at
chunk boundaries and recomputes the rest during the backward pass. Used by :mod:`~hyperinit_lite.meta_train`.
"""
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .validate import check_choice, check_positive, check_positive_int

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


# --------------------------------------------------------------------------- differentiable inner optimizers
class InnerOptimizer:
    """Differentiable update ``(params, grads, state, t) -> (params, state)`` on dicts of tensors.

    Matches ``torch.optim.SGD`` (``momentum``, ``nesterov``) and ``torch.optim.Adam``; Adam adds ``1e-30``
    under its square root so the meta-gradient stays finite where a gradient entry is exactly zero.
    """

    def __init__(self, name="sgd", lr=0.01, momentum=0.9, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.name = check_choice("optimizer", name, OPTIMIZERS)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.lr, self.momentum, self.betas, self.eps = check_positive("lr", lr), momentum, tuple(betas), eps
        self.weight_decay = weight_decay

    def init(self, params):
        zeros = {n: torch.zeros_like(p) for n, p in params.items()}
        if self.name == "sgd":
            return {}
        if self.name == "adam":
            return {"m": zeros, "v": {n: torch.zeros_like(p) for n, p in params.items()}}
        return {"buf": zeros}

    def step(self, params, grads, state, t):
        new, out = {}, {k: {} for k in state}
        for n, p in params.items():
            g = grads[n] + self.weight_decay * p if self.weight_decay else grads[n]
            if self.name == "sgd":
                new[n] = p - self.lr * g
            elif self.name in ("momentum", "nesterov"):
                buf = g if t == 0 else self.momentum * state["buf"][n] + g
                out["buf"][n] = buf
                new[n] = p - self.lr * (g + self.momentum * buf if self.name == "nesterov" else buf)
            else:
                b1, b2 = self.betas
                m = b1 * state["m"][n] + (1 - b1) * g
                v = b2 * state["v"][n] + (1 - b2) * g * g
                out["m"][n], out["v"][n] = m, v
                m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
                new[n] = p - self.lr * m_hat / ((v_hat + 1e-30).sqrt() + self.eps)
        return new, out

    def torch_optimizer(self, parameters):
        """The equivalent ``torch.optim`` optimizer, for ordinary (non-meta) training."""
        if self.name == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, betas=self.betas, eps=self.eps,
                                    weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=0.0 if self.name == "sgd" else self.momentum,
                               nesterov=self.name == "nesterov", weight_decay=self.weight_decay)


# --------------------------------------------------------------------------- the unrolled inner loop
class InnerLoopDiverged(RuntimeError):
    """The inner training loss became non-finite; the meta-step is skipped."""


def _inner_chunk(model, loss_fn, optimizer, batches, val_batches, val_steps, start, stop, state):
    """Inner steps ``start..stop-1`` from ``state = (params, opt_state, buffers)``; pure in its tensor inputs.

    With grad mode off (only in the first pass of a reentrant checkpoint) it trains without building the
    differentiable graph; the backward pass then recomputes the chunk with ``create_graph=True``. Batch-norm
    running statistics are part of the differentiable state (:func:`_running_statistics`).
    """
    params, opt_state, buffers = state
    graph = torch.is_grad_enabled()
    train_losses, val_losses = [], []
    for t in range(start, stop):
        if not graph:
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
        model.train()
        x, y = batches[t]
        with torch.enable_grad():
            scratch = {k: v.detach().clone() for k, v in buffers.items()}  # batch_norm updates these in place
            inputs = {}
            with _batchnorm_inputs(model, inputs):
                loss = loss_fn(functional_call(model, (params, scratch), (x,)), y)
            buffers = _running_statistics(model, buffers, scratch, inputs)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=graph)
        params, opt_state = optimizer.step(params, dict(zip(params, grads)), opt_state, t)
        train_losses.append(loss if graph else loss.detach())
        if t + 1 in val_steps:
            model.eval()
            xv, yv = val_batches[val_steps.index(t + 1)]
            with _eval_batchnorm(model, buffers):
                detached = {k: v.detach() for k, v in buffers.items()}
                val_losses.append(loss_fn(functional_call(model, (params, detached), (xv,)), yv))
            model.train()
    empty = train_losses[0].new_zeros(0)
    return ((params, opt_state, buffers), torch.stack(train_losses),
            (torch.stack(val_losses) if val_losses else empty))


@contextmanager
def _batchnorm_inputs(model, inputs):
    """Record ``{batch-norm module name: its input}`` during a forward pass of ``model``."""
    def hook(name):
        return lambda module, args: inputs.__setitem__(name, args[0])
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        yield inputs
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _eval_batchnorm(model, buffers):
    """Eval-mode batch norm that differentiates through the running statistics in ``buffers``.

    PyTorch's kernel refuses running statistics that require grad, so each batch-norm output is replaced by
    ``(x - mean) / sqrt(var + eps) * weight + bias`` computed from ``buffers``.
    """
    def hook(name):
        prefix = f"{name}." if name else ""

        def normalize(module, args, output):
            x = args[0]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = (x - buffers[prefix + "running_mean"].view(shape)) / \
                (buffers[prefix + "running_var"].view(shape) + module.eps).sqrt()
            return y * module.weight.view(shape) + module.bias.view(shape) if module.affine else y
        return normalize
    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _running_statistics(model, buffers, scratch, inputs):
    """New buffers after one training forward pass, batch-norm running statistics differentiable.

    ``F.batch_norm`` updates its running statistics in place and outside autograd. The meta-loss is evaluated
    in eval mode, with those statistics, so they must carry the gradient (the public code's context batch
    norm): with momentum ``m``, batch mean ``b`` and unbiased batch variance ``v`` of the layer's input ``x``
    (over every dimension but the channels, dimension 1),
    ``mean_{t+1} = (1 - m) mean_t + m b``, ``var_{t+1} = (1 - m) var_t + m v``. ``momentum=None`` (a
    cumulative average) uses ``m = 1 / num_batches_tracked``. Other buffers are taken from ``scratch``.
    """
    new = dict(scratch)
    for name, m in model.named_modules():
        if name not in inputs:
            continue
        x = inputs[name]
        dims = [d for d in range(x.ndim) if d != 1]
        key = f"{name}.running_mean" if name else "running_mean"
        prefix = key[:-len("running_mean")]
        rate = m.momentum if m.momentum is not None else 1.0 / float(scratch[prefix + "num_batches_tracked"])
        new[key] = (1 - rate) * buffers[key] + rate * x.mean(dims)
        new[prefix + "running_var"] = (1 - rate) * buffers[prefix + "running_var"] + rate * x.var(dims)
    return new


def _flat_chunk(keys, *args_and_tensors):
    """:func:`_inner_chunk` on a flat tuple of tensors (what a reentrant checkpoint can see and
    differentiate)."""
    state, tl, vl = _inner_chunk(*args_and_tensors[:8], _unflatten(keys, args_and_tensors[8:]))
    return (tl, vl, *_flatten(state)[1])


def _flatten(state):
    params, opt_state, buffers = state
    keys = [("p", n) for n in params] + [("o", k, n) for k in opt_state for n in opt_state[k]] + \
        [("b", n) for n in buffers]
    tensors = list(params.values()) + [t for k in opt_state for t in opt_state[k].values()] + \
        list(buffers.values())
    return keys, tensors


def check_unroll(n_steps, val_steps, checkpoint_every):
    """Validate the inner-loop schedule: validation steps in ``1..K`` and ``1 <= C <= K``."""
    n_steps = check_positive_int("inner_steps", n_steps)
    val_steps = sorted(set(int(s) for s in val_steps))
    if not val_steps or val_steps[0] < 1 or val_steps[-1] > n_steps:
        raise ValueError(f"val_steps must be non-empty and within 1..{n_steps} (inner_steps), "
                         f"got {val_steps}")
    if checkpoint_every is not None:
        check_positive_int("checkpoint_every", checkpoint_every)
        if checkpoint_every > n_steps:
            raise ValueError(f"checkpoint_every ({checkpoint_every}) is larger than the inner loop "
                             f"(inner_steps={n_steps}); use a value in 1..{n_steps} or None")
    return n_steps, val_steps


def unroll(model, params, batches, val_batches, val_steps, loss_fn, optimizer, checkpoint_every=None,
           checkpoint_mode="reentrant"):
    """Train ``params`` for ``len(batches)`` differentiable steps; return
    ``(meta_loss, train_losses, params)``.

    ``meta_loss`` is the mean of the validation losses at ``val_steps`` (step ``t`` = after ``t`` updates),
    differentiable in whatever ``params`` depend on. Batch-norm statistics start from the model's buffers
    (reset them before calling). Raises :class:`InnerLoopDiverged` when a training loss is not finite.

    ``checkpoint_every=C`` wraps every ``C`` inner steps in ``torch.utils.checkpoint``; both modes give the
    meta-gradient of the unchecked loop (tests/test_dimaml.py). ``checkpoint_mode``:

    * ``'reentrant'`` (default): ``use_reentrant=True``. The forward pass trains without the differentiable
      graph (first-order gradients only) and keeps only the states at chunk boundaries; the backward pass
      recomputes each chunk once with ``create_graph=True`` and back-propagates through it (the published
      code's scheme). Cost: one extra forward of the inner loop; memory: ``K / C`` states plus one chunk's
      graph.
      Back-propagate the meta-loss with ``meta_loss.backward()``: PyTorch's reentrant checkpoint does not
      support ``torch.autograd.grad`` (or ``backward(inputs=...)``) through it.
    * ``'nonreentrant'``: ``use_reentrant=False``. Each inner ``autograd.grad`` inside a chunk unpacks tensors
      the checkpoint dropped, so the chunk is recomputed up to that step: the forward pass costs
      ``K (C + 3) / 2`` loss evaluations instead of ``K``, and with PyTorch 2.x the recomputed tensors of
      those inner calls stay alive with the chunk, so this mode uses *more* memory than no checkpointing
      (Chapter 11 measures both).

    The chunk boundaries are where the divergence check runs: a non-finite training or validation loss raises
    :class:`InnerLoopDiverged` naming the first bad step.
    """
    check_choice("checkpoint_mode", checkpoint_mode, ("nonreentrant", "reentrant"))
    n_steps, val_steps = check_unroll(len(batches), val_steps, checkpoint_every)
    if len(val_batches) != len(val_steps):
        raise ValueError(f"need one validation batch per validation step: {len(val_batches)} vs "
                         f"{len(val_steps)}")
    state = (params, optimizer.init(params), {n: b.detach().clone() for n, b in model.named_buffers()})
    chunk = checkpoint_every or n_steps
    train_losses, val_losses = [], []
    for start in range(0, n_steps, chunk):
        args = (model, loss_fn, optimizer, batches, val_batches, val_steps, start,
                min(start + chunk, n_steps))
        if not checkpoint_every:
            state, tl, vl = _inner_chunk(*args, state)
        elif checkpoint_mode == "nonreentrant":
            state, tl, vl = checkpoint(_inner_chunk, *args, state, use_reentrant=False)
        else:
            keys, tensors = _flatten(state)
            tl, vl, *tensors = checkpoint(_flat_chunk, keys, *args, *tensors, use_reentrant=True)
            state = _unflatten(keys, tensors)
        train_losses.append(tl)
        val_losses.append(vl)
        finite = torch.isfinite(tl)
        if not bool(finite.all()) or not bool(torch.isfinite(vl).all()):
            bad = (start + int((~finite).nonzero()[0]) if not bool(finite.all())
                   else min(start + chunk, n_steps))
            raise InnerLoopDiverged(f"inner loss became non-finite at step {bad} of {n_steps}")
    return torch.cat(val_losses).mean(), torch.cat(train_losses).detach(), state[0]


def _unflatten(keys, tensors):
    params, opt_state, buffers = {}, {}, {}
    for key, tensor in zip(keys, tensors):
        if key[0] == "p":
            params[key[1]] = tensor
        elif key[0] == "o":
            opt_state.setdefault(key[1], {})[key[2]] = tensor
        else:
            buffers[key[1]] = tensor
    return params, opt_state, buffers


def reset_batchnorm_(model):
    """Reset every batch-norm layer's running statistics (done at the start of every inner run)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return model
