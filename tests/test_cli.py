"""The shared experiment command line (issue 12), driven through a real subprocess on the fake experiment of
``tests/cli_harness.py``; the typed ``--set`` parser and ``resolve_device`` also in-process."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Tuple

import pytest
import torch

from cli_harness import (FakeConfig, check_interrupt_resume, cli_env, fake_experiment, load_envelope,
                         result_files, run_cli, start_cli)
from hyperinit_lite.experiments import resolve_device
from hyperinit_lite.experiments.skeleton import UsageError, make_config, parse_value, saved_results
from hyperinit_lite.results import Checkpoint

SCRIPT = Path(__file__).with_name("cli_harness.py")


def fake(args, tmp_path, **env):
    """Run the fake experiment's CLI; every call of its ``run`` is logged to ``tmp_path/calls``."""
    return run_cli(args, SCRIPT, cli_env(FAKE_CALLS=tmp_path / "calls", **env), timeout=300)


def calls(tmp_path):
    log = tmp_path / "calls"
    return log.read_text().splitlines() if log.exists() else []


def assert_one_line_error(proc, *words, code=2):
    """Exit ``code``, no traceback, one line on stderr containing every word."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# -------------------------------------------------------------------------------------------- --out checks
def test_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    assert_one_line_error(fake(["--out", target], tmp_path), str(target), "folder")
    assert calls(tmp_path) == []


def test_unwritable_out_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a folder no one may create
            ro = Path("/sys/hyperinit_lite_out")
            if os.access("/sys", os.W_OK) and not _mkdir_fails(ro):
                pytest.skip("no unwritable folder available to this user")
        assert_one_line_error(fake(["--out", ro], tmp_path), str(ro), "not writable")
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert calls(tmp_path) == []


def _mkdir_fails(path):
    try:
        path.mkdir()
    except OSError:
        return True
    path.rmdir()
    return False


# ------------------------------------------------------------------------------------- --set and naming
def test_different_overrides_give_different_files_and_repeated_set_accumulates(tmp_path):
    out = tmp_path / "out"
    assert fake(["--set", "width=5", "--set", "depth=3", "--out", out], tmp_path).returncode == 0
    assert fake(["--set", "width=6", "depth=3", "--out", out], tmp_path).returncode == 0
    files = result_files(out)
    assert len(files) == 2 and all(f.name.startswith("fake_quick_") and len(f.stem) == len("fake_quick_") + 8
                                   for f in files)
    stored = sorted((json.loads(f.read_text()) for f in files), key=lambda e: e["config"]["width"])
    assert [(e["config"]["width"], e["config"]["depth"]) for e in stored] == [(5, 3), (6, 3)]
    assert [e["label"] for e in stored] == ["fake quick width=5 depth=3", "fake quick width=6 depth=3"]


@pytest.mark.parametrize("item, words", [
    ("width=abc", ["width", "integer", "'abc'"]),
    ("foo=1", ["unknown field 'foo'", "width"]),
    ("epochs=1.5", ["epochs", "integer", "'1.5'"]),
    ("flag=maybe", ["flag", "true or false", "'maybe'"]),
    ("width=0", ["width", "positive integer"]),
])
def test_bad_set_values_are_one_line_naming_the_parameter(tmp_path, item, words):
    assert_one_line_error(fake(["--set", item, "--out", tmp_path / "out"], tmp_path), *words)
    assert calls(tmp_path) == []


def test_set_values_are_typed_by_the_config_fields():
    exp = fake_experiment()
    config = make_config(exp, "quick", ["lr=1e-3", "flag=yes", "seeds=3,4", "n_train=none", "tags=b,c",
                                        "data=full", "n_train=7"])
    assert config == FakeConfig(lr=1e-3, flag=True, seeds=(3, 4), n_train=7, tags=("b", "c"), data="full")
    assert parse_value("x", Optional[int], "None") is None
    assert parse_value("x", Optional[int], "3") == 3
    assert parse_value("x", Tuple[float, ...], "1,2.5") == (1.0, 2.5)
    assert parse_value("m", tuple, "350,450", current=(), default=(350, 450)) == (350, 450)
    assert parse_value("m", tuple, "", current=(1,)) == ()
    with pytest.raises(UsageError, match="preset"):
        make_config(exp, "huge")


# ------------------------------------------------------------------------------------ devices and flags
def test_resolve_device():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "gpu0", "cuda:x", None):
        with pytest.raises(ValueError, match="device must be"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_gpu_is_one_line(tmp_path):
    proc = fake(["--device", "cuda", "--out", tmp_path / "out"], tmp_path)
    assert_one_line_error(proc, "cuda", "no CUDA GPU")
    assert calls(tmp_path) == []


def test_resume_and_rerun_together_are_refused(tmp_path):
    assert_one_line_error(fake(["--resume", "--rerun", "--out", tmp_path / "out"], tmp_path), "--resume",
                          "--rerun")


# ----------------------------------------------------------------------------------- results and cache
def test_envelope_records_config_data_device_seconds_and_reloading_does_not_rerun(tmp_path):
    out = tmp_path / "out"
    first = fake(["--set", "width=3", "--out", out], tmp_path)
    assert first.returncode == 0, first.stderr
    stored = load_envelope(out)
    assert stored["config"] == json.loads(json.dumps(dataclasses.asdict(FakeConfig(width=3))))
    assert stored["data"] == {"source": "small"} and stored["device"] == "cpu"
    assert stored["seconds"] >= 0 and len(stored["results"]["values"]) == 3
    assert "wrote" in first.stdout and len(list(out.glob("*.values.txt"))) == 1  # the experiment's export
    again = fake(["--set", "width=3", "--out", out], tmp_path)
    assert again.returncode == 0 and "loaded" in again.stdout
    assert calls(tmp_path) == ["3"]  # the second command reloaded instead of running
    assert load_envelope(out) == stored
    assert saved_results(fake_experiment(), "quick", out, ["width=3"]) == stored["results"]
    assert saved_results(fake_experiment(), "quick", out, ["width=4"]) is None


def test_cached_results_of_other_data_are_refused(tmp_path):
    out = tmp_path / "out"
    assert fake(["--out", out], tmp_path, FAKE_DATA="small").returncode == 0
    refused = fake(["--out", out], tmp_path, FAKE_DATA="full")
    assert_one_line_error(refused, "small", "full", "--rerun")
    assert len(calls(tmp_path)) == 1
    assert fake(["--out", out, "--rerun"], tmp_path, FAKE_DATA="full").returncode == 0
    assert load_envelope(out)["data"] == {"source": "full"}


def test_corrupt_results_file_is_one_line_naming_it(tmp_path):
    out = tmp_path / "out"
    assert fake(["--out", out], tmp_path).returncode == 0
    path = result_files(out)[0]
    path.write_text('{"config": {"width"')
    assert_one_line_error(fake(["--out", out], tmp_path), str(path), "--rerun")
    assert fake(["--out", out, "--rerun"], tmp_path).returncode == 0


# ----------------------------------------------------------------------------------------- checkpoints
def _checkpoint_path(out, config=FakeConfig()):
    from hyperinit_lite.experiments.skeleton import paths
    return paths(fake_experiment(), "quick", config, out)[1]


def test_existing_checkpoint_is_refused_without_resume_or_rerun(tmp_path):
    out = tmp_path / "out"
    path = _checkpoint_path(out)
    state = {"epoch": 1, "values": [0.5], "generator": torch.Generator().manual_seed(0).get_state()}
    Checkpoint(path, FakeConfig(), {"source": "small"}).save(state, "epoch 1")
    assert_one_line_error(fake(["--out", out], tmp_path), str(path), "--resume", "--rerun")
    assert path.exists() and calls(tmp_path) == []
    resumed = fake(["--out", out, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_envelope(out)["results"]["values"][0] == 0.5 and not path.exists()


def test_corrupt_checkpoint_is_one_line_naming_it(tmp_path):
    out = tmp_path / "out"
    path = _checkpoint_path(out)
    out.mkdir()
    path.write_bytes(b"\x80\x02 truncated")
    assert_one_line_error(fake(["--out", out, "--resume"], tmp_path), str(path), "--rerun")
    assert fake(["--out", out, "--rerun"], tmp_path).returncode == 0


def test_sigint_then_resume_equals_an_uninterrupted_run(tmp_path):
    a, b = check_interrupt_resume(["--set", "epochs=6", "sleep=0.4", "width=16"], tmp_path, script=SCRIPT)
    assert len(a["results"]["values"]) == 6


def test_a_runner_that_stops_on_purpose_keeps_its_checkpoint(tmp_path):
    out = tmp_path / "out"
    stopped = fake(["--until-epoch", "1", "--out", out], tmp_path)
    assert stopped.returncode == 0 and "stopped after epoch 1; continue with --resume" in stopped.stdout
    assert _checkpoint_path(out).exists() and result_files(out) == []
    assert fake(["--out", out, "--resume"], tmp_path).returncode == 0
    assert len(load_envelope(out)["results"]["values"]) == 3


def test_concurrent_runs_on_one_out_all_succeed(tmp_path):
    out = tmp_path / "out"
    env = cli_env(FAKE_CALLS=tmp_path / "calls")
    configs = [["--set", "sleep=0.3", "width=2"], ["--set", "sleep=0.3", "width=3"],
               ["--set", "sleep=0.3", "width=3"]]
    procs = [start_cli([*args, "--out", out], SCRIPT, env) for args in configs]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    assert len(result_files(out)) == 2
    assert sorted(calls(tmp_path)) == ["2", "3"]  # the same config ran once; the other waited, reloaded
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_python_m_hyperinit_lite_lists_only_present_experiments():
    proc = subprocess.run([sys.executable, "-m", "hyperinit_lite", "--help"], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    from hyperinit_lite.__main__ import available_commands
    for name in available_commands():
        assert name in proc.stdout
