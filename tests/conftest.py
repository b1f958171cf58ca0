import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gen():
    """A seeded generator, so every statistical test sees the same samples on every run."""
    return torch.Generator().manual_seed(1234)


def sample_variance_tolerance(n, kurtosis=3.0, sigmas=6.0):
    """Relative tolerance for a sample variance of ``n`` iid values: ``sigmas * sqrt((kurtosis - 1) / n)``."""
    return sigmas * ((kurtosis - 1.0) / n) ** 0.5


class BookBuild:
    """A finished build of a copy of the book: ``returncode`` and ``log`` of ``jupyter-book``, ``html`` folder."""

    def __init__(self, returncode, log, html):
        self.returncode, self.log, self.html = returncode, log, Path(html)


def strict_build(dest):
    """``jupyter-book build --all -W -n --keep-going`` on a fresh copy of the book in ``dest``.

    Strict (every warning an error), from stored outputs (``execute_notebooks: off``); with ``--keep-going`` the
    HTML is written even when a warning makes the build fail, so browser checks still see every page.
    """
    book = Path(dest) / "book"
    shutil.copytree(ROOT, book, ignore=shutil.ignore_patterns(".*", "_build", "*.egg-info", "results", "__pycache__"))
    exe = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(exe), "build", "--all", "-W", "-n", "--keep-going", str(book)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return BookBuild(proc.returncode, proc.stdout[-6000:] + proc.stderr[-6000:], book / "_build" / "html")


@pytest.fixture(scope="session")
def book_build(tmp_path_factory):
    """One strict build of the book per test run, shared by tests/test_book.py and tests/test_browser.py.

    Under pytest-xdist every worker is its own session: the first worker to ask builds, under a file lock in
    the run's shared temporary folder, and the others reuse that build.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return strict_build(tmp_path_factory.mktemp("book-build"))
    shared = tmp_path_factory.getbasetemp().parent / "book-build"  # the same folder for every worker of the run
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        result = shared / "result.json"
        if not result.exists():
            build = strict_build(shared)
            result.write_text(json.dumps({"returncode": build.returncode, "log": build.log, "html": str(build.html)}))
        return BookBuild(**json.loads(result.read_text()))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes a minute or more (deselect with -m 'not slow')")
