"""Chapter 9: the regression tasks, the output regularizer and the batched continual-learning runner."""
import argparse
import dataclasses
import math

import numpy as np
import pytest
import torch

from hyperinit_lite import __main__ as cli
from hyperinit_lite import mainnet_forward
from hyperinit_lite.experiments import continual as C
from hyperinit_lite.experiments import continual_model as model
from hyperinit_lite.experiments import continual_report as report
from hyperinit_lite.experiments import continual_training as training
from hyperinit_lite.experiments import skeleton
from hyperinit_lite.regression_data import INTERVALS, make_task, make_tasks, task_function
from hyperinit_lite.results import as_array, load_or_run

from cli_harness import check_interrupt_resume


def tiny(**overrides):
    args = dict(name="tiny", inits=("xavier", "hyperfan_in"), learning_rates=(1e-2, 1e-3), runs=2, iterations=6,
                record_every=2, batch_size=8, adam_runs=0)
    args.update(overrides)
    return C.ContinualConfig(**args)


# ------------------------------------------------------------------------------------------------- data
def test_tasks_shapes_intervals_and_test_grid():
    tasks = make_tasks()
    assert [t.name for t in tasks] == ["x + 3", "2x^2 - 1", "(x - 3)^3"]
    for task, (low, high) in zip(tasks, INTERVALS):
        assert task.x_train.shape == task.y_train.shape == (100, 1)
        assert task.x_test.shape == task.y_test.shape == (50, 1)
        assert task.x_train.dtype == torch.float32
        assert low <= task.x_train.min() and task.x_train.max() <= high
        assert task.x_test[0, 0] == low and task.x_test[-1, 0] == high
        assert torch.allclose(task.x_test.diff(dim=0), torch.full((49, 1), (high - low) / 49), atol=1e-6)
    assert INTERVALS == ((-4, -2), (-1, 1), (2, 4))


def test_tasks_are_deterministic_and_depend_on_the_seed():
    a, b, c = make_task(2, seed=42), make_task(2, seed=42), make_task(2, seed=7)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    # the reference code's recipe: RandomState(seed), uniform inputs first, then the noise
    rng = np.random.RandomState(42)
    x = rng.uniform(2.0, 4.0, size=(100, 1))
    y = (x - 3.0) ** 3 + rng.normal(0.0, 0.05, size=(100, 1))
    assert np.allclose(a.x_train.numpy(), x, atol=1e-6) and np.allclose(a.y_train.numpy(), y, atol=1e-5)


def test_noise_only_on_training_targets():
    n, std = 100, 0.05
    for t, task in enumerate(make_tasks(noise_std=std)):
        assert torch.allclose(task.y_test, task_function(t, task.x_test), atol=1e-6)
        noise = (task.y_train - task_function(t, task.x_train)).double()
        assert noise.abs().max() > 1e-3
        # sample mean within 6 standard errors of 0; sample std within 6 of its standard errors (1/sqrt(2n))
        assert abs(noise.mean().item()) < 6 * std / math.sqrt(n)
        assert abs(noise.std().item() / std - 1) < 6 / math.sqrt(2 * n)
    clean = make_task(1, noise_std=0.0)
    assert torch.allclose(clean.y_train, task_function(1, clean.x_train), atol=1e-6)


def test_data_bad_input():
    with pytest.raises(ValueError, match="task must be one of 0, 1, 2"):
        make_task(3)
    with pytest.raises(ValueError, match="n_train"):
        make_task(0, n_train=0)
    with pytest.raises(ValueError, match="noise_std"):
        make_task(0, noise_std=-1.0)


# ------------------------------------------------------------------------------------------ regularizer
def test_output_regularizer_formula():
    generated = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0, 3.0], [1.0, 0.0, -1.0]])
    # (0 + 4 + 0) + (1 + 0 + 4), divided by T - 1 = 2 earlier tasks
    assert model.output_regularizer(generated, targets).item() == pytest.approx(4.5)
    assert model.output_regularizer(torch.zeros(0, 3), torch.zeros(0, 3)).item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        model.output_regularizer(generated, targets[:1])


def test_objective_adds_beta_times_regularizer_and_vanishes_at_the_targets():
    config = tiny()
    hn = model.init_hypernet(config, "hyperfan_in", 0)
    params = {k: v.detach() for k, v in hn.named_parameters() if k not in model.EMBEDDING_KEYS}
    emb = model.initial_embeddings(config, 0)
    task = make_task(2)
    x, y = task.x_train[:8], task.y_train[:8]
    plain, mse0 = model.make_objective(hn, 0)(params, emb[2], emb[:0], torch.zeros(0, 141), x, y, 0.005)
    targets = torch.stack([model.flatten_generated(*model.generate(hn, params, emb[j])) for j in range(2)])
    assert targets.shape == (2, 141)  # 10 + 100 + 10 weights, 10 + 10 + 1 biases
    assert torch.equal(model.generate_flat(hn, params, emb[1]), targets[1])
    objective = model.make_objective(hn, 2)
    at_targets, mse = objective(params, emb[2], emb[:2], targets, x, y, 0.005)
    assert at_targets.item() == pytest.approx(plain.item(), rel=1e-6) and mse.item() == pytest.approx(mse0.item())
    shifted = targets + torch.linspace(-1, 1, 141)
    value, _ = objective(params, emb[2], emb[:2], shifted, x, y, 0.005)
    expected = mse.item() + 0.005 * (torch.linspace(-1, 1, 141) ** 2).sum().item() * 2 / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # and the mainnet is the one generated from the current embedding
    w, b = model.generate(hn, params, emb[2])
    assert mse.item() == pytest.approx(((mainnet_forward(x, w, b, "relu") - y) ** 2).mean().item(), rel=1e-6)


def test_flatten_and_unflatten_are_inverse():
    hn = model.init_hypernet(tiny(), "xavier", 1)
    w, b = hn(hn.weight_embeddings[:1].expand(3, 2), hn.weight_embeddings[:1].expand(3, 2))
    w2, b2 = model.unflatten_generated(model.flatten_generated(w, b), hn.shapes)
    assert all(torch.equal(p, q) for p, q in zip(w + b, w2 + b2))


# ---------------------------------------------------------------------------------------------- training
def adam_delta(optimizer, param):
    """The step torch.optim.Adam would take on ``param`` with its current gradient, state left unchanged
    (what the reference code's ``calc_delta_theta`` computes for the look-ahead)."""
    state = optimizer.state[param]
    step = int(state["step"]) + 1 if state else 1
    m = state["exp_avg"] if state else torch.zeros_like(param)
    v = state["exp_avg_sq"] if state else torch.zeros_like(param)
    (b1, b2), lr, g = training.ADAM_BETAS, optimizer.param_groups[0]["lr"], param.grad
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    return -lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + training.ADAM_EPS)


def plain_loop(config, init, lr, run, optimizer):
    """One run with nn.Module calls, autograd and torch.optim: what the batched runner must reproduce. With
    ``config.lookahead``, the reference code's order: task loss backward, embedding step, penalty evaluated at
    theta + the pending step (detached), backward, theta step."""
    hn = model.init_hypernet(config, init, run)
    emb = model.initial_embeddings(config, run)
    tasks = make_tasks(config.n_train, config.n_test, config.noise_std, config.data_seed)
    names = [k for k, _ in hn.named_parameters() if k not in model.EMBEDDING_KEYS]
    params = [p for k, p in hn.named_parameters() if k not in model.EMBEDDING_KEYS]
    recs = sorted(set(range(0, config.iterations + 1, config.record_every)) | {config.iterations})
    losses, test = torch.full((3, len(recs)), math.nan), torch.full((3, 3), math.nan)
    act = config.mainnet_activation
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam

    def gen(e, theta=None):
        e = e.expand(3, 2)
        if theta is None:
            return hn(weight_embeddings=e, bias_embeddings=e)
        return torch.func.functional_call(hn, theta, (), {"weight_embeddings": e, "bias_embeddings": e})

    def penalty(targets, theta=None):
        return sum(((model.flatten_generated(*gen(emb[j], theta)) - targets[j]) ** 2).sum()
                   for j in range(len(targets))) / len(targets)

    for t, task in enumerate(tasks):
        with torch.no_grad():
            targets = [model.flatten_generated(*gen(emb[j])) for j in range(t)]
        e = emb[t].clone().requires_grad_()
        opt, opt_e = make(params, lr=lr), make([e], lr=lr)
        idx = training.batch_indices(config, run, t, config.iterations)
        for it in range(config.iterations + 1):
            if it in recs:
                with torch.no_grad():
                    out = mainnet_forward(task.x_train, *gen(e), act)
                    losses[t, recs.index(it)] = ((out - task.y_train) ** 2).mean()
            if it == config.iterations:
                break
            opt.zero_grad()
            opt_e.zero_grad()
            out = mainnet_forward(task.x_train[idx[it]], *gen(e), act)
            loss = ((out - task.y_train[idx[it]]) ** 2).mean()
            if t and not config.lookahead:
                loss = loss + config.beta_output * penalty(targets)
            loss.backward()
            opt_e.step()
            if t and config.lookahead:
                delta = [adam_delta(opt, p) if optimizer == "adam" else -lr * p.grad for p in params]
                ahead = {k: p + d.detach() for k, p, d in zip(names, params, delta)}
                (config.beta_output * penalty(targets, ahead)).backward()
            opt.step()
        emb[t] = e.detach()
        with torch.no_grad():
            for j in range(t + 1):
                out = mainnet_forward(tasks[j].x_test, *gen(emb[j]), act)
                test[t, j] = ((out - tasks[j].y_test) ** 2).mean()
    return losses, test


def check_against_plain_loop(config, optimizer):
    out = training.train_runs(config, config.inits, config.learning_rates, optimizer, config.iterations,
                              config.runs, device="cpu", progress=False)
    tol = dict(rtol=1e-4, atol=1e-6)  # float32 rounding differs between the batched and the plain computation
    for i, init in enumerate(config.inits):
        for l, lr in enumerate(config.learning_rates):
            for r in range(config.runs):
                losses, test = plain_loop(config, init, lr, r, optimizer)
                torch.testing.assert_close(out["train_loss"][i, l, r], losses, **tol)
                torch.testing.assert_close(out["test_mse"][i, l, r], test, equal_nan=True, **tol)
    assert (out["diverged_task"] == -1).all()
    # the training actually moved: the losses are not all equal to the one at initialization
    assert not torch.allclose(out["train_loss"][..., 0, -1], out["train_loss"][..., 0, 0])
    return out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_runs_equal_a_plain_loop(optimizer):
    # With Adam, the regularizer is left out: at the start of a task its gradient is zero up to rounding,
    # and Adam's normalized step turns such rounding noise on otherwise gradient-free parameters (dead ReLU
    # units) into full steps of size lr. SGD checks the regularizer's gradient.
    config = tiny(iterations=5, beta_output=0.005 if optimizer == "sgd" else 0.0)
    out = check_against_plain_loop(config, optimizer)
    assert out["train_loss"].shape == (2, 2, 2, 3, 4) and out["record_iterations"] == [0, 2, 4, 5]
    assert out["test_mse"].shape == (2, 2, 2, 3, 3) and out["predictions"].shape == (2, 2, 2, 3, 50)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_reference_model_with_lookahead_equals_a_plain_loop(optimizer):
    # sigmoid networks, N(0, 1) embeddings, epoch batches, the penalty's gradient after the pending step
    config = C.get_config("reference", inits=("xavier",), learning_rates=(1e-2,), runs=2, iterations=5,
                          record_every=2, batch_size=8, adam_runs=0, beta_output=0.5)
    check_against_plain_loop(config, optimizer)
    # the look-ahead changes the run: the same config without it ends elsewhere
    plain = dataclasses.replace(config, lookahead=False)
    a, b = (training.train_runs(c, ("xavier",), (1e-2,), optimizer, 5, 1, "cpu", progress=False)["train_loss"]
            for c in (config, plain))
    assert torch.equal(a[..., 0, :], b[..., 0, :]) and not torch.equal(a[..., 2, -1], b[..., 2, -1])


def test_model_options_reach_the_model():
    ref = C.get_config("reference")
    assert (ref.mainnet_activation, ref.hypernet_activation, ref.embedding_distribution, ref.lookahead,
            ref.batching, ref.xavier_mode, ref.adam_init, ref.adam_lr, ref.adam_iterations, ref.data_seed) == (
        "sigmoid", "sigmoid", "normal", True, "epoch", "harmonic", "xavier", 1e-2, 4001, 42)
    hn = model.init_hypernet(ref, "xavier", 0)
    assert hn.body_activation == "sigmoid"
    # Xavier-uniform (harmonic) with zero biases on every hypernet matrix
    for layer in [*hn.body, *hn.weight_heads, *hn.bias_heads]:
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        assert layer.weight.abs().max() <= bound and (layer.bias == 0).all()
    normal = torch.cat([model.initial_embeddings(ref, r) for r in range(300)])
    uniform = torch.cat([model.initial_embeddings(C.PRESETS["paper"], r) for r in range(300)])
    assert uniform.abs().max() <= math.sqrt(3) < normal.abs().max()
    assert abs(normal.var().item() - 1) < 0.15 and abs(uniform.var().item() - 1) < 0.15
    # epoch batching: each epoch's 100 points are a permutation; independent batching draws afresh
    idx = training.batch_indices(ref, 0, 0, 25)                       # 25 x 32 = 8 epochs of 100
    assert all(sorted(chunk.tolist()) == list(range(100)) for chunk in idx.reshape(-1, 100))
    ind = training.batch_indices(C.PRESETS["paper"], 0, 0, 25)
    assert all(len(set(row.tolist())) == 32 for row in ind)
    assert not all(sorted(c.tolist()) == list(range(100)) for c in ind.reshape(-1, 100))
    # the sigmoid mainnet is the one the runner evaluates
    stats = model.initial_statistics(ref, "xavier", 2)
    w, b = model.generate(hn, dict(hn.named_parameters()), model.initial_embeddings(ref, 0)[0])
    data = make_tasks()[0]
    expected = ((mainnet_forward(data.x_train, w, b, "sigmoid") - data.y_train) ** 2).mean()
    assert stats["loss"][0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_optimizer_step_formulas():
    g = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    lr = torch.tensor([0.1, 0.01])
    step, _ = training.optimizer_step("sgd", g, None, 1, lr)
    torch.testing.assert_close(step, torch.tensor([[-0.2, 0.1], [-0.005, 0.0]]))
    zeros = (torch.zeros_like(g), torch.zeros_like(g))
    step, (m, v) = training.optimizer_step("adam", g, zeros, 1, lr)     # first Adam step: -lr sign(g)
    torch.testing.assert_close(step, torch.tensor([[-0.1, 0.1], [-0.01, 0.0]]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m, 0.1 * g)
    torch.testing.assert_close(v, 0.001 * g * g)


def test_absurd_learning_rate_is_recorded_as_diverged_without_exception():
    config = tiny(learning_rates=(1e3, 1e-3), iterations=10, record_every=5)
    out = training.train_runs(config, config.inits, config.learning_rates, "sgd", 10, config.runs, "cpu",
                              progress=False)
    bad, good = out["diverged_task"][:, 0], out["diverged_task"][:, 1]
    assert (bad >= 0).all() and (good == -1).all()
    assert (out["diverged_iteration"][:, 0] >= 0).all()
    assert torch.isnan(out["train_loss"][:, 0, :, -1, -1]).all() and torch.isnan(out["predictions"][:, 0]).all()
    assert torch.isfinite(out["train_loss"][:, 1]).all() and torch.isfinite(out["predictions"][:, 1]).all()
    best, criterion = C.select_learning_rate(out["train_loss"][0], config.learning_rates)
    assert best == 1 and criterion["diverged_runs"] == [2, 0]


def test_select_learning_rate_prefers_no_divergence_then_smaller_final_loss():
    loss = np.ones((3, 2, 3, 4))
    loss[0, 0, 1, -1] = np.nan        # lr 0: smallest loss but one diverged run
    loss[0, :, :, -1] *= 0.01
    loss[2, :, :, -1] = 0.5           # lr 2: smaller than lr 1
    best, criterion = C.select_learning_rate(loss.tolist(), (1e-2, 1e-3, 1e-4))
    assert best == 2 and criterion["diverged_runs"] == [1, 0, 0]


def test_forgetting_and_after_learning():
    test = np.full((1, 3, 3), np.nan)
    test[0, 0, 0], test[0, 1, :2], test[0, 2] = 0.1, [0.2, 0.05], [0.4, 0.5, 0.01]
    assert after_learning_list(test) == [0.1, 0.05, 0.01]
    np.testing.assert_allclose(report.forgetting(test)[0], [4.0, 10.0, 1.0])


def after_learning_list(test):
    return report.after_learning(test)[0].tolist()


# ------------------------------------------------------------------------------------ configs and results
def test_presets_and_validation_errors():
    assert set(C.PRESETS) == {"quick", "paper", "reference"}
    paper = C.PRESETS["paper"]
    assert (paper.optimizer, paper.iterations, paper.batch_size, paper.runs, paper.record_every) == (
        "sgd", 6000, 32, 15, 100)
    assert paper.learning_rates == (1e-2, 1e-3, 1e-4, 1e-5) and paper.beta_output == 0.005
    assert (paper.adam_lr, paper.adam_iterations, paper.adam_init) == (1e-2, 4001, "hyperfan_in")
    assert (paper.mainnet_activation, paper.embedding_distribution, paper.lookahead) == ("relu", "uniform", False)
    assert C.adam_betas(C.PRESETS["reference"])[0] == 0.005 and 0.0 in C.adam_betas(C.PRESETS["reference"])
    assert C.get_config("quick", runs=2).runs == 2
    with pytest.raises(ValueError, match="preset must be one of 'quick', 'paper', 'reference'; got 'fast'"):
        C.get_config("fast")
    with pytest.raises(ValueError, match="inits must be one of 'xavier', .*'hyperfan_out'; got 'lecun'"):
        tiny(inits=("xavier", "lecun"))
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adam'"):
        tiny(optimizer="rmsprop")
    with pytest.raises(ValueError, match="learning_rates"):
        tiny(learning_rates=(1e-2, -1.0))
    with pytest.raises(ValueError, match="batch_size"):
        tiny(batch_size=101)
    with pytest.raises(ValueError, match="xavier_mode"):
        tiny(xavier_mode="avg")
    with pytest.raises(ValueError, match="mainnet_activation must be one of 'relu', 'tanh', 'sigmoid'"):
        tiny(mainnet_activation="gelu")
    with pytest.raises(ValueError, match="embedding_distribution"):
        tiny(embedding_distribution="cauchy")
    with pytest.raises(ValueError, match="batching"):
        tiny(batching="sometimes")
    with pytest.raises(ValueError, match=r"betas\[1\] must be >= 0"):
        tiny(betas=(0.1, -1.0))
    with pytest.raises(ValueError, match="hyperfan_in.*hypernet_activation=.sigmoid."):
        tiny(hypernet_activation="sigmoid")
    with pytest.raises(ValueError, match="init must be one of"):
        model.init_hypernet(tiny(), "orthogonal", 0)
    with pytest.raises(ValueError, match="mainnet_activation must be one of 'relu'"):
        model.predicted_generated_variances(C.PRESETS["reference"], "xavier")


def test_results_reload_from_json_with_nans(tmp_path):
    config = tiny(inits=("kaiming_fan_in", "hyperfan_out"), learning_rates=(1e3, 1e-2), iterations=4,
                  adam_runs=1, adam_iterations=3, betas=(0.0,))
    calls = []

    def run(c):
        calls.append(c)
        return C.run(c, device="cpu", progress=False)

    path = tmp_path / "continual_tiny.json"
    first = load_or_run(path, config, run)
    second = load_or_run(path, config, run)
    assert len(calls) == 1 and first == second
    assert "nan" in str(first["sweep"]["train_loss"])          # NaNs of diverged runs survive the round trip
    assert np.isnan(as_array(first["sweep"]["train_loss"])[0, 0]).any()
    rows = report.summary(second)
    assert [r["init"] for r in rows] == ["kaiming_fan_in", "hyperfan_out"] and all(r["lr"] == 1e-2 for r in rows)
    assert report.divergence(second)["kaiming_fan_in"][1000.0][0] == 2
    assert (rows[0]["diverged_runs"], rows[1]["diverged_runs"]) == (2, 0)    # every kaiming_fan_in run diverged
    test = report.sweep_test_mse(second, "hyperfan_out")                          # at its chosen lr 1e-2
    assert rows[1]["final_test_mse"] == pytest.approx(test[:, -1].mean(axis=0).tolist())
    assert rows[1]["test_after_learning"] == pytest.approx([test[:, t, t].mean() for t in range(3)])
    table = report.markdown_summary(second).splitlines()
    assert len(table) == 4 and table[3].startswith("| hyperfan-out | 1e-02") and table[3].endswith("| 0/2 |")
    final = report.final_train_loss(second)
    assert final["kaiming_fan_in"][1000.0][1:] == (0, 2) and final["hyperfan_out"][0.01][1:] == (2, 2)
    assert "**" in report.markdown_final_loss(second).splitlines()[3]
    assert second["adam_betas"] == [0.005, 0.0] and report.adam_test_mse(second, 0.0).shape == (1, 3, 3)
    assert report.markdown_test_mse({"a": report.adam_test_mse(second)}).splitlines()[-1] == "| runs | 1/1 |"
    x, mean, sem = report.curves(second, "hyperfan_out")
    assert x.shape == mean.shape == sem.shape == (3 * 3,)


def test_command_line_is_wired():
    parser = argparse.ArgumentParser()
    skeleton.add_arguments(parser, C.EXPERIMENT)
    args = parser.parse_args(["--preset", "reference", "--device", "cuda", "--out", "x", "--rerun",
                              "--set", "runs=2", "--set", "inits=xavier,hyperfan_in"])
    assert (args.preset, args.device, args.out, args.rerun) == ("reference", "cuda", "x", True)
    assert args.overrides == ["runs=2", "inits=xavier,hyperfan_in"]
    assert "continual" in cli.available_commands() and C.EXPERIMENT.presets is C.PRESETS
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "huge"])


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path):
    # checkpoints after each task of each part: SIGINT after the first, --resume, compare with a plain run
    args = ["continual", "--device", "cpu", "--no-progress", "--set", "inits=xavier", "--set",
            "learning_rates=0.01", "--set", "runs=1", "--set", "iterations=150", "--set", "record_every=100",
            "--set", "adam_runs=1", "--set", "adam_iterations=50"]
    first, _ = check_interrupt_resume(args, tmp_path, timeout=120)
    assert first["results"]["adam_betas"] == [0.005]


def test_tasks_are_served_by_the_data_module():
    from hyperinit_lite import data
    torch.testing.assert_close(data.make_tasks()[2].x_train, make_tasks()[2].x_train)
