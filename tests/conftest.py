import pytest
import torch


@pytest.fixture
def gen():
    """A seeded generator, so every statistical test sees the same samples on every run."""
    return torch.Generator().manual_seed(1234)


def sample_variance_tolerance(n, kurtosis=3.0, sigmas=6.0):
    """Relative tolerance for a sample variance of ``n`` iid values: ``sigmas * sqrt((kurtosis - 1) / n)``."""
    return sigmas * ((kurtosis - 1.0) / n) ** 0.5
