"""The model, inits and training loop of the CIFAR-10 experiment: §5.3, Appendices A.2, B.3 (Chapter 10).

Model. The mainnet is All-CNN-C (Springenberg et al. 2014;
:func:`hyperinit_lite.all_conv_net.all_conv_net_shapes`): nine convolutions with ReLUs, no pooling, no residuals, a
global average over space at the end (the class-score layer is linear). Its kernels come from a
:class:`hyperinit_lite.chunked.ChunkedHypernet` (Ha et al. 2016): chunks of ``K`` output x ``K`` input
channels x the ``f x f`` taps, one fixed embedding per chunk drawn from ``U(-sqrt 3, sqrt 3)``, a separate
input layer per chunk (Eq. 6 of the paper) and one output layer per kernel size, shared by all layers of that
size. Choices the paper leaves open, made here (Chapter 10 lists them): the two 1x1 layers get their own
output layer; channel counts that ``K`` does not divide (3 RGB inputs, 10 class scores) are generated block by
block and sliced; no dropout; the mainnet's biases are not generated but are ordinary parameters starting at
zero.

Inits. ``kaiming_fan_in`` / ``kaiming_fan_out``: Kaiming init of every hypernet layer as if it were an
ordinary layer (method M1, the paper's baselines); ``hyperfan_in`` / ``hyperfan_out``: Appendix A.2, fan-in
init for the shared output layer and hyperfan for the per-chunk input layers, receptive field included.

Seeds. The seeds of an arm train together, their parameters stacked (``torch.func.functional_call``), with
``torch.func.vmap`` over the seeds (``vectorize=True``, the default on CUDA) or a loop over them (the default
on CPU, where vmap's grouped convolutions are slower). Seed ``s`` draws the embeddings and the hypernet's
parameters from generators seeded ``2s`` and ``2s + 1`` (all inits of a seed share these draws, only their
scale differs) and shuffles epoch ``e`` with seed ``1000003 s + e``.

Training (Appendix B.3). SGD on the mean cross-entropy, lr multiplied by ``gamma`` at each of ``milestones``;
the test loss is the *summed* cross-entropy over the test set. A seed whose training loss becomes NaN or
infinite is recorded as diverged (epoch and step) and dropped from its arm; the others carry on. Full
precision by default; ``mixed_precision=True`` (bfloat16 autocast) is opt-in. With a
:class:`hyperinit_lite.results.Checkpoint`, the state is saved after every epoch of every arm, and a resumed
run gives the same numbers as an uninterrupted one. The runner is :mod:`hyperinit_lite.experiments.cifar`.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .. import init_methods
from ..all_conv_net import all_conv_net_forward
from ..chunked import ChunkedHypernet
from ..validate import check_choice, check_seed

INITS = ("kaiming_fan_in", "kaiming_fan_out", "hyperfan_in", "hyperfan_out")
INIT_LABELS = {init: init_methods.label(init) for init in INITS}
# The target each init aims at, for hyperinit_lite.chunked.chunked_kernel_statistics(..., target_mode=...).
TARGET_MODES = {init: init_methods.get_method(init).target_mode for init in INITS}


# ---------------------------------------------------------------------------------------------------- models
class HyperAllConvNet(nn.Module):
    """All-CNN-C whose kernels ``hypernet`` generates at every forward pass; its biases are its own
    parameters (starting at zero)."""

    def __init__(self, hypernet):
        super().__init__()
        self.hypernet = hypernet
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(s[0])) for s in hypernet.shapes)

    def forward(self, x):
        """Class scores of images ``x``: generate the kernels, then run the mainnet."""
        return all_conv_net_forward(x, self.hypernet(), self.biases,
                                    last_activation=self.hypernet.nonlinearities[-1])


def init_hypernet_(hypernet, init, generator=None):
    """Apply ``init`` (one of ``INITS``) to a :class:`~hyperinit_lite.chunked.ChunkedHypernet` in place,
    through the shared registry :mod:`hyperinit_lite.init_methods` (the formulas of Chapter 7)."""
    return init_methods.init_(hypernet, check_choice("init", init, INITS), generator)


def build_model(config, init, seed=None):
    """The initialized :class:`HyperAllConvNet` of ``init`` and ``seed`` (default: the first of
    ``config.seeds``); all inits of a seed share the embeddings and the draws."""
    seed = config.seeds[0] if seed is None else check_seed("seed", seed)
    hypernet = ChunkedHypernet(config.shapes, config.chunk_size, config.hidden_size, config.embedding_dim,
                               input_layers=config.input_layers,
                               generator=torch.Generator().manual_seed(2 * seed))
    init_hypernet_(hypernet, init, torch.Generator().manual_seed(2 * seed + 1))
    return HyperAllConvNet(hypernet)


# ------------------------------------------------------------------------------------------- stacked seeds
def _member(params, i):
    return {k: v[i] for k, v in params.items()}


class StackedSeeds:
    """The models of one arm, one per seed, as stacked parameters: ``trainable[name]`` and ``fixed[name]``
    (the embeddings) have a leading seed axis; ``seeds`` lists the seeds still training (not diverged).

    ``vectorize=True``: ``torch.func.vmap`` over the seeds (one grouped call, fast on a GPU); ``False``: a
    loop over them (faster on a CPU). Both give the same numbers up to rounding.
    """

    def __init__(self, models, seeds, device, vectorize, mixed_precision=False):
        self.template = models[0].to(device)
        named = [dict(m.named_parameters()) for m in models]
        stack = lambda k: torch.stack([n[k].detach() for n in named]).to(device)  # noqa: E731
        self.trainable = {k: stack(k) for k, p in named[0].items() if p.requires_grad}
        self.fixed = {k: stack(k) for k, p in named[0].items() if not p.requires_grad}
        self.seeds, self.amp = list(seeds), mixed_precision
        self.vectorize = vectorize
        self._grad = vmap(grad_and_value(self._loss)) if vectorize else self._loop_grad

    def _forward(self, trainable, fixed, x):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.amp):
            return functional_call(self.template, {**trainable, **fixed}, (x,)).float()

    def _loss(self, trainable, fixed, x, y):
        return F.cross_entropy(self._forward(trainable, fixed, x), y)

    def _loop_grad(self, trainable, fixed, x, y):
        """``(gradients, losses)`` of every seed, one after another with ``torch.autograd.grad``."""
        grads, losses = [], []
        for i in range(len(x)):
            params = {k: v[i].detach().requires_grad_() for k, v in trainable.items()}
            loss = self._loss(params, _member(fixed, i), x[i], y[i])
            grads.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
            losses.append(loss.detach())
        return {k: torch.stack([g[k] for g in grads]) for k in grads[0]}, torch.stack(losses)

    def _logits(self, x):
        """Outputs ``(R, N, classes)`` of every seed's model on the shared images ``x``."""
        if self.vectorize:
            return vmap(self._forward, in_dims=(0, 0, None))(self.trainable, self.fixed, x)
        return torch.stack([self._forward(_member(self.trainable, i), _member(self.fixed, i), x)
                            for i in range(len(self.seeds))])

    def state(self):
        """What a checkpoint stores: the stacked tensors and the seeds still training."""
        return {"trainable": self.trainable, "fixed": self.fixed, "seeds": list(self.seeds)}

    def load_state(self, state):
        """Restore :meth:`state` (tensors moved to this arm's device)."""
        device = next(iter(self.fixed.values())).device
        self.trainable = {k: v.to(device) for k, v in state["trainable"].items()}
        self.fixed = {k: v.to(device) for k, v in state["fixed"].items()}
        self.seeds = list(state["seeds"])

    def step(self, x, y, lr):
        """One SGD step of every seed on its own batch ``x[r], y[r]``; returns the ``(R,)`` losses before
        it."""
        grads, losses = self._grad(self.trainable, self.fixed, x, y)
        with torch.no_grad():
            for k, g in grads.items():
                self.trainable[k].sub_(lr * g)
        return losses.detach()

    @torch.no_grad()
    def evaluate(self, x, y, batch_size=500):
        """Per seed ``(summed cross-entropy, accuracy)`` on the shared ``(x, y)``: two ``(R,)`` tensors."""
        total = correct = 0
        for i in range(0, len(x), batch_size):
            logits = self._logits(x[i:i + batch_size])
            target = y[i:i + batch_size].expand(logits.shape[0], -1)
            total = total + F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
            correct = correct + (logits.argmax(2) == target).sum(1)
        return total.double().cpu(), correct.double().cpu() / len(x)

    def keep(self, mask):
        """Drop the seeds where ``mask`` is false (diverged)."""
        idx = torch.nonzero(mask).flatten().to(next(iter(self.fixed.values())).device)
        self.trainable = {k: v[idx] for k, v in self.trainable.items()}
        self.fixed = {k: v[idx] for k, v in self.fixed.items()}
        self.seeds = [s for s, m in zip(self.seeds, mask.tolist()) if m]


# -------------------------------------------------------------------------------------------------- training
def epoch_order(n, seed, epoch):
    """The shuffled order of the ``n`` training images in ``epoch`` (seeded by ``(seed, epoch)``)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(1_000_003 * seed + epoch))


def epoch_lr(config, lr, epoch):
    """The learning rate of ``epoch`` (1-based): ``lr * gamma^(number of milestones before epoch)``."""
    return lr * config.gamma ** sum(m < epoch for m in config.milestones)


def new_history(config, steps_per_epoch, n_test):
    """The empty record of one seed: per epoch ``0..epochs`` (NaN until measured) ``train_loss``,
    ``test_loss``, ``test_accuracy`` and ``lr``; the logged ``step`` / ``step_loss``; ``diverged_epoch`` and
    ``diverged_step`` (``None`` while training); ``steps_per_epoch`` and ``n_test``."""
    nan = [math.nan] * (config.epochs + 1)
    return {"epoch": list(range(config.epochs + 1)), "train_loss": list(nan), "test_loss": list(nan),
            "test_accuracy": list(nan), "lr": list(nan), "step": [], "step_loss": [], "diverged_epoch": None,
            "diverged_step": None, "steps_per_epoch": steps_per_epoch, "n_test": n_test}


def diverge_(arm, histories, losses, epoch, step):
    """Record the seeds whose ``losses`` are not finite as diverged at ``(epoch, step)`` and drop them."""
    finite = torch.isfinite(losses).cpu()
    for seed, ok in zip(arm.seeds, finite.tolist()):
        if not ok:
            histories[seed]["diverged_epoch"], histories[seed]["diverged_step"] = epoch, step
    if not bool(finite.all()):
        arm.keep(finite)


def _record_test_(arm, histories, images, epoch):
    losses, accs = arm.evaluate(images.x_test, images.y_test)
    for seed, loss, acc in zip(arm.seeds, losses.tolist(), accs.tolist()):
        histories[seed]["test_loss"][epoch], histories[seed]["test_accuracy"][epoch] = loss, acc
    return losses


def _train_epoch_(config, arm, histories, images, lr, epoch, bar):
    """One epoch of SGD for every seed still training; records losses, divergence and the test numbers."""
    n, bs = len(images.x_train), config.batch_size
    steps = math.ceil(n / bs)
    orders = {s: epoch_order(n, s, epoch).to(images.x_train.device) for s in arm.seeds}
    sums = {s: [0.0, 0.0, 0] for s in arm.seeds}  # epoch sum, block sum, block count
    for b in range(steps):
        if not arm.seeds:
            break
        idx = torch.stack([orders[s][b * bs:(b + 1) * bs] for s in arm.seeds])
        losses = arm.step(images.x_train[idx], images.y_train[idx], lr)
        step = (epoch - 1) * steps + b + 1
        for seed, value in zip(arm.seeds, losses.tolist()):
            if math.isfinite(value):
                sums[seed] = [sums[seed][0] + value, sums[seed][1] + value, sums[seed][2] + 1]
            if step % config.log_every == 0 and math.isfinite(value):
                histories[seed]["step"].append(step)
                histories[seed]["step_loss"].append(sums[seed][1] / sums[seed][2])
                sums[seed][1:] = [0.0, 0]
        diverge_(arm, histories, losses, epoch, step)
        if bar is not None:
            bar.update(1)
    for seed in arm.seeds:
        histories[seed]["train_loss"][epoch], histories[seed]["lr"][epoch] = sums[seed][0] / steps, lr
    if arm.seeds:  # parameters that became non-finite in the epoch's last step show in the test loss
        diverge_(arm, histories, _record_test_(arm, histories, images, epoch), epoch, epoch * steps)


def _start_arm(config, init, images, device, vectorize):
    models = [build_model(config, init, s) for s in config.seeds]
    arm = StackedSeeds(models, config.seeds, device, vectorize, config.mixed_precision)
    steps = math.ceil(len(images.x_train) / config.batch_size)
    histories = {s: new_history(config, steps, len(images.x_test)) for s in config.seeds}
    losses, _ = arm.evaluate(images.x_train, images.y_train)
    for seed, loss in zip(arm.seeds, losses.tolist()):
        histories[seed]["train_loss"][0] = loss / len(images.x_train)
    diverge_(arm, histories, _record_test_(arm, histories, images, 0), 0, 0)
    return arm, histories


def train_arm(config, arm_spec, images, device, vectorize, progress, checkpoint, state):
    """Train one arm ``(key, init, lr)`` over all its seeds (from ``state['current']`` when resuming), saving
    ``state`` to ``checkpoint`` after every epoch if one is given; ``{seed: history}``."""
    key, init, lr = arm_spec
    arm, histories = _start_arm(config, init, images, device, vectorize)
    start = 0
    if state.get("current") is not None:
        arm.load_state(state["current"]["arm"])
        histories, start = state["current"]["histories"], state["current"]["epoch"]
    bar = None
    if progress and start < config.epochs and arm.seeds:
        from tqdm.auto import tqdm
        steps = math.ceil(len(images.x_train) / config.batch_size)
        bar = tqdm(total=(config.epochs - start) * steps, desc=f"{key} x {len(config.seeds)} seeds",
                   mininterval=1.0, leave=False)
    for epoch in range(start + 1, config.epochs + 1):
        if not arm.seeds:
            break
        _train_epoch_(config, arm, histories, images, epoch_lr(config, lr, epoch), epoch, bar)
        if checkpoint is not None:
            state["current"] = {"arm": arm.state(), "histories": histories, "epoch": epoch}
            checkpoint.save(state, label=f"{key} epoch {epoch}")
    if bar is not None:
        bar.close()
    for h in histories.values():
        h["epochs_done"] = config.epochs
    return histories

