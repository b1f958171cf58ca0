"""Training throughput of the CIFAR-10 model of Chapter 10: hypernet-generated kernels vs ordinary parameters.

Times one SGD step (forward, backward, update; batch of random 3x32x32 images) of

* ``hypernet``: All-CNN-C whose kernels the chunked hypernetwork generates at every step
  (:class:`hyperinit_lite.experiments.cifar.HyperAllConvNet`, hyperfan-in init), and
* ``ordinary``: the same mainnet with its kernels as ordinary parameters
  (:class:`hyperinit_lite.experiments.cifar.AllConvNet`),

with ``torch.utils.benchmark`` (which synchronizes CUDA), and prints images per second. A script, not a test:

    OMP_NUM_THREADS=1 python benchmarks/cifar_throughput.py --preset quick --device cpu
    python benchmarks/cifar_throughput.py --preset paper --device cuda
"""
import argparse

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from hyperinit_lite.experiments import cifar


def step_function(model, batch_size, device, mixed_precision=False, seed=0):
    """A closure doing one SGD step of ``model`` on a fixed random batch of ``batch_size`` images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *cifar.IMAGE_SHAPE, generator=g).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)  # tiny steps: the timing, not the training, matters

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
    measurement = benchmark.Timer("step()", globals={"step": step}).blocked_autorange(min_run_time=min_run_time)
    return batch_size / measurement.median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(cifar.PRESETS), default="quick", help="model size of the preset")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's batch size")
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds of timing per model")
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 autocast (off by default)")
    args = parser.parse_args(argv)
    config = cifar.get_config(args.preset)
    device = cifar.check_device(args.device)
    batch_size = args.batch_size or config.batch_size
    hyper = cifar.build_model(config, "hyperfan_in").to(device)
    plain = cifar.AllConvNet(config.shapes, torch.Generator().manual_seed(0)).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"preset {args.preset}: All-CNN-C width {config.width}, K = {config.chunk_size}, batch {batch_size}, "
          f"{'bfloat16 autocast' if args.mixed_precision else 'float32'}, {name}, torch {torch.__version__}")
    print(f"{'model':<10}{'trainable parameters':>22}{'images/s':>12}")
    rates = {}
    for label, model in (("hypernet", hyper), ("ordinary", plain)):
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rates[label] = images_per_second(model, batch_size, device, args.min_run_time, args.mixed_precision)
        print(f"{label:<10}{n_params:>22,}{rates[label]:>12.4g}")
    print(f"hypernet / ordinary throughput: {rates['hypernet'] / rates['ordinary']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
