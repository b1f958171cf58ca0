"""Run the experiment command line in subprocesses, interrupt it with a real SIGINT, resume, compare results.

For a runner's test (``python -m hyperinit_lite NAME``)::

    from cli_harness import check_interrupt_resume
    def test_mnist_interrupt_then_resume_equals_uninterrupted(tmp_path):
        check_interrupt_resume(["mnist", "--set", "epochs=3", ...], tmp_path)

The config must save a checkpoint well before it ends (each unit of work taking a second or more), or the
run finishes before the interruption arrives and the check fails saying so.

Run as a script, this file is the command line of ``FAKE``, a tiny experiment that the skeleton's own tests
(``tests/test_cli.py``) drive: ``python tests/cli_harness.py --set epochs=4 --out DIR``. Environment:
``FAKE_CALLS`` (a file that gets one line per call of ``run``) and ``FAKE_DATA`` (the source ``data="auto"``
resolves to, default ``small``).
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("seconds", "wall_seconds", "time", "times")
INTERRUPTED = "continue with --resume"


# ------------------------------------------------------------------------------------- the fake experiment
@dataclasses.dataclass(frozen=True)
class FakeConfig:
    data: str = "auto"
    width: int = 4
    depth: int = 2
    epochs: int = 3
    lr: float = 0.1
    flag: bool = False
    seeds: Tuple[int, ...] = (0, 1)
    n_train: Optional[int] = None
    tags: tuple = ("a",)
    sleep: float = 0.0

    def __post_init__(self):
        from hyperinit_lite.validate import check_choice, check_positive_int
        check_choice("data", self.data, ("auto", "small", "full"))
        for name in ("width", "depth", "epochs"):
            check_positive_int(name, getattr(self, name))


def fake_data_used(config):
    return {"source": os.environ.get("FAKE_DATA", "small") if config.data == "auto" else config.data}


def fake_run(config, device="auto", progress=True, checkpoint=None, until_epoch=None):
    """Draw ``width`` normals per epoch from one generator (its state is checkpointed after each epoch);
    ``until_epoch`` (a command line option) stops after that epoch."""
    from hyperinit_lite.experiments import resolve_device
    from hyperinit_lite.experiments.skeleton import Stopped
    device = resolve_device(device)
    if os.environ.get("FAKE_CALLS"):
        with open(os.environ["FAKE_CALLS"], "a") as log:
            log.write(f"{config.width}\n")
    state = None if checkpoint is None else checkpoint.load()
    if state is None:
        gen = torch.Generator().manual_seed(config.seeds[0])
        state = {"epoch": 0, "values": [], "generator": gen.get_state()}
    gen = torch.Generator()
    gen.set_state(state["generator"])
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        time.sleep(config.sleep)
        value = float(torch.randn(config.width, config.depth, generator=gen).sum()) * config.lr
        state = {"epoch": epoch, "values": state["values"] + [value], "generator": gen.get_state()}
        if checkpoint is not None:
            checkpoint.save(state, f"epoch {epoch}")
        if epoch == until_epoch and epoch < config.epochs:
            raise Stopped
    return {"values": state["values"], "device": str(device), "seconds": time.perf_counter()}


def fake_summary(results):
    return f"{len(results['values'])} epochs, last value {results['values'][-1]:.3g}"


def fake_export(results, results_path):
    from hyperinit_lite.results import write_atomic
    path = results_path.with_suffix(".values.txt")
    return [write_atomic(path, lambda tmp: tmp.write_text(" ".join(map(str, results["values"]))))]


def fake_experiment():
    from hyperinit_lite.experiments.skeleton import Experiment
    presets = {"paper": FakeConfig(width=8, epochs=5), "quick": FakeConfig()}
    options = (("--until-epoch", {"type": int, "default": None, "metavar": "N",
                                  "help": "stop after epoch N"}),)
    return Experiment("fake", FakeConfig, presets, fake_run, fake_summary, data_used=fake_data_used,
                      options=options, export=fake_export)


# ---------------------------------------------------------------------------------------------- harness
def command(args, script=None):
    """``python -m hyperinit_lite ARGS``, or ``python SCRIPT ARGS``."""
    head = [sys.executable, str(script)] if script else [sys.executable, "-m", "hyperinit_lite"]
    return head + [str(a) for a in args]


def cli_env(**extra):
    """The environment of a CLI subprocess: one thread, no GPU surprises, plus ``extra``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(args, script=None, env=None, timeout=600):
    """Run the command line to the end; a ``CompletedProcess`` with text ``stdout`` / ``stderr``."""
    return subprocess.run(command(args, script), cwd=ROOT, env=env or cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_cli(args, script=None, env=None):
    """Start the command line; a ``Popen`` with text pipes."""
    return subprocess.Popen(command(args, script), cwd=ROOT, env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, out, timeout=300):
    """Wait until ``out`` holds a ``*.ckpt`` file; fail if ``proc`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(Path(out).glob("*.ckpt"))
        if found:
            return found[0]
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before saving a checkpoint:\n"
                                 f"{stdout}\n{stderr}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint in {out} after {timeout} s")


def interrupt(proc, timeout=120):
    """Send SIGINT to ``proc``; its ``(returncode, stdout, stderr)``."""
    if proc.poll() is not None:
        stdout, stderr = proc.communicate()
        raise AssertionError("the run finished before it could be interrupted; use a longer config\n"
                             f"{stdout}\n{stderr}")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def result_files(out):
    """The results files in ``out`` (sorted)."""
    return sorted(Path(out).glob("*.json"))


def load_envelope(out):
    """The one results envelope in ``out``."""
    files = result_files(out)
    assert len(files) == 1, f"expected one results file in {out}, found {files}"
    return json.loads(files[0].read_text())


def without(value, keys=TIMING_KEYS):
    """``value`` without the dict entries named in ``keys``, recursively (timings differ between runs)."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def assert_same_results(first, second, ignore=TIMING_KEYS):
    """Results equal up to the entries named in ``ignore``."""
    assert without(first, ignore) == without(second, ignore)


def check_interrupt_resume(args, tmp_path, script=None, env=None, ignore=TIMING_KEYS, timeout=600):
    """Interrupt ``args --out A`` with SIGINT once a checkpoint exists (exit 130, "interrupted after ...;
    continue with --resume"), finish it with ``--resume``, run ``args --out B`` without interruption, and
    assert both results are equal (entries in ``ignore`` aside). Returns the two envelopes."""
    first, second = Path(tmp_path) / "interrupted", Path(tmp_path) / "uninterrupted"
    proc = start_cli([*args, "--out", first], script, env)
    wait_for_checkpoint(proc, first, timeout)
    code, _, stderr = interrupt(proc)
    assert code == 130, f"exit {code} after SIGINT:\n{stderr}"
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert lines and lines[-1].startswith("interrupted after ") and INTERRUPTED in lines[-1], stderr
    assert "Traceback" not in stderr, stderr
    resumed = run_cli([*args, "--out", first, "--resume"], script, env, timeout)
    assert resumed.returncode == 0, resumed.stderr
    plain = run_cli([*args, "--out", second], script, env, timeout)
    assert plain.returncode == 0, plain.stderr
    a, b = load_envelope(first), load_envelope(second)
    assert_same_results(a["results"], b["results"], ignore)
    assert a["config"] == b["config"] and a["data"] == b["data"]
    assert not list(first.glob("*.ckpt")), "the checkpoint should be removed once the results are saved"
    return a, b


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from hyperinit_lite.experiments.skeleton import cli
    sys.exit(cli(fake_experiment()))
