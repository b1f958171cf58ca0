"""What the two DIMAML runners share (Chapter 12): seeded models, plain training with update rates,
resumable meta-training of one learned initializer, and the results table.

Used by :mod:`~hyperinit_lite.experiments.autoencoder` and :mod:`~hyperinit_lite.experiments.char_lstm`.
Their ``run`` saves a checkpoint after every block of ``save_every`` meta-steps and after every evaluated
(data set, init) pair, so that an interrupted run resumes with ``--resume`` and gives the same results.
"""
import numpy as np
import torch

from ..dimaml import LearnedInitializer
from ..meta_train import meta_train

INIT_LABELS = {"mean-image": "mean image (no training)", "kaiming": "Kaiming", "orthogonal": "orthogonal",
               "baseline": "per-gate N(0, 1/h)", "metainit": "MetaInit", "dimaml-normal": "DIMAML-Normal",
               "dimaml-plif": "DIMAML-PLIF", "dimaml-rates": "Kaiming + DIMAML rates"}


def build(make, config, seed, device):
    """``make(config)`` with the global RNG (PyTorch's default init) seeded by ``seed``, then restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make(config).to(device)


def train_steps(model, params_to_rate, batches, loss_fn, optimizer, evaluate, eval_at, target_rates=None):
    """Train ``model`` on ``batches`` (``optimizer.torch_optimizer``), ``evaluate(model)`` at ``eval_at``.

    Records each named tensor's update rate ``|grad W|_2 / |W|_2`` at every step (the paper's Appendix C).
    With ``target_rates = {name: [r_0, r_1, ...]}`` the gradient of each named tensor is rescaled at step
    ``t`` so that its rate equals ``r_t`` (rates transferred from another init). A non-finite loss stops the
    run: the remaining evaluations are NaN and ``diverged`` holds the step.
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
                rate = float(named[n].grad.norm() / named[n].norm())
                if target_rates is not None:
                    named[n].grad.mul_(target_rates[n][t] / max(rate, 1e-30))
                    rate = target_rates[n][t]
                rates[n].append(rate)
        opt.step()
        if t + 1 in eval_at:
            model.eval()
            with torch.no_grad():
                evals[t + 1] = float(evaluate(model))
    return {"evals": [evals.get(s, float("nan")) for s in eval_at], "rates": rates, "diverged": diverged}


def learn(config, kind, model, sample, loss_fn, inner, steps, meta_lr, base, progress, checkpoint=None,
          state=None, seed=None):
    """Meta-train a ``kind`` initializer for ``steps`` meta-steps, meta seed ``seed`` (or ``config.seed``).

    Returns ``(initializer, history)``. ``state`` (a dict) holds the finished and the running meta-trainings;
    with ``checkpoint`` it is saved every ``config.save_every`` meta-steps and a run resumes from it.
    """
    seed = config.seed if seed is None else seed
    key = f"{kind} seed {seed}"
    init = LearnedInitializer(model, kind, base=base, n_pieces=config.n_pieces, biases=config.learn_biases)
    done = (state or {}).get("learned", {}).get(key)
    if done is not None:
        init.load_state_dict(done["initializer"])
        return init, done["history"]

    def save(meta_state):
        state["running"] = {"key": key, "meta": meta_state}
        checkpoint.save(state, label=f"DIMAML-{key} meta-step {meta_state['step']}")

    running = (state or {}).get("running") or {}
    resume = running.get("meta") if running.get("key") == key else None
    history = meta_train(init, model, sample, loss_fn, inner, steps, list(config.val_steps), meta_lr,
                         config.checkpoint_every or None, seed=seed, progress=progress,
                         desc=f"DIMAML-{kind}", resume=resume,
                         save=save if checkpoint is not None else None, save_every=config.save_every)
    if checkpoint is not None:
        state["running"] = None
        state.setdefault("learned", {})[key] = {"initializer": init.state_dict(), "history": history}
        checkpoint.save(state, label=f"DIMAML-{key} meta-training")
    return init, history


def summary_rows(results):
    """Rows ``(data set, init, [(mean, std) per budget])`` of a result's ``evaluation``."""
    rows = []
    for data, entry in results["evaluation"].items():
        for init, runs in entry["runs"].items():
            values = np.array([[float(v) for v in run["evals"]] for run in runs])
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
            rows.append((data, init, list(zip(values.mean(axis=0), std))))
    return rows


def format_table(rows, budgets, unit):
    """The rows of :func:`summary_rows` as a Markdown table, ``mean ± std`` to 3 significant figures."""
    lines = [f"| data | init | " + " | ".join(f"{unit} @ {b}" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for data, init, cells in rows:
        lines.append(f"| {data} | {INIT_LABELS.get(init, init)} | "
                     + " | ".join(f"{m:.3g} ± {s:.2g}" for m, s in cells) + " |")
    return "\n".join(lines)
