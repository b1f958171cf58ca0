"""DIMAML on a character-level LSTM language model (Chapter 12; the paper's section 3.3, Table 2).

Initializers are meta-trained on one corpus (``meta_corpus``, ``meta_seeds`` independent meta-trainings),
then fresh :class:`~hyperinit_lite.dimaml_tasks.CharLSTM` models are trained on every corpus in
``eval_corpora`` from the baseline and from each learned initializer, and their test bits per character
recorded after each of ``eval_steps`` Adam steps (``reruns`` seeds per initializer). With ``eval_steps``
around the meta-training horizon (``inner_steps``) and well beyond it, the table shows the short-horizon
effect of Chapter 11.

The baseline is the public code's: ``N(0, 1)`` embeddings, one ``N(0, 1/hidden)`` distribution per gate for
the LSTM weights (``1/sqrt(hidden)`` has no ReLU gain: the gates are sigmoid and tanh) and ``N(0, 1/hidden)``
for the linear logits; the learned initializers start from it and (``learn_biases``) also learn every bias.

Command line: ``python -m hyperinit_lite char-lstm --preset quick|paper [--set FIELD=VALUE] [--resume]``.
"""
import math
from dataclasses import dataclass
from typing import Tuple

import torch

from .. import dimaml_tasks as tasks
from ..dimaml import LearnedInitializer
from ..meta_unroll import InnerOptimizer
from ..metainit import metainit_
from ..validate import check_choice
from . import resolve_device, seeded_generator, skeleton
from .meta_training import build, format_table, learn, summary_rows, train_steps

INITS = ("baseline", "metainit", "dimaml-normal", "dimaml-plif")


@dataclass(frozen=True)
class LSTMConfig:
    """Everything that determines a character-LSTM experiment; budgets ``eval_steps`` count Adam steps."""
    embed: int = 16
    hidden: int = 32
    seq_len: int = 32
    meta_corpus: str = "docstrings"
    eval_corpora: Tuple[str, ...] = ("docstrings", "source")
    lr: float = 1e-2
    batch_size: int = 16
    inner_steps: int = 10
    val_steps: Tuple[int, ...] = (5, 10)
    meta_steps: int = 30
    plif_meta_steps: int = 0
    meta_lr: float = 0.03
    plif_meta_lr: float = 0.01
    n_pieces: int = 20
    learn_biases: bool = True
    meta_seeds: int = 3
    checkpoint_every: int = 0
    save_every: int = 10
    metainit_steps: int = 0
    eval_steps: Tuple[int, ...] = (10, 50, 200)
    reruns: int = 3
    inits: Tuple[str, ...] = ("baseline", "dimaml-normal")
    seed: int = 0

    def __post_init__(self):
        for init in self.inits:
            check_choice("inits entry", init, INITS)


PRESETS = {
    "quick": LSTMConfig(),
    # B.3: embedding 128, 2-layer LSTM 256, 200 Adam steps (lr 1e-3, batch 128), 3000 meta-steps; meta lr in
    # units of s0 (the published 3e-4 acts on raw parameters). Sequence length, validation steps and the
    # checkpoint interval are not published: ours are stated in Chapter 12.
    "paper": LSTMConfig(embed=128, hidden=256, seq_len=128, lr=1e-3, batch_size=128, inner_steps=200,
                        val_steps=tuple(range(50, 201, 50)), meta_steps=3000, plif_meta_steps=3000,
                        meta_lr=3e-3, plif_meta_lr=3e-3, n_pieces=100, meta_seeds=1, checkpoint_every=10,
                        save_every=50,
                        metainit_steps=200, eval_steps=(200, 1000, 5000, 10000), reruns=10, inits=INITS),
}


def lstm_model(config):
    return tasks.CharLSTM(len(tasks.VOCAB), config.embed, config.hidden)


def base_stds(model):
    """The baseline: ``N(0, 1)`` embedding, ``1/sqrt(hidden)`` for every gate of the LSTM and the logits."""
    stds = {n: 1.0 / math.sqrt(model.lstm.hidden_size) for n, p in model.named_parameters() if p.ndim >= 2}
    stds["embedding.weight"] = 1.0
    return stds


def bits_per_character(model, ids, seq_len):
    """Mean next-symbol cross-entropy over consecutive windows of ``ids``, in bits: ``CE / ln 2``."""
    n = (len(ids) - 1) // seq_len
    x = ids[:n * seq_len].view(n, seq_len)
    y = ids[1:n * seq_len + 1].view(n, seq_len)
    return tasks.lm_loss(model(x), y) / math.log(2.0)


def evaluate_init(config, initializers, train_ids, test_ids, device, metainit=False):
    """Test bpc after each of ``eval_steps`` of ``reruns`` trainings; rerun ``r`` starts from
    ``initializers[r % len(initializers)]`` (one per meta seed, or the one baseline)."""
    inner = InnerOptimizer("adam", lr=config.lr)

    def metainit_batch(gen):
        return tasks.text_batch(train_ids, config.batch_size, config.seq_len, gen)

    runs = []
    for r in range(config.reruns):
        net = build(lstm_model, config, config.seed * 1000 + r, device)
        initializers[r % len(initializers)].init_(net, seeded_generator(1, r))
        if metainit:
            metainit_(net, tasks.lm_loss, metainit_batch, config.metainit_steps, 0.1, 0.9, 1e-5, r)
        gen = seeded_generator(3, r)
        batches = [tasks.text_batch(train_ids, config.batch_size, config.seq_len, gen)
                   for _ in range(config.eval_steps[-1])]
        runs.append(train_steps(net, [], batches, tasks.lm_loss, inner,
                                lambda m: bits_per_character(m, test_ids, config.seq_len),
                                list(config.eval_steps)))
    return runs


def run(config, device="auto", progress=True, checkpoint=None):
    """Meta-train on ``meta_corpus``; train each init on every ``eval_corpora`` and record test bpc."""
    device = resolve_device(device)
    state = (checkpoint.load() if checkpoint is not None else None) or {"evaluation": {}}
    inner = InnerOptimizer("adam", lr=config.lr)
    meta_ids, meta_val_ids = tasks.corpus(config.meta_corpus, device=device)
    model = build(lstm_model, config, config.seed, device)

    def sample(gen):
        batches = [tasks.text_batch(meta_ids, config.batch_size, config.seq_len, gen)
                   for _ in range(config.inner_steps)]
        val = [tasks.text_batch(meta_val_ids, config.batch_size, config.seq_len, gen)
               for _ in config.val_steps]
        return batches, val

    learned, histories = {}, {}
    for kind, steps, lr in (("normal", config.meta_steps, config.meta_lr),
                            ("plif", config.plif_meta_steps, config.plif_meta_lr)):
        if f"dimaml-{kind}" in config.inits and steps:
            for s in range(config.meta_seeds):
                init, histories[f"{kind} seed {config.seed + s}"] = learn(
                    config, kind, model, sample, tasks.lm_loss, inner, steps, lr, base_stds(model), progress,
                    checkpoint, state, seed=config.seed + s)
                learned.setdefault(f"dimaml-{kind}", []).append(init)
    baseline = LearnedInitializer(model, "normal", base=base_stds(model), biases=config.learn_biases)
    for corpus in config.eval_corpora:
        train_ids, test_ids = tasks.corpus(corpus, device=device)
        runs = state["evaluation"].setdefault(corpus, {"runs": {}})["runs"]
        for init in config.inits:
            if init not in runs:
                runs[init] = evaluate_init(config, learned.get(init, [baseline]), train_ids, test_ids, device,
                                           metainit=init == "metainit")
                if checkpoint is not None:
                    checkpoint.save(state, label=f"{corpus} {init}")
    return {"meta": histories, "initializers": {f"{k} seed {config.seed + s}": v.to_dict()
                                                for k, inits in learned.items() for s, v in enumerate(inits)},
            "budgets": [f"{s} steps" for s in config.eval_steps], "evaluation": state["evaluation"]}


def summary(results):
    """The Table-2 analogue: test bpc (mean ± std over reruns and meta seeds) after every budget."""
    return format_table(summary_rows(results), results["budgets"], "bpc")


EXPERIMENT = skeleton.Experiment("char-lstm", LSTMConfig, PRESETS, run, summary)
