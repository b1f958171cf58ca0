"""Every ``paper`` preset builds at full size and trains a few steps on CPU.

Each phase of ``benchmarks/paper_presets.py`` (the training of every experiment; for DIMAML, meta-training
and evaluation) runs once through its runner's public ``run()``: the paper's model (widths, depths, channels,
embedding and sequence sizes, as in the preset), a budget of a few steps, and where that keeps the test short
one seed or arm and a tiny batch (``TEST_OVERRIDES``). Data the machine lacks is replaced as in the benchmark
(MNIST by the offline digits, CIFAR-10 by random images of its shape). The seconds per step and memory of the
full presets are the benchmark's (``book/running.md``).
"""
import math
import runpy
from pathlib import Path

import pytest
import torch

from hyperinit_lite.__main__ import available_commands

ROOT = Path(__file__).resolve().parents[1]
BENCH = runpy.run_path(str(ROOT / "benchmarks" / "paper_presets.py"))
# the fields that make a model "full size": never changed by a phase's budget or the test's overrides
SIZE_FIELDS = {
    "mnist": ("width", "depth", "embedding_dim"),
    "continual": ("mainnet_hidden", "hypernet_hidden", "embedding_dim"),
    "cifar": ("width", "chunk_size", "hidden_size", "embedding_dim", "input_layers"),
    "autoencoder": ("size", "channels", "latent"),
    "char-lstm": ("embed", "hidden", "seq_len"),
    "dimaml-hyperfan": ("width", "depth", "embedding_dim"),
}
# one seed / arm and a tiny batch, so that every phase takes seconds (the model stays at full size)
TEST_OVERRIDES = {
    "mnist/training": dict(seeds=(0,), cases=("weights",), relu=False),
    "continual/SGD sweep": dict(runs=1),
    "cifar/training": dict(seeds=(0,), inits=("hyperfan_in",), n_train=4, n_test=4, batch_size=2),
    "autoencoder/meta-training": dict(batch_size=8, val_batch_size=8),
    "char-lstm/meta-training": dict(batch_size=2, inits=("dimaml-normal",)),
    "char-lstm/evaluation": dict(batch_size=2),
    "dimaml-hyperfan/meta-training": dict(batch_size=8, val_batch_size=8),
    "dimaml-hyperfan/evaluation": dict(batch_size=8, val_batch_size=8),
}
# fewer units than the benchmark's smallest run where one step already takes seconds (default: sizes[0])
TEST_UNITS = {"mnist/training": 1, "dimaml-hyperfan/meta-training": 1, "dimaml-hyperfan/evaluation": 1}
PHASES = {phase.key: phase for phase in BENCH["PHASES"]}


def finite_numbers(value):
    """Every number in a (nested) result; training losses may be NaN only where a run diverged on purpose."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in finite_numbers(v)]
    if isinstance(value, torch.Tensor):
        return value.flatten().tolist()
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_every_experiment_has_a_phase():
    """Every experiment of ``python -m hyperinit_lite`` is measured and tested here."""
    commands = set(available_commands())
    assert {phase.experiment for phase in PHASES.values()} == commands == set(SIZE_FIELDS)


@pytest.mark.parametrize("key", list(PHASES))
def test_paper_preset_trains_at_full_size(key):
    phase, extra = PHASES[key], TEST_OVERRIDES.get(key, {})
    units = TEST_UNITS.get(key, phase.sizes[0])
    paper = phase.module().PRESETS["paper"]
    config = phase.config(units, **extra)
    for field in SIZE_FIELDS[phase.experiment]:
        assert getattr(config, field) == getattr(paper, field), f"{field} differs from the paper preset"
    torch.manual_seed(0)
    results = phase.run(units, device="cpu", **extra)
    numbers = finite_numbers(results)
    assert numbers and any(math.isfinite(x) for x in numbers), f"{key}: no finite number in the results"
    assert phase.paper_units(paper) > 0
