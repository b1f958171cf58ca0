"""Chapter 13's experiment: DIMAML on a hypernet's heads vs hyperfan (experiments.dimaml_hyperfan*)."""
import math

import pytest
import torch
import torch.nn.functional as F

from hyperinit_lite.experiments import dimaml_hyperfan as exp
from hyperinit_lite.experiments.dimaml_hyperfan_model import (ReplicaHypernets, initializer, replica_loss,
                                                              start_stds)
from hyperinit_lite.hypernet import mainnet_forward

TINY = dict(width=4, depth=2, embedding_dim=3, n_train=300, n_val=100, batch_size=8, inner_steps=3,
            val_steps=(2, 3), val_batch_size=16, meta_steps=4, block=2, eval_steps=(2, 5), seeds=2)


def test_head_targets_are_table_1():
    net = ReplicaHypernets(exp.get_config("quick"), [0])
    d_k = 8
    expected = [(784, 16), (16, 16), (16, 10)]
    assert [(t["d_j"], t["d_i"]) for t in net.targets] == expected
    for t, (d_j, d_i) in zip(net.targets, expected):
        assert t["in"] == pytest.approx(math.sqrt(1 / (d_j * d_k)))
        assert t["out"] == pytest.approx(math.sqrt(1 / (d_i * d_k)))
        assert t["xavier"] == pytest.approx(1 / math.sqrt(d_k))


def test_starts_bracket_every_target_with_no_pattern():
    config = exp.get_config("quick")
    targets = ReplicaHypernets(config, [0]).targets
    values = [t[m] for t in targets for m in ("in", "out")]
    high, low = (start_stds(config, targets, s) for s in ("high", "low"))
    assert len(set(high)) == 1 and len(set(low)) == 1
    assert min(high) > max(values) and max(low) < min(values)


def test_replicas_are_independent_hypernets():
    """Replica r's logits are its own hypernet's mainnet (Chapter 4) and its gradient ignores the others."""
    config = exp.get_config("quick", **TINY)
    net = ReplicaHypernets(config, [0, 1, 2])
    initializer(net, [[0.3, 0.2, 0.1]] * 3).init_(net, torch.Generator().manual_seed(0))
    x = torch.randn(3, 5, 784, generator=torch.Generator().manual_seed(1))
    y = torch.randint(10, (3, 5), generator=torch.Generator().manual_seed(2))
    logits = net(x)
    weights = net.weights()
    for r in range(3):
        expected = mainnet_forward(x[r], [w[r] for w in weights], [b[r, 0] for b in net.biases], "tanh")
        torch.testing.assert_close(logits[r], expected)
    grad_all = torch.autograd.grad(replica_loss(logits, y), net.heads["h0_r1"])[0]
    grad_one = torch.autograd.grad(F.cross_entropy(net(x)[1], y[1]), net.heads["h0_r1"])[0]
    torch.testing.assert_close(grad_all, grad_one)


def test_validation_split_comes_from_the_training_images():
    config = exp.get_config("quick", **TINY)
    train, val, test = exp.split_data(config, "cpu")
    assert len(train[0]) == 200 and len(val[0]) == 100 and len(test[0]) > 0
    assert not bool((train[0][:, None, :] == val[0][None, :, :]).all(-1).any())


def test_meta_training_keeps_the_mean_at_zero_and_moves_sigma():
    config = exp.get_config("quick", **TINY)
    results = exp.run(config, progress=False)
    assert len(results["meta"]["meta_loss"]) == 4 and len(results["meta"]["std"]) == 5
    assert results["meta"]["std"][0] != results["meta"]["std"][-1]
    assert set(results["evaluation"]) == {"xavier", "hyperfan_in", "hyperfan_out", "dimaml_high",
                                          "dimaml_low"}
    assert len(results["evaluation"]["dimaml_low"]["test"]) == 2  # seeds
    net = ReplicaHypernets(config, [0])
    init = initializer(net, [[0.1, 0.1, 0.1]])
    assert all(not d.loc.requires_grad and float(d.loc) == 0.0 for d in init.dists.values())


class MemoryCheckpoint:
    """The ``load`` / ``save`` protocol of ``results.Checkpoint``, kept in memory; it can stop a run."""

    def __init__(self, stop_after=None):
        self.state, self.saves, self.stop_after = None, 0, stop_after

    def load(self):
        return self.state

    def save(self, state, label=""):
        self.state = torch.utils._pytree.tree_map(lambda v: v.clone() if torch.is_tensor(v) else v, state)
        self.saves += 1
        if self.saves == self.stop_after:
            raise KeyboardInterrupt(label)


def test_resumed_run_equals_an_uninterrupted_one():
    config = exp.get_config("quick", **TINY)
    whole = exp.run(config, progress=False)
    ckpt = MemoryCheckpoint(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        exp.run(config, progress=False, checkpoint=ckpt)
    ckpt.stop_after = None
    assert exp.run(config, progress=False, checkpoint=ckpt) == whole


@pytest.mark.parametrize("override, word", [
    (dict(starts=("xavier",)), "starts"), (dict(block=3), "block"), (dict(n_val=5000), "n_val"),
    (dict(seeds=0), "seeds"), (dict(val_steps=(2, 9)), "val_steps"), (dict(lr=-1.0), "lr")])
def test_bad_configs_name_the_parameter(override, word):
    with pytest.raises(ValueError, match=word):
        config = exp.get_config("quick", **{**TINY, **override})
        exp.split_data(config, "cpu")


def test_cli_interrupt_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGINT after the first block of meta-steps, then ``--resume``: the same results as one run."""
    from cli_harness import check_interrupt_resume

    tiny = ["width=4", "depth=2", "embedding_dim=3", "n_train=300", "n_val=100", "batch_size=8",
            "inner_steps=25", "val_steps=5,25", "val_batch_size=16", "meta_steps=20", "block=10",
            "eval_steps=25,30", "seeds=1"]
    check_interrupt_resume(["dimaml-hyperfan", "--no-progress", "--device", "cpu", "--set", *tiny], tmp_path)


def test_objective_scan_and_meta_gradient_have_one_value_per_point():
    config = exp.get_config("quick", **TINY)
    scan = exp.objective_scan(config, 0, [0.01, 0.1], [0.1, 0.1, 0.1], seeds=2, device="cpu")
    assert len(scan) == 2 and all(len(row) == 2 and all(math.isfinite(v) for v in row) for row in scan)
    grads = exp.meta_gradient(config, [0.1, 0.1, 0.1], seed=0)
    assert len(grads) == 3 and all(math.isfinite(g) and g != 0.0 for g in grads)
