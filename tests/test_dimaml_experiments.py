"""Tests of the DIMAML experiment models, data and command line (Chapters 12 and 13)."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from hyperinit_lite import dimaml_tasks as tasks
from hyperinit_lite.__main__ import main as cli_main
from hyperinit_lite.dimaml import LearnedInitializer, load_initializer, save_initializer
from hyperinit_lite.experiments import dimaml as exp


@pytest.mark.parametrize("size", [8, 16, 28])
def test_autoencoder_shapes(size):
    model = tasks.ConvAutoencoder(size, channels=4, latent=8)
    x = torch.rand(5, 1, size, size)
    assert model(x).shape == x.shape
    assert model.encoder(x).shape == (5, 8)


def test_autoencoder_rejects_bad_size():
    with pytest.raises(ValueError, match="size must be divisible by 4"):
        tasks.ConvAutoencoder(10)


def test_char_lstm_shapes_and_uniform_start():
    model = tasks.CharLSTM(embed=8, hidden=16)
    x = torch.randint(0, len(tasks.VOCAB), (3, 7))
    logits = model(x)
    assert logits.shape == (3, 7, len(tasks.VOCAB))
    # with zero logits the loss is exactly ln(vocab): the bpc helper divides by ln 2
    assert tasks.lm_loss(torch.zeros_like(logits), x).item() == pytest.approx(math.log(len(tasks.VOCAB)))


def test_mainnet_of_hypernet_matches_hypernet():
    net = exp.bridge_hypernet(exp.get_config("bridge", width=4, embedding_dim=3))
    x = torch.randn(2, 784)
    assert torch.equal(net(x), net.hypernet.mainnet(x))
    assert LearnedInitializer(net).names == [f"hypernet.weight_heads.{i}.weight" for i in range(3)]


@pytest.mark.parametrize("name", tasks.IMAGE_SETS)
def test_image_data_deterministic_and_in_range(name):
    a_train, a_test = tasks.image_data(name, 8)
    b_train, b_test = tasks.image_data(name, 8)
    assert torch.equal(a_train, b_train) and torch.equal(a_test, b_test)
    assert a_train.shape[1:] == (1, 8, 8) and 0.0 <= float(a_train.min()) and float(a_train.max()) <= 1.0
    assert len(a_train) == (4000 if name.startswith("mnist") else 1438)


def test_shuffled_is_a_fixed_permutation_of_the_original():
    plain, _ = tasks.image_data("digits", 8)
    shuffled, _ = tasks.image_data("digits-shuffled", 8)
    perm = tasks.pixel_permutation(64)
    assert torch.equal(shuffled.flatten(1), plain.flatten(1)[:, perm])
    assert not torch.equal(shuffled, plain)


def test_corpora_deterministic_and_distinct():
    for name in tasks.CORPORA:
        a, b = tasks.corpus(name), tasks.corpus(name)
        assert torch.equal(a[0], b[0]) and len(a[0]) > 8 * len(a[1]) > 0
        assert int(a[0].max()) < len(tasks.VOCAB)
    assert tasks.corpus_text("docstrings")[:200] != tasks.corpus_text("source")[:200]


def test_text_batch_targets_are_next_symbols(gen):
    ids = torch.arange(100)
    x, y = tasks.text_batch(ids, 4, 10, gen)
    assert x.shape == y.shape == (4, 10)
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="seq_len"):
        tasks.text_batch(ids, 4, 100, gen)


def test_get_config_errors_list_valid_names():
    with pytest.raises(ValueError, match="task must be one of 'autoencoder', 'lstm', 'bridge'; got 'resnet'"):
        exp.get_config("resnet")
    with pytest.raises(ValueError, match="preset must be one of 'quick', 'paper'"):
        exp.get_config("lstm", "full")
    with pytest.raises(ValueError, match="name must be one of"):
        tasks.image_data("cifar")
    with pytest.raises(TypeError):
        exp.get_config("bridge", no_such_field=1)


def test_cli_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit):
        cli_main(["dimaml", "--task", "resnet"])
    err = capsys.readouterr().err
    assert "invalid choice: 'resnet'" in err and "autoencoder" in err and "bridge" in err


def test_cli_parses_presets():
    parser = exp.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--task", "lstm", "--preset", "paper"])
    assert (args.task, args.preset, args.device) == ("lstm", "paper", "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "lstm", "--preset", "slow"])


def test_paper_presets_follow_published_inner_loops():
    ae, lm = exp.get_config("autoencoder", "paper"), exp.get_config("lstm", "paper")
    assert (ae.inner_steps, ae.lr, ae.momentum, ae.batch_size, ae.checkpoint_every) == (600, 0.01, 0.9, 128, 15)
    assert ae.val_steps == tuple(range(200, 601, 50)) and ae.meta_steps == 1500 and ae.plif_meta_steps == 3000
    assert (lm.embed, lm.hidden, lm.inner_steps, lm.lr, lm.batch_size) == (128, 256, 200, 1e-3, 128)


def test_saved_initializer_initializes_a_fresh_model(tmp_path):
    model = tasks.ConvAutoencoder(8, channels=4, latent=8)
    init = LearnedInitializer(model, "plif", n_pieces=10)
    with torch.no_grad():
        for p in init.parameters():
            p.add_(0.1)
    path = save_initializer(init, tmp_path / "ae.init.json")
    fresh = load_initializer(path).init_(tasks.ConvAutoencoder(8, channels=4, latent=8),
                                         torch.Generator().manual_seed(0))
    direct = init.init_(tasks.ConvAutoencoder(8, channels=4, latent=8), torch.Generator().manual_seed(0))
    for (name, a), (_, b) in zip(fresh.named_parameters(), direct.named_parameters()):
        if name in init.names:
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        load_initializer(path).init_(tasks.ConvAutoencoder(16, channels=4, latent=8))


def test_transferred_rates_are_matched_exactly(gen):
    model = tasks.ConvAutoencoder(8, channels=2, latent=4)
    names = LearnedInitializer(model).names
    data = torch.rand(8, 1, 8, 8, generator=gen)
    batches = [(data, data)] * 3
    target = {n: [0.1, 0.2, 0.3] for n in names}
    out = exp.train_steps(model, names, batches, F.mse_loss, exp.InnerOptimizer("sgd", lr=0.01),
                          lambda m: F.mse_loss(m(data), data), [3], target_rates=target)
    assert out["rates"] == target and out["diverged"] is None and math.isfinite(out["evals"][0])


def test_diverged_run_is_recorded_not_raised():
    model = tasks.ConvAutoencoder(8, channels=2, latent=4)
    data = torch.full((4, 1, 8, 8), float("nan"))
    out = exp.train_steps(model, [], [(data, data)] * 2, F.mse_loss, exp.InnerOptimizer("sgd"),
                          lambda m: 0.0, [1, 2])
    assert out["diverged"] == 0 and all(math.isnan(v) for v in out["evals"])


def test_bridge_tiny_run_and_cli_roundtrip(tmp_path, capsys):
    overrides = dict(width=4, embedding_dim=3, n_train=200, inner_steps=3, val_steps=(3,), meta_steps=2,
                     batch_size=8, val_batch_size=16, eval_steps=(2,), reruns=1)
    results = exp.run_task("bridge", "quick", tmp_path, progress=False, **overrides)
    path = exp.initializer_paths(tmp_path, "bridge", "quick", results)["dimaml-normal"]
    net = exp.bridge_hypernet(exp.get_config("bridge", **overrides))
    load_initializer(path).init_(net)
    assert set(results["hyperfan"]) == set(LearnedInitializer(net).names)
    assert all(len(v) == 3 for v in results["meta"]["std"].values())
    assert set(results["evaluation"]) == set(exp.BRIDGE_INITS)


def test_bridge_inits_give_the_hyperfan_head_stds():
    config = exp.get_config("bridge", width=8, embedding_dim=16)
    for method in ("in", "out"):
        net = exp.bridge_hypernet(config, f"hyperfan_{method}")
        for name, stds in exp.hyperfan_stds(net.hypernet).items():
            w = dict(net.named_parameters())[name]
            n = w.numel()  # sample std of n normal draws: relative error ~ 1/sqrt(2n); 6 sigma
            assert w.std().item() == pytest.approx(stds[method], rel=6 / math.sqrt(2 * n))
    with pytest.raises(ValueError, match="init must be one of"):
        exp.bridge_hypernet(config, "orthogonal")


def test_corpora_come_from_disjoint_modules():
    assert not set(tasks.DOCSTRING_MODULES) & set(tasks.SOURCE_MODULES)


def test_unknown_init_names_are_rejected():
    with pytest.raises(ValueError, match="inits entry must be one of 'kaiming', 'metainit'"):
        exp.get_config("autoencoder", inits=("kaiming", "fixup"))


def test_lstm_run_is_deterministic_whatever_the_global_rng():
    overrides = dict(embed=4, hidden=8, seq_len=8, batch_size=4, inner_steps=2, val_steps=(2,), meta_steps=2,
                     eval_steps=(2,), reruns=1)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # must not matter
        runs.append(exp.run_task("lstm", "quick", progress=False, **overrides))
    assert runs[0]["meta"]["normal"]["meta_loss"] == runs[1]["meta"]["normal"]["meta_loss"]
    assert runs[0]["evaluation"] == runs[1]["evaluation"]
