"""Experiment runners of Parts III-IV: one module per experiment, each defining ``EXPERIMENT`` (see
:mod:`hyperinit_lite.experiments.skeleton`, which also provides their shared command line)."""
import numpy as np
import torch

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(device="auto"):
    """The ``torch.device`` to run on: ``'auto'`` is the first CUDA GPU when one is available, else the CPU;
    ``'cpu'``, ``'cuda'``, ``'cuda:N'`` (or a ``torch.device``) are checked. ``ValueError`` naming ``device``
    otherwise, and for a CUDA device this machine does not have."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {device!r}") from err
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(resolved)!r} requested but no CUDA GPU is available here; "
                         "use device 'auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(resolved)!r} requested but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s); use 'cuda:0'..'cuda:"
                         f"{torch.cuda.device_count() - 1}' or 'auto'")
    return resolved


def seeded_generator(*key):
    """A CPU ``torch.Generator`` seeded from a tuple of non-negative ints: one independent stream per key
    (``numpy.random.SeedSequence`` mixes the key, so ``(0, 1)`` and ``(1, 0)`` do not collide)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
