"""DIMAML on a convolutional autoencoder (Chapter 12; the paper's section 3.1, Table 1 and Appendix C).

DIMAML-Normal and DIMAML-PLIF are meta-trained on one image set (``meta_data``); then a fresh
:class:`~hyperinit_lite.dimaml_tasks.ConvAutoencoder` is trained on each set in ``eval_data`` from every
init in ``inits`` (Kaiming, orthogonal, MetaInit, the learned ones) and its test MSE recorded after every
budget in ``epochs`` (``reruns`` seeds). The table also has the MSE of predicting the training set's mean
image, the bar a trained autoencoder should beat. Appendix C rides along: per-layer update rates
``|grad W| / |W|`` of every step, and Kaiming trained with DIMAML-Normal's rates transferred.

Every init uses the true fans (transposed convolutions are ``(in, out, k, k)``) and a ReLU gain only on
layers followed by a ReLU (the bottleneck ``encoder.7`` and the output ``decoder.7`` are linear).

Command line: ``python -m hyperinit_lite autoencoder --preset quick|paper [--set FIELD=VALUE] [--resume]``.
"""
import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import dimaml_tasks as tasks
from ..dimaml import LearnedInitializer, classical_stds
from ..meta_unroll import InnerOptimizer
from ..metainit import metainit_
from ..validate import check_choice
from . import resolve_device, seeded_generator, skeleton
from .meta_training import INIT_LABELS, build, format_table, learn, summary_rows, train_steps

INITS = ("kaiming", "orthogonal", "metainit", "dimaml-normal", "dimaml-plif")
LINEAR_LAYERS = ("encoder.7.weight", "decoder.7.weight")  # no ReLU after them


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything that determines an autoencoder experiment (stored beside its results)."""
    size: int = 16
    channels: int = 8
    latent: int = 16
    meta_data: str = "mnist"
    eval_data: Tuple[str, ...] = ("digits", "digits-shuffled")
    optimizer: str = "momentum"
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    inner_steps: int = 20
    val_steps: Tuple[int, ...] = (10, 15, 20)
    val_batch_size: int = 64
    meta_steps: int = 40
    plif_meta_steps: int = 40
    meta_lr: float = 0.1  # in units of s0; both chosen by the meta-loss trend over 40 meta-steps among
    plif_meta_lr: float = 0.03  # 0.01, 0.03, 0.1 (Normal) and 0.003, 0.01, 0.03 (PLIF)
    n_pieces: int = 20
    learn_biases: bool = True
    checkpoint_every: int = 0
    save_every: int = 10
    metainit_steps: int = 20
    epochs: Tuple[int, ...] = (1, 3, 10)
    reruns: int = 3
    inits: Tuple[str, ...] = INITS
    transfer_rates: bool = True
    seed: int = 0

    def __post_init__(self):
        for init in self.inits:
            check_choice("inits entry", init, INITS)


PRESETS = {
    # ~1 min on a 2-core CPU: 16x16 images, 20 inner steps, 40 meta-steps, 3 reruns
    "quick": AutoencoderConfig(),
    # B.1's inner loop (600 momentum-SGD steps, lr 0.01, batch 128, validation at 200:50:600, checkpoint every
    # 15) on 28x28 offline images; meta lr in units of s0 (the published 1e-4 acts on the raw parameters)
    "paper": AutoencoderConfig(size=28, channels=32, latent=64, lr=0.01, batch_size=128, inner_steps=600,
                               val_steps=tuple(range(200, 601, 50)), val_batch_size=128, meta_steps=1500,
                               plif_meta_steps=3000, meta_lr=1e-3, plif_meta_lr=1e-3, n_pieces=100,
                               checkpoint_every=15, save_every=50, metainit_steps=200, epochs=(10, 50, 100),
                               reruns=10),
}


def autoencoder_model(config):
    return tasks.ConvAutoencoder(config.size, config.channels, config.latent)


def base_stds(model):
    """Kaiming ``sqrt(2 / fan_in)`` before a ReLU, ``sqrt(1 / fan_in)`` for the two linear layers."""
    return classical_stds(model, linear=LINEAR_LAYERS)


def orthogonal_(model, generator):
    """``torch.nn.init.orthogonal_`` on every weight, gain ``sqrt(2)`` before a ReLU and 1 otherwise."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                torch.nn.init.orthogonal_(p, 1.0 if name in LINEAR_LAYERS else math.sqrt(2.0), generator)
    return model


def initialize(model, init, learned, config, r, metainit_batch):
    """Initialize ``model`` in place with ``init``; every baseline starts from the untrained Normal init."""
    gen = seeded_generator(1, r)
    if init.startswith("dimaml-"):
        return learned[init].init_(model, gen)
    LearnedInitializer(model, "normal", base=base_stds(model), biases=config.learn_biases).init_(model, gen)
    if init == "orthogonal":
        orthogonal_(model, gen)
    elif init == "metainit":
        metainit_(model, F.mse_loss, metainit_batch, config.metainit_steps, 0.1, 0.9, 1e-5, r)
    return model


def mean_image_mse(train, test):
    """Test MSE of predicting the training set's mean image for every test image (no training)."""
    return float(F.mse_loss(train.mean(0, keepdim=True).expand_as(test), test))


def evaluate_init(config, init, learned, train, test, device, target=None):
    """``reruns`` trainings of a fresh autoencoder from ``init``: test MSE after each budget, update rates."""
    inner = InnerOptimizer(config.optimizer, lr=config.lr, momentum=config.momentum)
    steps_per_epoch = len(train) // config.batch_size
    eval_at = [e * steps_per_epoch for e in config.epochs]

    def metainit_batch(gen):
        x = torch.randn(32, 1, config.size, config.size, generator=gen).to(device)
        return x, x

    runs = []
    for r in range(config.reruns):
        net = build(autoencoder_model, config, config.seed * 1000 + r, device)
        names = [n for n, p in net.named_parameters() if p.ndim >= 2]
        initialize(net, "kaiming" if target else init, learned, config, r, metainit_batch)
        gen = seeded_generator(2, r)
        batches = [(x, x) for _ in range(config.epochs[-1])
                   for x in tasks.epoch_batches(train, config.batch_size, gen)]
        runs.append(train_steps(net, names, batches, F.mse_loss, inner, lambda m: F.mse_loss(m(test), test),
                                eval_at, target_rates=target))
    return runs


def run(config, device="auto", progress=True, checkpoint=None):
    """Meta-train, evaluate every init on every ``eval_data`` set, and collect the Appendix C analysis."""
    device = resolve_device(device)
    state = (checkpoint.load() if checkpoint is not None else None) or {"evaluation": {}}
    inner = InnerOptimizer(config.optimizer, lr=config.lr, momentum=config.momentum)
    meta_train_set, meta_val_set = tasks.image_data(config.meta_data, config.size, device)
    model = build(autoencoder_model, config, config.seed, device)

    def sample(gen):
        batches = [tasks.random_batch(meta_train_set, config.batch_size, gen)
                   for _ in range(config.inner_steps)]
        val = [tasks.random_batch(meta_val_set, config.val_batch_size, gen) for _ in config.val_steps]
        return [(x, x) for x in batches], [(x, x) for x in val]

    learned, histories = {}, {}
    for kind, steps, lr in (("normal", config.meta_steps, config.meta_lr),
                            ("plif", config.plif_meta_steps, config.plif_meta_lr)):
        if f"dimaml-{kind}" in config.inits and steps:
            learned[f"dimaml-{kind}"], histories[kind] = learn(
                config, kind, model, sample, F.mse_loss, inner, steps, lr, base_stds(model), progress,
                checkpoint, state)
    for data in config.eval_data:
        train, test = tasks.image_data(data, config.size, device)
        entry = state["evaluation"].setdefault(data, {"steps_per_epoch": len(train) // config.batch_size,
                                                      "runs": {}})
        entry["runs"]["mean-image"] = [{"evals": [mean_image_mse(train, test)] * len(config.epochs)}]
        for init in config.inits:
            if init not in entry["runs"]:
                entry["runs"][init] = evaluate_init(config, init, learned, train, test, device)
                _save(checkpoint, state, f"{data} {init}")
        if config.transfer_rates and "dimaml-normal" in entry["runs"] and "dimaml-rates" not in entry["runs"]:
            target = {n: np.mean([r["rates"][n] for r in entry["runs"]["dimaml-normal"]], axis=0).tolist()
                      for n in entry["runs"]["dimaml-normal"][0]["rates"]}
            entry["runs"]["dimaml-rates"] = evaluate_init(config, "kaiming", learned, train, test, device,
                                                          target)
            _save(checkpoint, state, f"{data} transferred rates")
    return {"meta": histories, "initializers": {k: v.to_dict() for k, v in learned.items()},
            "budgets": [f"{e} ep" for e in config.epochs], "evaluation": state["evaluation"]}


def _save(checkpoint, state, label):
    if checkpoint is not None:
        checkpoint.save(state, label=label)


def summary(results):
    """The Table-1 analogue: test MSE (mean ± std over reruns) after every budget, as a Markdown table."""
    return format_table(summary_rows(results), results["budgets"], "MSE")


EXPERIMENT = skeleton.Experiment("autoencoder", AutoencoderConfig, PRESETS, run, summary)
