"""Meta-training DIMAML's learned initializers, and measuring what a meta-step costs (Chapter 11).

One meta-step (:func:`meta_step`): sample ``theta_0 = Q_psi(u)``; unroll ``K`` inner steps and take the
meta-loss ``L_meta = (1/|S|) sum_{t in S} L_val(theta_t)`` (:func:`~hyperinit_lite.meta_unroll.unroll`);
back-propagate to ``psi``; update ``psi`` with Adam (betas 0.9, 0.997), the meta-gradient clipped in norm; a
diverged inner run or a non-finite meta-gradient skips the update and is counted. :func:`meta_train` repeats
it over tasks drawn by a sampler (:func:`tensor_task_sampler`), resumably. Also here: the memory and time of
one meta-gradient (:class:`LiveTensorBytes`, :func:`meta_step_cost`), plain training curves
(:func:`train_curve`) and the closed-form meta-gradient of linear regression
(:func:`linear_regression_meta_gradient`).
"""
import copy
import gc
import math
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .meta_unroll import InnerLoopDiverged, reset_batchnorm_, unroll
from .validate import check_positive, check_positive_int


# --------------------------------------------------------------------------- meta-training
def meta_step(initializer, model, meta_optimizer, batches, val_batches, val_steps, loss_fn, optimizer,
              checkpoint_every=None, clip=10.0, generator=None, checkpoint_mode="reentrant"):
    """One DIMAML update. Returns a dict with ``meta_loss``, ``grad_norm`` and ``skipped`` (None or a
    reason)."""
    reset_batchnorm_(model)
    meta_optimizer.zero_grad(set_to_none=True)
    params = initializer.sample(model, generator)
    try:
        meta_loss, train_losses, _ = unroll(model, params, batches, val_batches, val_steps, loss_fn,
                                            optimizer, checkpoint_every, checkpoint_mode)
    except InnerLoopDiverged as err:
        return {"meta_loss": float("nan"), "grad_norm": float("nan"), "skipped": f"diverged: {err}"}
    meta_loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(initializer.parameters(), clip))
    if not math.isfinite(norm):
        meta_optimizer.zero_grad(set_to_none=True)
        return {"meta_loss": float(meta_loss.detach()), "grad_norm": norm,
                "skipped": "non-finite meta-gradient"}
    meta_optimizer.step()
    return {"meta_loss": float(meta_loss.detach()), "grad_norm": norm, "skipped": None,
            "final_train_loss": float(train_losses[-1])}


def meta_optimizer_for(initializer, lr=1e-4, betas=(0.9, 0.997)):
    """Adam with the published betas ``(0.9, 0.997)``."""
    return torch.optim.Adam(initializer.parameters(), lr=check_positive("meta_lr", lr), betas=betas)


def meta_train(initializer, model, sample_batches, loss_fn, optimizer, meta_steps, val_steps, meta_lr=1e-4,
               checkpoint_every=None, clip=10.0, seed=0, progress=False, desc="DIMAML",
               checkpoint_mode="reentrant", resume=None, save=None, save_every=None):
    """Run ``meta_steps`` DIMAML updates; ``sample_batches(generator) -> (batches, val_batches)`` draws each
    task.

    Returns ``{"meta_loss", "grad_norm", "skipped", "skip_reasons", "std", "mean"}``: per-step lists, the
    number of skipped steps (their ``meta_loss`` is ``nan``) with reasons, and each learned tensor's standard
    deviation and mean after every step (``{name: [...]}``, entry 0 = the start).

    Resuming: with ``save`` and ``save_every=B``, ``save(state)`` is called after every ``B`` meta-steps with
    ``state`` = the step reached, the initializer's and the meta-optimizer's state, the generator's state and
    the history so far; ``resume=state`` continues from it and gives the same result as an uninterrupted run.
    """
    from tqdm.auto import tqdm

    meta_steps = check_positive_int("meta_steps", meta_steps)
    gen = torch.Generator().manual_seed(seed)
    meta_opt = meta_optimizer_for(initializer, meta_lr)
    history = {"meta_loss": [], "grad_norm": [], "skipped": 0, "skip_reasons": [],
               "std": {n: [v["std"]] for n, v in initializer.summary().items()},
               "mean": {n: [v["mean"]] for n, v in initializer.summary().items()}}
    start = 0
    if resume is not None:
        initializer.load_state_dict(resume["initializer"])
        meta_opt.load_state_dict(resume["meta_optimizer"])
        gen.set_state(resume["generator"])
        start, history = resume["step"], copy.deepcopy(resume["history"])
    steps = tqdm(range(start, meta_steps), desc=desc, disable=not progress, initial=start, total=meta_steps)
    for step in steps:
        batches, val_batches = sample_batches(gen)
        out = meta_step(initializer, model, meta_opt, batches, val_batches, val_steps, loss_fn, optimizer,
                        checkpoint_every, clip, gen, checkpoint_mode)
        history["meta_loss"].append(out["meta_loss"])
        history["grad_norm"].append(out["grad_norm"])
        if out["skipped"]:
            history["skipped"] += 1
            history["skip_reasons"].append(out["skipped"])
        for name, v in initializer.summary().items():
            history["std"][name].append(v["std"])
            history["mean"][name].append(v["mean"])
        if save is not None and save_every and (step + 1) % save_every == 0 and step + 1 < meta_steps:
            save(copy.deepcopy({"step": step + 1, "initializer": initializer.state_dict(),
                                "meta_optimizer": meta_opt.state_dict(), "generator": gen.get_state(),
                                "history": history}))
    return history


# ----------------------------------------------------------------------- measuring the cost of a meta-step
class LiveTensorBytes(TorchDispatchMode):
    """Count the bytes of tensor storages created inside the context and still alive; ``peak`` is their
    maximum.

    Deterministic (Chapter 11): every ATen call, forward and backward, is seen; a storage counts from the call
    that creates it until it is freed (a weak reference), views add nothing. Tensors created before the
    context (the model, the data) are not counted. Use it with the garbage collector off, so that freeing
    happens by reference counting only, at the same points on every run.
    """

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _free(self, key, nbytes):
        if self.live.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    n = storage.nbytes()
                    self.live[key] = weakref.ref(storage, lambda _, key=key, n=n: self._free(key, n))
                    self.current += n
                    self.peak = max(self.peak, self.current)
        return out


def meta_step_cost(initializer, model, batches, val_batches, val_steps, loss_fn, optimizer,
                   checkpoint_every=None, checkpoint_mode="reentrant", generator=None, track_memory=True):
    """Cost of one meta-gradient (sample, unroll, backward; no update), as measured in Chapter 11.

    Returns ``{"peak_bytes", "forward_evals", "backward_evals", "seconds", "meta_loss"}``: the peak of
    :class:`LiveTensorBytes` (``None`` when ``track_memory=False``), how often ``loss_fn`` ran during the
    unrolled forward pass and during the backward pass (recomputation), and the wall-clock time (the tracker
    slows the run down, so time with ``track_memory=False``).
    """
    calls = [0]

    def counted(*args):
        calls[0] += 1
        return loss_fn(*args)

    reset_batchnorm_(model)
    initializer.zero_grad(set_to_none=True)
    tracker = LiveTensorBytes() if track_memory else None
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        if tracker:
            tracker.__enter__()
        try:
            params = initializer.sample(model, generator)
            meta_loss, _, _ = unroll(model, params, batches, val_batches, val_steps, counted, optimizer,
                                     checkpoint_every, checkpoint_mode)
            forward = calls[0]
            meta_loss.backward()
            meta_loss = float(meta_loss.detach())
            del params
        finally:
            if tracker:
                tracker.__exit__(None, None, None)
        seconds = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    initializer.zero_grad(set_to_none=True)
    return {"peak_bytes": tracker.peak if tracker else None, "forward_evals": forward,
            "backward_evals": calls[0] - forward, "seconds": seconds, "meta_loss": meta_loss}


# --------------------------------------------------------------------------- tasks and plain training
def tensor_task_sampler(x, y, batch_size, inner_steps, n_val, val_x=None, val_y=None, val_batch_size=None):
    """``sample_batches(generator) -> (batches, val_batches)`` drawing random minibatches of ``(x, y)``.

    ``inner_steps`` training batches of ``batch_size`` and ``n_val`` validation batches (one per validation
    step) of ``val_batch_size`` (default ``batch_size``) from ``(val_x, val_y)`` (default: the training
    tensors). The input to :func:`meta_train` (Chapter 11).
    """
    batch_size = check_positive_int("batch_size", batch_size)
    inner_steps = check_positive_int("inner_steps", inner_steps)
    n_val = check_positive_int("n_val", n_val)
    val_x, val_y = (x, y) if val_x is None else (val_x, val_y)
    val_batch_size = check_positive_int("val_batch_size", val_batch_size or batch_size)

    def draw(generator, xs, ys, size):
        idx = torch.randint(len(xs), (size,), generator=generator)
        return xs[idx], ys[idx]

    def sample_batches(generator):
        return ([draw(generator, x, y, batch_size) for _ in range(inner_steps)],
                [draw(generator, val_x, val_y, val_batch_size) for _ in range(n_val)])
    return sample_batches


def train_curve(model, optimizer, batches, loss_fn, val_batch):
    """Train ``model`` in place with ``optimizer.torch_optimizer`` on ``batches``; return the validation
    losses.

    Entry ``t`` is the loss on ``val_batch`` (eval mode) after ``t`` updates, ``t = 0..len(batches)``: the
    curve whose average DIMAML minimises (Chapter 11). A non-finite loss ends the run; the rest of the curve
    is ``nan``.
    """
    opt = optimizer.torch_optimizer(model.parameters())

    def evaluate():
        model.eval()
        with torch.no_grad():
            value = float(loss_fn(model(val_batch[0]), val_batch[1]))
        model.train()
        return value

    curve = [evaluate()]
    for x, y in batches:
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            return curve + [float("nan")] * (len(batches) + 1 - len(curve))
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(evaluate())
    return curve


def linear_regression_meta_gradient(w0, w_star, a, lr, val_steps):
    """Closed-form DIMAML meta-loss and meta-gradient for full-batch SGD on ``L(W) = tr(E A E^T) / 2``.

    ``E = W - W*`` and ``A = X X^T / N`` (the loss ``|W x - y|^2 / 2`` averaged over data with ``y = W* x``).
    SGD gives ``E_t = E_0 P^t`` with ``P = I - lr A``, so (Chapter 11, Eq. eq-dimaml-method-linear)::

        M       = (1/|S|) sum_{s in S} tr(E_0 P^s A P^s E_0^T) / 2,
        dM/dW_0 = (1/|S|) sum_{s in S} E_0 P^s A P^s.

    Returns ``(M, dM/dW_0)`` as float64 tensors.
    """
    w0, w_star, a = (torch.as_tensor(v, dtype=torch.float64) for v in (w0, w_star, a))
    e0 = w0 - w_star
    p = torch.eye(a.shape[0], dtype=torch.float64) - check_positive("lr", lr) * a
    meta, grad = 0.0, torch.zeros_like(e0)
    for s in val_steps:
        ps = torch.linalg.matrix_power(p, int(s))
        g = e0 @ ps @ a @ ps
        meta = meta + 0.5 * (g * e0).sum()
        grad = grad + g
    return meta / len(val_steps), grad / len(val_steps)
