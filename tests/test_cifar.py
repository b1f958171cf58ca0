"""The CIFAR-10 experiment of Chapter 10: config checks, data, checkpoint/resume, divergence, CLI, CPU speed."""
import json
import math
import time

import pytest
import torch

from hyperinit_lite import __main__ as cli
from hyperinit_lite import chunked as hc
from hyperinit_lite import data
from hyperinit_lite import results as results_io
from hyperinit_lite.data import DataUnavailableError
from hyperinit_lite.experiments import cifar

TINY = dict(name="tiny", data="mnist_standin", n_train=40, n_test=20, width=2, chunk_size=2, hidden_size=3,
            embedding_dim=2, batch_size=10, epochs=3, milestones=(2,), lr=0.05, log_every=2)


def tiny_config(**changes):
    return cifar.CIFARConfig(**{**TINY, **changes})


@pytest.fixture(scope="module")
def tiny_images():
    """40 + 20 random standardized images: the training loop does not care what they show."""
    g = torch.Generator().manual_seed(0)
    return cifar.ImageSet(torch.randn(40, 3, 32, 32, generator=g), torch.randint(0, 10, (40,), generator=g),
                          torch.randn(20, 3, 32, 32, generator=g), torch.randint(0, 10, (20,), generator=g),
                          "random", "random images (test)", (0.0,) * 3, (1.0,) * 3)


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes, message", [
    (dict(data="imagenet"), "data"),
    (dict(inits=()), "inits"),
    (dict(inits=("hyperfan_in", "hyperfan_in")), "inits"),
    (dict(inits=("xavier",)), "inits"),
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
    (dict(mixed_precision="yes"), "mixed_precision"),
    (dict(seed=-1), "seed"),
    (dict(n_train=0), "n_train"),
])
def test_config_rejects_bad_values_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_presets_and_device_checks():
    paper = cifar.get_config("paper")
    assert (paper.width, paper.chunk_size, paper.hidden_size, paper.embedding_dim) == (96, 96, 50, 50)
    assert (paper.lr, paper.batch_size, paper.epochs, paper.milestones, paper.gamma) == (5e-4, 100, 500,
                                                                                         (350, 450), 0.1)
    assert paper.data == "cifar10" and not paper.mixed_precision and paper.inits == cifar.INITS
    assert cifar.get_config("quick").data == "mnist_standin"
    assert cifar.get_config("quick", epochs=2).epochs == 2
    with pytest.raises(ValueError, match="preset"):
        cifar.get_config("huge")
    with pytest.raises(ValueError, match="device"):
        cifar.check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            cifar.check_device("cuda")
    assert cifar.config_from_args("quick", ["epochs=2", "inits=hyperfan_in,hyperfan_out", "n_test=none",
                                            "milestones=1"]) == cifar.get_config(
        "quick", epochs=2, inits=("hyperfan_in", "hyperfan_out"), n_test=None, milestones=(1,))
    with pytest.raises(ValueError, match="unknown config field"):
        cifar.config_from_args("quick", ["depth=3"])


# --------------------------------------------------------------------------------------------------- data
def test_standin_is_labelled_standardized_and_cifar_shaped():
    images = cifar.load_images("mnist_standin", n_train=500, n_test=100)
    assert images.label == cifar.STANDIN_LABEL and "not CIFAR-10" in images.describe()
    assert images.x_train.shape == (500, 3, 32, 32) and images.x_test.shape == (100, 3, 32, 32)
    assert images.y_train.dtype == torch.int64 and set(images.y_train.unique().tolist()) == set(range(10))
    per_channel = images.x_train.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(images.x_train[:, 0], images.x_train[:, 2])  # grey digits on three channels
    with pytest.raises(ValueError, match="n_train"):
        cifar.load_images("mnist_standin", n_train=10 ** 6)


def test_cifar_offline_fails_fast_and_auto_falls_back(tmp_path, monkeypatch):
    with pytest.raises(DataUnavailableError, match="mnist_standin"):
        cifar.cifar10_images(root=tmp_path, download=False)
    monkeypatch.setattr(data, "probe_url", lambda url, timeout: "no network (test)")
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError, match="cannot be downloaded"):
        cifar.load_images("cifar10", root=tmp_path)
    assert time.perf_counter() - start < 5
    monkeypatch.setattr(cifar, "default_root", lambda: tmp_path)
    with pytest.warns(UserWarning, match="stand-in"):
        images = cifar.load_images("auto", n_train=100, n_test=50)
    assert images.label == cifar.STANDIN_LABEL


# ------------------------------------------------------------------------------------------------- models
def test_model_is_the_hypernet_generated_all_conv_net_and_inits_share_draws():
    config = tiny_config(width=4, chunk_size=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    models = {init: cifar.build_model(config, init) for init in cifar.INITS}
    for model in models.values():
        with torch.no_grad():
            expected = hc.all_conv_net_forward(x, model.hypernet(), model.biases)
            torch.testing.assert_close(model(x), expected)
    ref = models["hyperfan_in"].hypernet
    for init, model in models.items():
        for a, b in zip(model.hypernet.embeddings, ref.embeddings):
            assert torch.equal(a, b), init
        ratio = model.hypernet.input_weights[1] / ref.input_weights[1]  # same draws, another scale
        torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.flatten()[0].item()))
    g_var = {init: hc.chunked_init_variances(m.hypernet, init.replace("kaiming_fan_in", "kaiming").replace(
        "kaiming_fan_out", "kaiming"), "fan_out" if init == "kaiming_fan_out" else "fan_in")[1][0]
        for init, m in models.items()}
    assert g_var["kaiming_fan_in"] == pytest.approx(2 / config.embedding_dim)
    assert g_var["kaiming_fan_out"] == pytest.approx(2 / (config.chunk_size * config.hidden_size))


# ------------------------------------------------------------------------------------------ train / resume
def _same_history(a, b):
    keys = ["train_loss", "test_loss", "test_accuracy", "lr", "step", "step_loss", "diverged_epoch",
            "diverged_step", "epochs_done"]
    assert json.dumps({k: a[k] for k in keys}) == json.dumps({k: b[k] for k in keys})


def _final_state(path):
    return torch.load(path, weights_only=False)["model"]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, tiny_images, monkeypatch):
    config = tiny_config(inits=("hyperfan_in",))
    full = cifar.train_run(config, "hyperfan_in", tiny_images, checkpoint_dir=tmp_path / "a", progress=False)
    assert full["epochs_done"] == 3 and full["diverged_epoch"] is None
    assert full["lr"][1:] == [0.05, 0.05, pytest.approx(0.005)]  # x0.1 after epoch 2
    assert full["step"] == list(range(2, 13, 2)) and all(math.isfinite(v) for v in full["test_loss"])

    forward, calls = cifar.all_conv_net_forward, {"n": 0}

    def crash_in_epoch_2(*args, **kwargs):  # a Colab disconnect in the middle of epoch 2
        calls["n"] += 1
        if calls["n"] == 2 + 4 + 1 + 2:  # 2 evaluations at init, epoch 1 (4 steps + 1 test batch), 2 steps
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(cifar, "all_conv_net_forward", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        cifar.train_run(config, "hyperfan_in", tiny_images, checkpoint_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(cifar, "all_conv_net_forward", forward)
    assert torch.load(tmp_path / "b" / "hyperfan_in.pt", weights_only=False)["epoch"] == 1
    resumed = cifar.train_run(config, "hyperfan_in", tiny_images, checkpoint_dir=tmp_path / "b", resume=True,
                              progress=False)
    _same_history(full, resumed)
    a, b = _final_state(tmp_path / "a" / "hyperfan_in.pt"), _final_state(tmp_path / "b" / "hyperfan_in.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the same in sessions of one epoch (--until-epoch), and a finished run is not trained again
    for stop in (1, 2, 3, 3):
        split = cifar.train_run(config, "hyperfan_in", tiny_images, checkpoint_dir=tmp_path / "c", resume=True,
                                until_epoch=stop, progress=False)
        assert split["epochs_done"] == stop
    _same_history(full, split)
    with pytest.raises(ValueError, match="another config"):
        cifar.train_run(config.replace(lr=0.01), "hyperfan_in", tiny_images, checkpoint_dir=tmp_path / "c",
                        resume=True, progress=False)


def test_diverged_run_is_recorded_and_the_others_go_on(tiny_images):
    config = tiny_config(inits=("kaiming_fan_in", "hyperfan_in"), lr=1e30, milestones=())
    res = cifar.run(config, images=tiny_images, progress=False)
    bad, good = res["runs"]["kaiming_fan_in"], res["runs"]["hyperfan_in"]
    assert bad["diverged_epoch"] == 1 and bad["diverged_step"] >= 2 and bad["epochs_done"] == config.epochs
    assert all(math.isnan(v) for v in bad["train_loss"][1:]) and math.isfinite(bad["train_loss"][0])
    res_ok = cifar.run(config.replace(lr=0.05), images=tiny_images, progress=False)
    assert res_ok["runs"]["hyperfan_in"]["diverged_epoch"] is None and res_ok["complete"]
    assert good["epochs_done"] == config.epochs
    stored = results_io.to_jsonable(res)
    json.dumps(stored, allow_nan=False)  # NaN stored as strings: valid JSON
    rows = {r["init"]: r for r in cifar.summary(stored)}
    assert rows["kaiming_fan_in"]["diverged_epoch"] == 1 and rows["kaiming_fan_in"]["last_epoch"] == 0
    assert "epoch 1, step" in cifar.format_summary(stored)


def test_command_line_trains_saves_and_reloads(tmp_path, capsys):
    argv = ["cifar", "--preset", "quick", "--out", str(tmp_path), "--no-progress", "--set", "n_train=40",
            "n_test=20", "width=2", "chunk_size=2", "hidden_size=3", "embedding_dim=2", "batch_size=20",
            "epochs=2", "inits=hyperfan_out", "log_every=1"]
    assert cli.main(argv + ["--until-epoch", "1"]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    assert cli.main(argv + ["--resume"]) == 0
    path = tmp_path / "cifar_quick_custom.json"
    stored = json.loads(path.read_text())
    assert stored["results"]["complete"] and stored["results"]["data"]["label"] == cifar.STANDIN_LABEL
    assert len(stored["results"]["runs"]["hyperfan_out"]["step"]) == 4
    assert cli.main(argv) == 0  # reloads: no checkpoint needed
    assert "hyperfan_out" in capsys.readouterr().out


def test_cpu_training_step_is_fast():
    """One SGD step of the quick preset's hypernet and mainnet on a batch of 100 images (typically ~0.1 s)."""
    config = cifar.get_config("quick")
    model = cifar.build_model(config, "hyperfan_in")
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
