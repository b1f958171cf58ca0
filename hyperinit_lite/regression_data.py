"""The three 1-D regression tasks of von Oswald et al. (2019), learned in sequence in Chapter 9.

Task ``t`` maps ``x`` to ``y = f_t(x)`` on its own interval:

    task 1:  y = x + 3          on [-4, -2]
    task 2:  y = 2 x^2 - 1      on [-1, 1]
    task 3:  y = (x - 3)^3      on [2, 4]

Each task has ``n_train`` training inputs drawn uniformly from its interval and ``n_test`` equally spaced test
inputs covering it. Gaussian noise of standard deviation ``noise_std`` is added to the training targets only;
test targets are the noise-free ``f_t(x)``. As in the reference code, every task uses its own
``numpy.random.RandomState(seed)`` with the same ``seed``: first the training inputs are drawn, then the noise.
"""
from dataclasses import dataclass

import numpy as np
import torch

from .validate import check_positive_int

TASK_NAMES = ("x + 3", "2x^2 - 1", "(x - 3)^3")
INTERVALS = ((-4.0, -2.0), (-1.0, 1.0), (2.0, 4.0))


def task_function(task, x):
    """``f_task(x)`` for ``task`` in 0, 1, 2 (works on numbers, numpy arrays and tensors)."""
    if task not in (0, 1, 2):
        raise ValueError(f"task must be one of 0, 1, 2; got {task!r}")
    if task == 0:
        return x + 3.0
    if task == 1:
        return 2.0 * x ** 2 - 1.0
    return (x - 3.0) ** 3


@dataclass
class RegressionTask:
    """One task's data as float32 tensors of shape ``(n, 1)``."""
    name: str
    interval: tuple
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device):
        """The same task with its tensors moved to ``device``."""
        return RegressionTask(self.name, self.interval, *(getattr(self, k).to(device) for k in
                                                          ("x_train", "y_train", "x_test", "y_test")))


def make_task(task, n_train=100, n_test=50, noise_std=0.05, seed=42):
    """Data of one task (0, 1 or 2), seeded with ``numpy.random.RandomState(seed)`` (see the module docstring)."""
    check_positive_int("n_train", n_train)
    check_positive_int("n_test", n_test)
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    task_function(task, 0.0)  # validates ``task``
    low, high = INTERVALS[task]
    rng = np.random.RandomState(seed)
    x_train = rng.uniform(low, high, size=(n_train, 1))
    x_test = np.linspace(low, high, n_test).reshape(n_test, 1)
    y_train = task_function(task, x_train) + rng.normal(0.0, noise_std, size=(n_train, 1))
    y_test = task_function(task, x_test)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return RegressionTask(TASK_NAMES[task], (low, high), as_tensor(x_train), as_tensor(y_train),
                          as_tensor(x_test), as_tensor(y_test))


def make_tasks(n_train=100, n_test=50, noise_std=0.05, seed=42):
    """The list of the three tasks, in the order they are learned."""
    return [make_task(t, n_train, n_test, noise_std, seed) for t in range(3)]
