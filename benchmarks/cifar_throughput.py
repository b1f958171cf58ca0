"""Training throughput of the CIFAR-10 model of Chapter 10: hypernet-generated kernels vs ordinary parameters.

Times one SGD step (forward, backward, update; batch of random 3x32x32 images) of

* ``hypernet``: All-CNN-C whose kernels the chunked hypernetwork generates at every step
  (:class:`hyperinit_lite.experiments.cifar_training.HyperAllConvNet`, hyperfan-in init), and
* ``ordinary``: the same mainnet with its kernels as ordinary parameters
  (:class:`AllConvNet` below),

with ``torch.utils.benchmark`` (which synchronizes CUDA), and prints images per second; then the images per
second of one SGD step of the preset's seeds trained together (``cifar_training.StackedSeeds``), with
``torch.func.vmap`` over the seeds and with a loop over them (the runner's default on a CPU, where vmap's
grouped convolutions are slower). A script, not a test:

    OMP_NUM_THREADS=1 python benchmarks/cifar_throughput.py --preset quick --device cpu
    python benchmarks/cifar_throughput.py --preset paper --device cuda
"""
import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

from hyperinit_lite.all_conv_net import all_conv_net_forward
from hyperinit_lite.experiments import cifar, cifar_data, cifar_training, resolve_device


class AllConvNet(nn.Module):
    """All-CNN-C with ordinary kernel parameters (Kaiming fan-in uniform, zero biases): the baseline."""

    def __init__(self, shapes, generator=None):
        super().__init__()
        self.kernels = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(s[0])) for s in shapes)
        with torch.no_grad():
            for t, k in enumerate(self.kernels):
                gain = 2.0 if t < len(shapes) - 1 else 1.0
                bound = math.sqrt(3.0 * gain / (k[0].numel()))
                k.uniform_(-bound, bound, generator=generator)

    def forward(self, x):
        """Class scores of images ``x``."""
        return all_conv_net_forward(x, list(self.kernels), self.biases)


def step_function(model, batch_size, device, mixed_precision=False, seed=0):
    """A closure doing one SGD step of ``model`` on a fixed random batch of ``batch_size`` images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *cifar_data.IMAGE_SHAPE, generator=g).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)  # tiny steps: the timing matters, not training

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=mixed_precision):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()
    return step


def images_per_second(model, batch_size, device, min_run_time, mixed_precision=False):
    """Median images per second of :func:`step_function` over ``torch.utils.benchmark`` blocks."""
    step = step_function(model, batch_size, device, mixed_precision)
    step()  # warm-up (allocations, cuDNN autotuning)
    timer = benchmark.Timer("step()", globals={"step": step})
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return batch_size / measurement.median


def stacked_images_per_second(config, batch_size, device, vectorize, min_run_time):
    """Images per second of one :meth:`StackedSeeds.step` over all of ``config.seeds`` (random batches)."""
    models = [cifar_training.build_model(config, "hyperfan_in", s) for s in config.seeds]
    arm = cifar_training.StackedSeeds(models, config.seeds, device, vectorize)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(config.seeds), batch_size, *cifar_data.IMAGE_SHAPE, generator=g).to(device)
    y = torch.randint(0, 10, (len(config.seeds), batch_size), generator=g).to(device)
    arm.step(x, y, 1e-6)  # warm-up
    timer = benchmark.Timer("arm.step(x, y, 1e-6)", globals={"arm": arm, "x": x, "y": y})
    return len(config.seeds) * batch_size / timer.blocked_autorange(min_run_time=min_run_time).median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(cifar.PRESETS), default="quick",
                        help="model size of the preset")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's batch size")
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds of timing per model")
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 autocast (off by default)")
    args = parser.parse_args(argv)
    config = cifar.get_config(args.preset)
    device = resolve_device(args.device)
    batch_size = args.batch_size or config.batch_size
    hyper = cifar_training.build_model(config, "hyperfan_in").to(device)
    plain = AllConvNet(config.shapes, torch.Generator().manual_seed(0)).to(device)
    threads = f"CPU, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"preset {args.preset}: All-CNN-C width {config.width}, K = {config.chunk_size}, "
          f"batch {batch_size}, "
          f"{'bfloat16 autocast' if args.mixed_precision else 'float32'}, {name}, torch {torch.__version__}")
    print(f"{'model':<10}{'trainable parameters':>22}{'images/s':>12}")
    rates = {}
    for label, model in (("hypernet", hyper), ("ordinary", plain)):
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rates[label] = images_per_second(model, batch_size, device, args.min_run_time, args.mixed_precision)
        print(f"{label:<10}{n_params:>22,}{rates[label]:>12.4g}")
    print(f"hypernet / ordinary throughput: {rates['hypernet'] / rates['ordinary']:.3g}")
    for vectorize in (False, True):
        rate = stacked_images_per_second(config, batch_size, device, vectorize, args.min_run_time)
        print(f"{len(config.seeds)} seeds stacked, {'vmap' if vectorize else 'loop'}: {rate:.4g} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
