"""Experiment runners of Parts III-IV (one module per experiment, each with ``PRESETS``, ``run`` and a CLI)."""
import torch


def check_device(device):
    """A ``torch.device`` (``'cpu'``, ``'cuda'``, ``'cuda:N'``); ``ValueError`` for CUDA without a GPU."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but no CUDA GPU is available here; use device='cpu'")
    return device
