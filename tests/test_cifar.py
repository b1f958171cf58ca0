"""The CIFAR-10 experiment of Chapter 10: config checks, data, stacked seeds, checkpoint/resume, divergence,
CLI, CPU speed."""
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from hyperinit_lite import all_conv_net as acn
from hyperinit_lite import chunked as hc
from hyperinit_lite import data
from hyperinit_lite import results as results_io
from hyperinit_lite.data import DataUnavailableError
from cli_harness import check_interrupt_resume, run_cli
from hyperinit_lite.experiments import cifar, cifar_data, cifar_report, cifar_training, skeleton

TINY = dict(name="tiny", data="mnist_standin", n_train=40, n_test=20, width=2, chunk_size=2, hidden_size=3,
            embedding_dim=2, batch_size=10, epochs=3, milestones=(2,), lr=0.05, log_every=2, seeds=(0, 1))


def tiny_config(**changes):
    return cifar.CIFARConfig(**{**TINY, **changes})


@pytest.fixture(scope="module")
def tiny_images():
    """40 + 20 random standardized images: the training loop does not care what they show."""
    g = torch.Generator().manual_seed(0)
    return cifar_data.ImageSet(torch.randn(40, 3, 32, 32, generator=g),
                               torch.randint(0, 10, (40,), generator=g),
                               torch.randn(20, 3, 32, 32, generator=g),
                               torch.randint(0, 10, (20,), generator=g),
                               "random", "random images (test)", (0.0,) * 3, (1.0,) * 3)


def _json(results):
    return json.dumps(results_io.to_jsonable({k: results[k] for k in ("arms", "runs", "seeds")}))


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes, message", [
    (dict(data="imagenet"), "data"),
    (dict(inits=()), "inits"),
    (dict(inits=("hyperfan_in", "hyperfan_in")), "inits"),
    (dict(inits=("xavier",)), "inits"),
    (dict(seeds=()), "seeds"),
    (dict(seeds=(0, 0)), "seeds"),
    (dict(seeds=(-1,)), "seeds"),
    (dict(seeds=(1.5,)), "seeds"),
    (dict(kaiming_fan_in_lrs=(1e-3, -1.0)), "kaiming_fan_in_lrs"),
    (dict(milestones=(2, 1)), "milestones"),
    (dict(milestones=(4,)), "milestones"),
    (dict(milestones=(0,)), "milestones"),
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=1.5), "gamma"),
    (dict(batch_size=50), "batch_size"),
    (dict(width=0), "width"),
    (dict(chunk_size=1.5), "chunk_size"),
    (dict(lr=-1.0), "lr"),
    (dict(input_layers="shared"), "input_layers"),
    (dict(mixed_precision="maybe"), "mixed_precision"),
    (dict(n_train=0), "n_train"),
])
def test_config_rejects_bad_values_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_presets_arms_and_device_checks():
    paper = cifar.get_config("paper")
    assert (paper.width, paper.chunk_size, paper.hidden_size, paper.embedding_dim) == (96, 96, 50, 50)
    assert (paper.lr, paper.batch_size, paper.epochs, paper.milestones, paper.gamma) == (5e-4, 100, 500,
                                                                                         (350, 450), 0.1)
    assert paper.data == "cifar10" and not paper.mixed_precision and paper.inits == cifar_training.INITS
    quick = cifar.get_config("quick")
    assert quick.data == "mnist_standin" and len(quick.seeds) >= 3 and quick.lr == paper.lr
    assert [a[0] for a in quick.arms] == list(cifar_training.INITS)
    grid = cifar.get_config("quick", inits=("hyperfan_in",), kaiming_fan_in_lrs=(1e-6, 5e-4, 1e-8))
    assert grid.arms == [("hyperfan_in", "hyperfan_in", 5e-4),
                         ("kaiming_fan_in lr=1e-06", "kaiming_fan_in", 1e-6),
                         ("kaiming_fan_in lr=1e-08", "kaiming_fan_in", 1e-8)]
    with pytest.raises(ValueError, match="preset"):
        cifar.get_config("huge")
    overrides = ["epochs=2", "inits=hyperfan_in,hyperfan_out", "n_test=none", "milestones=1", "seeds=3,4",
                 "kaiming_fan_in_lrs=1e-5"]
    assert skeleton.make_config(cifar.EXPERIMENT, "quick", overrides) == cifar.get_config(
        "quick", epochs=2, inits=("hyperfan_in", "hyperfan_out"), n_test=None, milestones=(1,), seeds=(3, 4),
        kaiming_fan_in_lrs=(1e-5,))
    for bad in ("depth=3", "mixed_precision=maybe", "seeds=a"):
        with pytest.raises(skeleton.UsageError):
            skeleton.make_config(cifar.EXPERIMENT, "quick", [bad])


# --------------------------------------------------------------------------------------------------- data
def test_standin_is_labelled_standardized_and_cifar_shaped():
    images = cifar_data.load_images("mnist_standin", n_train=500, n_test=100)
    assert images.label == cifar_data.STANDIN_LABEL and "not CIFAR-10" in images.describe()
    assert images.x_train.shape == (500, 3, 32, 32) and images.x_test.shape == (100, 3, 32, 32)
    assert images.y_train.dtype == torch.int64 and set(images.y_train.unique().tolist()) == set(range(10))
    per_channel = images.x_train.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(images.x_train[:, 0], images.x_train[:, 2])  # grey digits on three channels
    with pytest.raises(ValueError, match="n_train"):
        cifar_data.load_images("mnist_standin", n_train=10 ** 6)


def test_cifar_offline_fails_fast_and_auto_falls_back(tmp_path, monkeypatch):
    with pytest.raises(DataUnavailableError, match="mnist_standin"):
        cifar_data.cifar10_images(root=tmp_path, download=False)
    monkeypatch.setattr(data, "probe_url", lambda url, timeout: "no network (test)")
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError, match="cannot be downloaded"):
        cifar_data.load_images("cifar10", root=tmp_path)
    assert time.perf_counter() - start < 5
    monkeypatch.setattr(cifar_data, "default_root", lambda: tmp_path)
    with pytest.warns(UserWarning, match="stand-in"):
        images = cifar_data.load_images("auto", n_train=100, n_test=50)
    assert images.label == cifar_data.STANDIN_LABEL


# ------------------------------------------------------------------------------------------------- models
def test_model_is_the_hypernet_generated_all_conv_net_and_inits_share_draws():
    config = tiny_config(width=4, chunk_size=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    models = {init: cifar_training.build_model(config, init) for init in cifar_training.INITS}
    for model in models.values():
        with torch.no_grad():
            expected = acn.all_conv_net_forward(x, model.hypernet(), model.biases)
            torch.testing.assert_close(model(x), expected)
    ref = models["hyperfan_in"].hypernet
    for init, model in models.items():
        for a, b in zip(model.hypernet.embeddings, ref.embeddings):
            assert torch.equal(a, b), init
        ratio = model.hypernet.input_weights[1] / ref.input_weights[1]  # same draws, another scale
        torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.flatten()[0].item()))
    other_seed = cifar_training.build_model(config, "hyperfan_in", seed=1).hypernet
    assert not torch.equal(other_seed.embeddings[1], ref.embeddings[1])
    modes = cifar_training.TARGET_MODES
    g_var = {init: hc.chunked_init_variances(m.hypernet, "kaiming", modes[init])[1][0]
             for init, m in models.items() if init.startswith("kaiming")}
    assert g_var["kaiming_fan_in"] == pytest.approx(2 / config.embedding_dim)
    assert g_var["kaiming_fan_out"] == pytest.approx(2 / (config.chunk_size * config.hidden_size))


# ------------------------------------------------------------------------------------- stacked seeds, SGD
@pytest.mark.parametrize("vectorize", [False, True])
def test_stacked_seeds_take_the_steps_of_torch_optim_sgd(tiny_images, vectorize):
    """Each seed of an arm follows exactly the run of its own model with torch.optim.SGD on its batches."""
    config = tiny_config(inits=("hyperfan_in",), epochs=1, milestones=())
    result = cifar.run(config, images=tiny_images, progress=False, vectorize=vectorize)
    for seed in config.seeds:
        model = cifar_training.build_model(config, "hyperfan_in", seed)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr)
        order, losses = cifar_training.epoch_order(40, seed, 1), []
        for b in range(4):
            idx = order[b * 10:(b + 1) * 10]
            loss = F.cross_entropy(model(tiny_images.x_train[idx]), tiny_images.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history = result["runs"]["hyperfan_in"][str(seed)]
        assert history["step_loss"] == pytest.approx([sum(losses[:2]) / 2, sum(losses[2:]) / 2], rel=1e-4)
        with torch.no_grad():
            test = F.cross_entropy(model(tiny_images.x_test), tiny_images.y_test, reduction="sum").item()
        assert history["test_loss"][1] == pytest.approx(test, rel=1e-4)


def test_a_diverged_seed_is_dropped_and_the_others_go_on():
    config = tiny_config(seeds=(0, 1, 2))
    models = [cifar_training.build_model(config, "hyperfan_in", s) for s in config.seeds]
    arm = cifar_training.StackedSeeds(models, config.seeds, torch.device("cpu"), vectorize=False)
    histories = {s: cifar_training.new_history(config, 4, 20) for s in config.seeds}
    kept = arm.trainable["biases.0"][[0, 2]].clone()
    cifar_training.diverge_(arm, histories, torch.tensor([1.0, math.nan, 2.0]), epoch=2, step=7)
    assert arm.seeds == [0, 2] and torch.equal(arm.trainable["biases.0"], kept)
    assert [histories[s]["diverged_step"] for s in config.seeds] == [None, 7, None]


def test_diverged_arms_are_recorded_and_the_lr_grid_runs(tiny_images):
    config = tiny_config(inits=("hyperfan_in",), kaiming_fan_in_lrs=(1e30, 1e-12), milestones=())
    res = results_io.to_jsonable(cifar.run(config, images=tiny_images, progress=False))
    bad, tiny = res["runs"]["kaiming_fan_in lr=1e+30"], res["runs"]["kaiming_fan_in lr=1e-12"]
    for h in bad.values():
        assert h["diverged_epoch"] == 1 and h["diverged_step"] <= 2 and h["epochs_done"] == config.epochs
        assert all(v == "nan" for v in h["train_loss"][1:]) and math.isfinite(h["train_loss"][0])
    assert all(h["diverged_epoch"] is None for h in tiny.values())
    json.dumps(res, allow_nan=False)  # NaN stored as strings: valid JSON
    rows = {r["key"]: r for r in cifar_report.summary(res)}
    assert rows["kaiming_fan_in lr=1e+30"]["diverged"] == 2 and math.isnan(rows["kaiming_fan_in lr=1e+30"][
        "acc_mean"])
    assert rows["hyperfan_in"]["diverged"] == 0 and 0 <= rows["hyperfan_in"]["acc_min"] <= 1
    assert max(len(line) for line in cifar_report.format_summary(res).splitlines()) <= 90
    import matplotlib
    matplotlib.use("Agg")
    axes = cifar_report.plot_curves(res)
    assert axes[0].get_ylabel() and axes[1].get_ylabel() and "2/2 diverged" in axes[1].get_legend_handles_labels()[
        1][1]


# ------------------------------------------------------------------------------------------ train / resume
def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, tiny_images, monkeypatch):
    config = tiny_config(inits=("hyperfan_in", "hyperfan_out"))
    full = cifar.run(config, images=tiny_images, progress=False)
    assert [full["runs"]["hyperfan_in"]["0"]["lr"][e] for e in (1, 2)] == [0.05, 0.05]
    assert full["runs"]["hyperfan_in"]["0"]["lr"][3] == pytest.approx(0.005)  # x0.1 after epoch 2

    step, calls = cifar_training.StackedSeeds.step, {"n": 0}

    def crash_in_second_arm(self, *args):  # a Colab disconnect in epoch 2 of the second arm
        calls["n"] += 1
        if calls["n"] == 3 * 4 + 4 + 2:
            raise KeyboardInterrupt
        return step(self, *args)

    checkpoint = results_io.Checkpoint(tmp_path / "run.ckpt", config)
    monkeypatch.setattr(cifar_training.StackedSeeds, "step", crash_in_second_arm)
    with pytest.raises(KeyboardInterrupt):
        cifar.run(config, images=tiny_images, progress=False, checkpoint=checkpoint)
    monkeypatch.setattr(cifar_training.StackedSeeds, "step", step)
    assert checkpoint.label == "hyperfan_out epoch 1"
    resumed = cifar.run(config, images=tiny_images, progress=False,
                        checkpoint=results_io.Checkpoint(tmp_path / "run.ckpt", config))
    assert _json(resumed) == _json(full)
    with pytest.raises(results_io.ResultsError, match="another config"):
        results_io.Checkpoint(tmp_path / "run.ckpt", config.replace(lr=0.01)).load()


CLI_TINY = ["cifar", "--preset", "quick", "--no-progress", "--device", "cpu", "--set", "n_train=400",
            "n_test=20", "width=2", "chunk_size=2", "hidden_size=3", "embedding_dim=2", "batch_size=20",
            "epochs=4", "inits=hyperfan_in,hyperfan_out", "log_every=5", "seeds=0,1"]


def test_command_line_sigint_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A real SIGINT after the first checkpoint, then --resume: the same results as one uninterrupted run;
    the results file is named by the config hash and records the data used."""
    first, _ = check_interrupt_resume(CLI_TINY, tmp_path, timeout=120)
    assert first["data"] == {"source": "mnist_standin"}
    assert first["results"]["data"]["label"] == cifar_data.STANDIN_LABEL
    assert len(first["results"]["runs"]["hyperfan_out"]["1"]["step"]) == 16
    (path,) = (tmp_path / "interrupted").glob("cifar_quick_*.json")
    config = skeleton.make_config(cifar.EXPERIMENT, "quick", CLI_TINY[7:])
    assert path.stem == f"cifar_quick_{results_io.config_hash(config)}"


def test_command_line_refuses_bad_values_and_an_existing_checkpoint(tmp_path):
    bad = run_cli(CLI_TINY + ["mixed_precision=maybe", "--out", tmp_path], timeout=120)
    assert bad.returncode == 2 and "mixed_precision" in bad.stderr and "Traceback" not in bad.stderr
    config = skeleton.make_config(cifar.EXPERIMENT, "quick", CLI_TINY[7:])
    _, ckpt = skeleton.paths(cifar.EXPERIMENT, "quick", config, tmp_path)
    results_io.Checkpoint(ckpt, config, {"source": "mnist_standin"}).save({"done": {}, "current": None}, "x")
    refused = run_cli(CLI_TINY + ["--out", tmp_path], timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "--rerun" in refused.stderr


def test_cpu_training_step_is_fast():
    """One SGD step of the quick preset's hypernet and mainnet on a batch of 100 images (typically ~0.1 s)."""
    config = cifar.get_config("quick")
    model = cifar_training.build_model(config, "hyperfan_in")
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    x, y = torch.randn(100, 3, 32, 32), torch.randint(0, 10, (100,))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    assert sorted(times)[1] < 2.0
