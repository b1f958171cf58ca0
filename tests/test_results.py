import json

import torch

import numpy as np

from hyperinit_lite.results import as_array, load_or_run, load_results, save_results, to_jsonable


def test_load_or_run_reuses_results_only_for_the_same_config(tmp_path):
    calls = []

    def run(config):
        calls.append(config)
        return {"loss": torch.tensor([1.0, float("nan")])}

    path = tmp_path / "r.json"
    first = load_or_run(path, {"lr": 0.1}, run)
    assert first == {"loss": [1.0, "nan"]} and len(calls) == 1
    assert load_or_run(path, {"lr": 0.1}, run) == first and len(calls) == 1
    load_or_run(path, {"lr": 0.2}, run)
    assert len(calls) == 2
    assert load_results(path, {"lr": 0.3}) is None
    assert json.loads(path.read_text())["config"] == {"lr": 0.2}


def test_save_results_leaves_no_temporary_file(tmp_path):
    save_results(tmp_path / "a" / "r.json", {"x": (1, 2)}, [1])
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


def test_as_array_reads_back_non_finite_and_missing_values():
    stored = to_jsonable([[1.5, float("nan")], [float("inf"), -float("inf")]])
    assert stored == [[1.5, "nan"], ["inf", "-inf"]]
    back = as_array(stored)
    assert back[0, 0] == 1.5 and np.isnan(back[0, 1]) and back[1, 0] == np.inf and back[1, 1] == -np.inf
    assert np.isnan(as_array([None, 2.0])[0])
    assert as_array(torch.tensor([1.0, 2.0], requires_grad=True)).tolist() == [1.0, 2.0]
