"""Tests of the DIMAML experiment models, data, runners and command line (Chapter 12)."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hyperinit_lite import dimaml_tasks as tasks
from hyperinit_lite.dimaml import LearnedInitializer, load_initializer, save_initializer
from hyperinit_lite.experiments import autoencoder as ae
from hyperinit_lite.experiments import char_lstm as cl
from hyperinit_lite.experiments.meta_training import train_steps
from hyperinit_lite.meta_unroll import InnerOptimizer
from cli_harness import check_interrupt_resume


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


def test_config_errors_list_valid_names():
    with pytest.raises(ValueError, match="inits entry must be one of 'kaiming', 'orthogonal'"):
        ae.AutoencoderConfig(inits=("kaiming", "fixup"))
    with pytest.raises(ValueError, match="inits entry must be one of 'baseline'"):
        cl.LSTMConfig(inits=("kaiming",))
    with pytest.raises(ValueError, match="name must be one of"):
        tasks.image_data("cifar")


def test_autoencoder_base_has_true_fans_and_no_relu_gain_on_linear_layers():
    """Issue 13: ``decoder.7``, ``ConvTranspose2d(8, 1, 4)``, weight ``(8, 1, 4, 4)``, linear: 1/sqrt(128)."""
    stds = ae.base_stds(tasks.ConvAutoencoder(16, channels=8, latent=16))
    assert stds["decoder.7.weight"] == pytest.approx(1 / math.sqrt(8 * 16))  # was sqrt(2 / 16) = 0.354
    assert stds["decoder.4.weight"] == pytest.approx(math.sqrt(2 / (16 * 16)))  # ConvTranspose2d(16, 8, 4)
    assert stds["encoder.7.weight"] == pytest.approx(1 / math.sqrt(16 * 4 * 4))  # linear bottleneck
    assert stds["encoder.0.weight"] == pytest.approx(math.sqrt(2 / 9))


def test_kaiming_autoencoder_starts_near_the_data_scale():
    """With the true fans the untrained reconstruction has the scale of the images (was 1.5-2.9 test MSE)."""
    config = ae.AutoencoderConfig()
    _, test = tasks.image_data("digits", 16)
    net = ae.build(ae.autoencoder_model, config, 0, "cpu")
    ae.initialize(net, "kaiming", {}, config, 0, None).eval()
    with torch.no_grad():
        assert float(F.mse_loss(net(test), test)) < 0.5


def test_orthogonal_baseline_has_orthonormal_rows_with_gain():
    net = ae.orthogonal_(tasks.ConvAutoencoder(16, channels=8, latent=16), torch.Generator().manual_seed(0))
    w = dict(net.named_parameters())["encoder.3.weight"].detach().flatten(1)  # (16, 72): rows orthogonal
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(16), atol=1e-5, rtol=0)
    v = dict(net.named_parameters())["encoder.7.weight"].detach()  # (16, 256), linear: gain 1
    torch.testing.assert_close(v @ v.T, torch.eye(16), atol=1e-5, rtol=0)


def test_mean_image_mse_is_the_pixel_variance_about_the_training_mean():
    train, test = torch.zeros(4, 1, 2, 2), torch.ones(3, 1, 2, 2)
    assert ae.mean_image_mse(train, test) == 1.0
    train = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    assert ae.mean_image_mse(train, train) == 0.25


def test_lstm_baseline_is_per_gate_one_over_sqrt_hidden():
    model = cl.lstm_model(cl.LSTMConfig(embed=4, hidden=9))
    init = LearnedInitializer(model, "normal", base=cl.base_stds(model), biases=True)
    assert init.dist("embedding.weight").scale == 1.0
    for layer in ("l0", "l1"):
        for kind in ("ih", "hh"):
            dist = init.dist(f"lstm.weight_{kind}_{layer}")
            assert len(dist.parts) == 4 and dist.scale == pytest.approx(1 / 3)
    assert init.dist("logits.weight").scale == pytest.approx(1 / 3)
    assert "lstm.bias_ih_l0" in init.names and "logits.bias" in init.names


def test_saved_initializer_initializes_a_fresh_model(tmp_path):
    model = tasks.ConvAutoencoder(8, channels=4, latent=8)
    init = LearnedInitializer(model, "plif", n_pieces=10, biases=True)
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
    out = train_steps(model, names, batches, F.mse_loss, InnerOptimizer("sgd", lr=0.01),
                      lambda m: F.mse_loss(m(data), data), [3], target_rates=target)
    assert out["rates"] == target and out["diverged"] is None and math.isfinite(out["evals"][0])


def test_diverged_run_is_recorded_not_raised():
    model = tasks.ConvAutoencoder(8, channels=2, latent=4)
    data = torch.full((4, 1, 8, 8), float("nan"))
    out = train_steps(model, [], [(data, data)] * 2, F.mse_loss, InnerOptimizer("sgd"), lambda m: 0.0, [1, 2])
    assert out["diverged"] == 0 and all(math.isnan(v) for v in out["evals"])


def test_corpora_come_from_disjoint_modules():
    assert not set(tasks.DOCSTRING_MODULES) & set(tasks.SOURCE_MODULES)


def test_paper_presets_follow_published_inner_loops():
    a, lm = ae.PRESETS["paper"], cl.PRESETS["paper"]
    assert (a.inner_steps, a.lr, a.momentum, a.batch_size, a.checkpoint_every) == (600, 0.01, 0.9, 128, 15)
    assert a.val_steps == tuple(range(200, 601, 50)) and a.meta_steps == 1500 and a.plif_meta_steps == 3000
    assert (lm.embed, lm.hidden, lm.inner_steps, lm.lr, lm.batch_size, lm.meta_steps) == \
        (128, 256, 200, 1e-3, 128, 3000)


TINY_LSTM = dict(embed=4, hidden=8, seq_len=8, batch_size=4, inner_steps=2, val_steps=(2,), meta_steps=2,
                 meta_seeds=2, eval_corpora=("source",), eval_steps=(2,), reruns=2)


def test_lstm_run_is_deterministic_whatever_the_global_rng():
    config = dataclasses.replace(cl.LSTMConfig(), **TINY_LSTM)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # must not matter
        runs.append(cl.run(config, "cpu", progress=False))
    assert runs[0]["meta"]["normal seed 1"]["meta_loss"] == runs[1]["meta"]["normal seed 1"]["meta_loss"]
    assert runs[0]["evaluation"] == runs[1]["evaluation"]
    assert len(runs[0]["evaluation"]["source"]["runs"]["dimaml-normal"]) == 2


def test_autoencoder_interrupt_then_resume_equals_uninterrupted(tmp_path):
    check_interrupt_resume(["autoencoder", "--no-progress", "--set", "size=8", "channels=2", "latent=4",
                            "inner_steps=3", "val_steps=2,3", "meta_steps=5", "plif_meta_steps=0",
                            "save_every=1",
                            "inits=kaiming,dimaml-normal", "eval_data=digits", "epochs=1", "reruns=1",
                            "transfer_rates=false"], tmp_path)


def test_char_lstm_interrupt_then_resume_equals_uninterrupted(tmp_path):
    check_interrupt_resume(["char-lstm", "--no-progress", "--set", "embed=4", "hidden=8", "seq_len=8",
                            "batch_size=4", "inner_steps=3", "val_steps=3", "meta_steps=4", "save_every=1",
                            "meta_seeds=2", "eval_corpora=source", "eval_steps=5,20", "reruns=2"], tmp_path)
