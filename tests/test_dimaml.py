"""DIMAML (hyperinit_lite: dimaml, meta_unroll, meta_train) and MetaInit (metainit): Chapter 11."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hyperinit_lite import dimaml as dm
from hyperinit_lite import meta_train as mt
from hyperinit_lite import meta_unroll as mu
from hyperinit_lite.metainit import gradient_quotient, metainit_
from conftest import sample_variance_tolerance


def bn_mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


def task(n_steps, n_val, seed=0, dtype=torch.float32, n_in=6, n_out=3, batch=16):
    """``n_steps`` training batches and ``n_val`` validation batches of a random regression task."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_in, n_out, generator=g, dtype=dtype)

    def draw():
        x = torch.randn(batch, n_in, generator=g, dtype=dtype)
        return x, torch.tanh(x @ w)
    return [draw() for _ in range(n_steps)], [draw() for _ in range(n_val)]


def meta_gradient(init, model, batches, val, val_steps, opt, checkpoint_every=None, mode="reentrant", seed=1):
    init.zero_grad(set_to_none=True)
    mu.reset_batchnorm_(model)
    params = init.sample(model, torch.Generator().manual_seed(seed))
    loss, _, _ = mu.unroll(model, params, batches, val, val_steps, F.mse_loss, opt, checkpoint_every, mode)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in init.parameters()])


# --------------------------------------------------------------------------- distributions
def test_normal_starts_exactly_at_kaiming(gen):
    model = nn.Linear(200, 300)
    init = dm.LearnedInitializer(model, "normal")
    dist = init.dist("weight")
    assert float(dist.std().detach()) == pytest.approx(math.sqrt(2 / 200), rel=1e-6)
    assert float(dist.mean().detach()) == 0.0
    w = init.sample(model, gen)["weight"].detach().double()
    tol = sample_variance_tolerance(w.numel())
    assert float(w.var()) == pytest.approx(2 / 200, rel=tol)
    assert init.names == ["weight"]  # biases keep the model's values


def test_plif_starts_exactly_at_kaiming_uniform():
    """``PLIF.from_uniform`` is torch's ``kaiming_uniform_`` law: ``Q(u) = -b + 2 b u``, ``b = sqrt(6 / fan_in)``."""
    init = dm.LearnedInitializer(nn.Linear(50, 20), "plif")
    dist = init.dist("weight")
    bound = math.sqrt(6 / 50)
    u = torch.rand(10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(dist.quantile(u.float()).double(), -bound + 2 * bound * u, rtol=0, atol=1e-6)
    assert float(dist.std().detach()) == pytest.approx(math.sqrt(2 / 50), rel=1e-5)
    exact = dm.PLIFInit.from_uniform(math.sqrt(2 / 50), n_pieces=7, dtype=torch.float64)
    torch.testing.assert_close(exact.quantile(u), -bound + 2 * bound * u, rtol=0, atol=1e-14)


def test_plif_monotone_for_any_parameters():
    dist = dm.PLIFInit.from_normal(0.1, n_pieces=20, dtype=torch.float64)
    with torch.no_grad():
        dist.raw.copy_(5 * torch.randn(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        dist.first.fill_(-3.0)
    u = torch.linspace(0, 1 - 1e-12, 5001, dtype=torch.float64)
    q = dist.quantile(u)
    assert bool((q.diff() >= 0).all())
    assert bool((dist.knots().diff() > 0).all())


def test_plif_exact_moments_match_samples(gen):
    dist = dm.PLIFInit.from_normal(0.3, n_pieces=10, dtype=torch.float64)
    with torch.no_grad():
        dist.raw.add_(torch.linspace(-1, 1, 10, dtype=torch.float64))  # a skewed shape
    x = dist((200_000,), gen).detach()
    s = float(dist.std().detach())
    assert float(x.mean()) == pytest.approx(float(dist.mean().detach()), abs=6 * s / math.sqrt(x.numel()))
    assert float(x.var()) == pytest.approx(s * s, rel=sample_variance_tolerance(x.numel()))


def test_plif_rejects_non_increasing_knots():
    with pytest.raises(ValueError, match="increasing"):
        dm.PLIFInit([0.0, 0.0, 1.0], 1.0)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="kind must be one of 'normal', 'plif'"):
        dm.LearnedInitializer(nn.Linear(2, 2), "gaussian")


@pytest.mark.parametrize("kind", ["normal", "plif"])
def test_save_load_round_trip(tmp_path, kind):
    model = bn_mlp()
    init = dm.LearnedInitializer(model, kind, n_pieces=8)
    with torch.no_grad():
        for p in init.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    loaded = dm.load_initializer(dm.save_initializer(init, tmp_path / "sub" / "init.json"))
    assert loaded.kind == kind and loaded.names == init.names
    for a, b in zip(init.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    fresh = bn_mlp(seed=5)
    loaded.init_(fresh, torch.Generator().manual_seed(7))
    expected = init.sample(model, torch.Generator().manual_seed(7))
    for name in init.names:
        assert torch.equal(dict(fresh.named_parameters())[name], expected[name].detach())


# --------------------------------------------------------------------------- inner optimizers
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_inner_optimizer_matches_torch_optim(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    batches, val = task(5, 1, dtype=torch.float64)
    opt = mu.InnerOptimizer(name, lr=0.05, weight_decay=0.01)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    _, _, final = mu.unroll(model, params, batches, val, [5], F.mse_loss, opt)
    torch_opt = opt.torch_optimizer(model.parameters())
    for x, y in batches:
        torch_opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        torch_opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(final[n].detach(), p.detach(), rtol=1e-9, atol=1e-12)


def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'momentum', 'nesterov', 'adam'; got 'rmsprop'"):
        mu.InnerOptimizer("rmsprop")
    with pytest.raises(ValueError, match="momentum must be in"):
        mu.InnerOptimizer("momentum", momentum=1.5)


# --------------------------------------------------------------------------- the meta-gradient
@pytest.mark.parametrize("kind,opt_name", [("normal", "momentum"), ("plif", "adam")])
def test_checkpointed_meta_gradient_equals_unchecked(kind, opt_name):
    model = bn_mlp()
    init = dm.LearnedInitializer(model, kind, n_pieces=6)
    batches, val = task(6, 3)
    opt = mu.InnerOptimizer(opt_name, lr=0.05)
    loss0, g0 = meta_gradient(init, model, batches, val, [2, 4, 6], opt)
    assert float(g0.abs().max()) > 0
    for every, mode in [(2, "reentrant"), (4, "reentrant"), (3, "nonreentrant"), (6, "reentrant")]:
        loss, g = meta_gradient(init, model, batches, val, [2, 4, 6], opt, every, mode)
        assert float(loss) == pytest.approx(float(loss0), rel=1e-6)
        torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-6 * float(g0.abs().max()))


@pytest.mark.parametrize("kind,opt_name,every", [("normal", "sgd", None), ("plif", "momentum", 2),
                                                 ("normal", "adam", 2)])
def test_meta_gradient_matches_finite_differences(kind, opt_name, every):
    """Central differences of the meta-loss, float64, same noise: agreement to ~1e-6 relative."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    init = dm.LearnedInitializer(model, kind, n_pieces=4, dtype=torch.float64)
    batches, val = task(4, 2, dtype=torch.float64, n_in=3, n_out=2, batch=8)
    opt = mu.InnerOptimizer(opt_name, lr=0.1)
    _, grad = meta_gradient(init, model, batches, val, [2, 4], opt, every)
    numeric = finite_difference(init, model, batches, val, [2, 4], opt, h=1e-6)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)


def finite_difference(init, model, batches, val, val_steps, opt, h=1e-5):
    """Central differences of the meta-loss in every initializer parameter (same noise, float64)."""
    numeric = []
    with torch.no_grad():
        for p in init.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                values = []
                for sign in (1, -1):
                    flat[i] += sign * h
                    mu.reset_batchnorm_(model)
                    params = init.sample(model, torch.Generator().manual_seed(1))
                    values.append(float(mu.unroll(model, params, batches, val, val_steps, F.mse_loss, opt)[0]))
                    flat[i] -= sign * h
                numeric.append((values[0] - values[1]) / (2 * h))
    return torch.tensor(numeric, dtype=torch.float64)


@pytest.mark.parametrize("every", [None, 4])
def test_meta_gradient_through_batchnorm_matches_finite_differences(every):
    """Issue 13: validation in eval mode uses the running statistics, so they must carry the meta-gradient.

    ``Linear(6,8)-BatchNorm1d-ReLU-Linear(8,3)``, momentum SGD, float64. With detached running statistics the
    first layer's gradient was wrong (8.6e-2 vs -2.4e-4 for its mean).
    """
    model = bn_mlp(dtype=torch.float64)
    init = dm.LearnedInitializer(model, "normal", dtype=torch.float64)
    batches, val = task(8, 2, dtype=torch.float64)
    opt = mu.InnerOptimizer("momentum", lr=0.1, momentum=0.9)
    _, grad = meta_gradient(init, model, batches, val, [4, 8], opt, every)
    numeric = finite_difference(init, model, batches, val, [4, 8], opt)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)
    assert float(model[1].running_mean.abs().max()) == 0.0  # the model's own buffers are untouched


def test_checkpoint_interval_larger_than_inner_loop_is_rejected():
    model = bn_mlp()
    init = dm.LearnedInitializer(model)
    batches, val = task(4, 1)
    params = init.sample(model)
    with pytest.raises(ValueError, match=r"checkpoint_every \(5\) is larger than the inner loop \(inner_steps=4\)"):
        mu.unroll(model, params, batches, val, [4], F.mse_loss, mu.InnerOptimizer(), checkpoint_every=5)
    with pytest.raises(ValueError, match="val_steps must be non-empty and within 1..4"):
        mu.unroll(model, params, batches, val, [5], F.mse_loss, mu.InnerOptimizer())
    with pytest.raises(ValueError, match="checkpoint_mode must be one of"):
        mu.unroll(model, params, batches, val, [4], F.mse_loss, mu.InnerOptimizer(), 2, "sometimes")


def test_inner_divergence_skips_the_meta_step_and_is_counted():
    model = bn_mlp()
    init = dm.LearnedInitializer(model)
    before = [p.detach().clone() for p in init.parameters()]
    batches, val = task(4, 1)
    explode = mu.InnerOptimizer("sgd", lr=1e30)
    with pytest.raises(mu.InnerLoopDiverged, match="non-finite at step"):
        mu.unroll(model, init.sample(model), batches, val, [4], F.mse_loss, explode)
    hist = mt.meta_train(init, model, lambda g: (batches, val), F.mse_loss, explode, 3, [4], checkpoint_every=2)
    assert hist["skipped"] == 3 and all(r.startswith("diverged") for r in hist["skip_reasons"])
    assert all(torch.equal(a, b) for a, b in zip(before, init.parameters()))


class EvalTrap(nn.Module):
    """Identity; in eval mode (validation only) adds ``0 * sqrt(0)``: a finite loss with a NaN gradient."""

    def forward(self, x):
        return x if self.training else x + 0 * torch.sqrt((x * 0).sum())


def test_non_finite_meta_gradient_is_skipped_and_counted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3), EvalTrap())
    init = dm.LearnedInitializer(model)
    before = [p.detach().clone() for p in init.parameters()]
    batches, val = task(3, 1)
    hist = mt.meta_train(init, model, lambda g: (batches, val), F.mse_loss, mu.InnerOptimizer(), 2, [3])
    assert hist["skipped"] == 2 and hist["skip_reasons"] == ["non-finite meta-gradient"] * 2
    assert all(math.isfinite(v) for v in hist["meta_loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, init.parameters()))


def test_meta_step_resets_batchnorm_statistics():
    model = bn_mlp()
    init = dm.LearnedInitializer(model)
    batches, val = task(4, 2)
    opt = mu.InnerOptimizer("momentum", lr=0.05)
    losses = []
    for fill in (0.0, 7.0):
        model[1].running_mean.fill_(fill)
        model[1].running_var.fill_(1.0 + fill)
        meta_opt = mt.meta_optimizer_for(init, lr=1e-12)
        losses.append(mt.meta_step(init, model, meta_opt, batches, val, [2, 4], F.mse_loss, opt,
                                   generator=torch.Generator().manual_seed(0))["meta_loss"])
        assert float(model[1].running_mean.abs().max()) == 0.0  # reset, and the unroll worked on copies
    assert losses[0] == losses[1]
    assert meta_opt.defaults["betas"] == (0.9, 0.997)


def test_meta_training_lowers_the_meta_loss():
    """A start far too small for an 8-step SGD run (a saddle at zero): DIMAML must grow sigma and lower the loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    init = dm.LearnedInitializer(model, base={"0.weight": 1e-3, "2.weight": 1e-3})
    batches, val = task(8, 1)
    hist = mt.meta_train(init, model, lambda g: (batches, val), F.mse_loss, mu.InnerOptimizer("sgd", lr=0.2),
                         40, [8], meta_lr=0.2)
    assert hist["skipped"] == 0
    assert min(hist["meta_loss"][-10:]) < 0.7 * hist["meta_loss"][0]
    assert hist["std"]["0.weight"][-1] > 10 * hist["std"]["0.weight"][0]


@pytest.mark.parametrize("kind,meta_lr", [("normal", 0.05), ("plif", 0.02)])
def test_meta_training_lowers_the_meta_loss_of_a_batchnorm_net(kind, meta_lr):
    """From a start 0.3x Kaiming (too small for 10 momentum-SGD steps) both kinds lower the meta-loss."""
    model = bn_mlp()
    stds = dm.classical_stds(model, linear=("3.weight",))
    init = dm.LearnedInitializer(model, kind, base={n: 0.3 * s for n, s in stds.items()}, n_pieces=10)
    batches, val = task(10, 2, seed=3)
    hist = mt.meta_train(init, model, lambda g: (batches, val), F.mse_loss,
                         mu.InnerOptimizer("momentum", lr=0.02, momentum=0.9), 40, [5, 10], meta_lr=meta_lr)
    assert hist["skipped"] == 0
    first, last = sum(hist["meta_loss"][:5]) / 5, sum(hist["meta_loss"][-5:]) / 5
    assert last < 0.9 * first


def test_plif_global_scale_rescales_every_knot():
    dist = dm.PLIFInit.from_uniform(0.2, n_pieces=5, dtype=torch.float64)
    knots = dist.knots().detach().clone()
    assert float(dist.global_scale().detach()) == pytest.approx(1.0, abs=1e-12)
    with torch.no_grad():
        dist.raw_scale.copy_(dm.inverse_softplus(torch.tensor(0.5, dtype=torch.float64)))
    torch.testing.assert_close(dist.knots(), 0.5 * knots)
    assert float(dist.std().detach()) == pytest.approx(0.1, rel=1e-12)


def test_per_gate_distributions_and_learned_biases_of_an_lstm(gen):
    lstm = nn.LSTM(5, 7)
    init = dm.LearnedInitializer(lstm, "normal", base={n: 1 / math.sqrt(7) for n in ("weight_ih_l0", "weight_hh_l0")},
                                 biases=True)
    assert init.names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert len(init.dist("weight_ih_l0").parts) == 4
    assert init.dist("bias_ih_l0").scale == pytest.approx(1 / math.sqrt(3 * 7))
    with torch.no_grad():
        init.dist("weight_ih_l0").parts[2].loc.fill_(5.0)  # only the cell gate's rows move
    w = init.sample(lstm, gen)["weight_ih_l0"].detach()
    assert w.shape == (28, 5)
    assert float(w[14:21].mean()) == pytest.approx(5 / math.sqrt(7), rel=0.1)
    assert float(w[:14].mean().abs()) < 0.2
    loaded = dm.LearnedInitializer.from_dict(init.to_dict())
    for a, b in zip(init.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


def test_transposed_convolution_gets_its_true_fan_in():
    """Issue 13: ``ConvTranspose2d(8, 1, 4)`` has weight ``(8, 1, 4, 4)``: fan-in 8 * 16, not 1 * 16."""
    model = nn.Sequential(nn.ConvTranspose2d(8, 1, 4, 2, 1))
    init = dm.LearnedInitializer(model, "normal")
    assert init.dist("0.weight").scale == pytest.approx(math.sqrt(2 / 128))
    no_relu = dm.classical_stds(model, linear=("0.weight",))
    assert no_relu["0.weight"] == pytest.approx(math.sqrt(1 / 128))


def test_meta_step_cost_counts_recomputation_and_is_deterministic():
    model = bn_mlp()
    init = dm.LearnedInitializer(model)
    K, C = 12, 4
    batches, val = task(K, 3)
    opt = mu.InnerOptimizer("momentum", lr=0.05)
    runs = {}
    for every, mode in [(None, "reentrant"), (C, "reentrant"), (C, "nonreentrant")]:
        runs[every, mode] = mt.meta_step_cost(init, model, batches, val, [4, 8, 12], F.mse_loss, opt, every, mode,
                                              torch.Generator().manual_seed(0))
        again = mt.meta_step_cost(init, model, batches, val, [4, 8, 12], F.mse_loss, opt, every, mode,
                                  torch.Generator().manual_seed(0))
        assert again["peak_bytes"] == runs[every, mode]["peak_bytes"] > 0
    assert (runs[None, "reentrant"]["forward_evals"], runs[None, "reentrant"]["backward_evals"]) == (K + 3, 0)
    assert (runs[C, "reentrant"]["forward_evals"], runs[C, "reentrant"]["backward_evals"]) == (K + 3, K + 3)
    assert runs[C, "nonreentrant"]["forward_evals"] == K * (C + 3) // 2 + 3
    assert runs[C, "reentrant"]["peak_bytes"] < runs[None, "reentrant"]["peak_bytes"]


def test_live_tensor_bytes_counts_a_known_allocation():
    with mt.LiveTensorBytes() as mem:
        x = torch.zeros(1000, dtype=torch.float64)
        y = x.view(10, 100)  # a view: no new storage
        assert mem.current == 8000
        del x, y
        assert mem.current == 0
    assert mem.peak == 8000


# --------------------------------------------------------------------------- MetaInit
def test_metainit_lowers_the_gradient_quotient_and_keeps_directions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    with torch.no_grad():
        for m in model[::2]:
            m.weight.mul_(4.0)  # a bad (too large) start
    directions = [m.weight.detach() / m.weight.detach().norm() for m in model[::2]]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 10, generator=g), torch.randint(0, 4, (128,), generator=g)
    history = metainit_(model, F.cross_entropy, lambda _: (x, y), steps=40, lr=0.03)
    assert sum(history[-5:]) / 5 < 0.75 * history[0]
    for d, m in zip(directions, model[::2]):
        torch.testing.assert_close(m.weight.detach() / m.weight.detach().norm(), d)


def test_gradient_quotient_of_a_quadratic():
    """``L = c |w|^2 / 2``: ``g = c w``, ``Hg = c^2 w``, so every entry of ``(g - Hg) / g - 1`` is ``-c``: GQ = c."""
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    c = 0.3
    gq = gradient_quotient(c * (w * w).sum() / 2, [w], eps=1e-12)
    assert float(gq.detach()) == pytest.approx(c, rel=1e-9)
