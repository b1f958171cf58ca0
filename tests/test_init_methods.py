"""The registry of init methods (hyperinit_lite.init_methods): names, dispatch to both hypernet kinds, and
predicted variances against hand-derived values and against measurement."""
import pytest
import torch

from hyperinit_lite import Hypernet
from hyperinit_lite.chunked import ChunkedHypernet, chunked_init_, chunked_predicted_variances
from hyperinit_lite.init_methods import METHODS, get_method, init_, label, predicted_variances
from hyperinit_lite.initializers import hyperfan_in_, kaiming_


def test_names_aliases_and_labels():
    classical = {f"{n}_{m}" for n in ("xavier", "kaiming") for m in ("fan_in", "fan_out", "harmonic")}
    assert set(METHODS) == classical | {"hyperfan_in", "hyperfan_out", "hyperfan_harmonic"}
    assert get_method("kaiming") is METHODS["kaiming_fan_in"] and get_method("xavier").gain == 1.0
    assert label("kaiming_fan_out") == "Kaiming fan-out" and label("hyperfan_in") == "hyperfan-in"
    assert [get_method(m).target_mode for m in ("kaiming_fan_out", "xavier_harmonic", "hyperfan_in",
                                                "hyperfan_out", "hyperfan_harmonic")] == \
        ["fan_out", "harmonic", "fan_in", "fan_out", "harmonic"]
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("hyperfan")


def test_predictions_of_a_linear_hypernet_match_hand_derived_values():
    hn = Hypernet([64, 64, 32, 10], 50, activation="relu")
    # hyperfan-in: Var(W[t]) = c / d_j, c = 2 before a ReLU, 1 for the linear last layer
    assert predicted_variances(hn, "hyperfan_in") == (pytest.approx([2 / 64, 2 / 64, 1 / 32]), [0.0] * 3)
    # hyperfan-out: c / d_i
    assert predicted_variances(hn, "hyperfan_out")[0] == pytest.approx([2 / 64, 2 / 32, 1 / 10])
    # M1 fan-in: d_k Var(e) gain / d_k = gain, whatever the layer (Eq. 1 of the paper)
    assert predicted_variances(hn, "kaiming")[0] == pytest.approx([2.0, 2.0, 2.0])
    # M1 fan-out: d_k gain / (d_i d_j)
    assert predicted_variances(hn, "xavier_fan_out")[0] == pytest.approx([50 / 4096, 50 / 2048, 50 / 320])
    with_bias = Hypernet([64, 32], 50, generates_bias=True, activation="relu")
    # Case 2, hyperfan-in: weights and bias share the variance, 1 / (2 d_j) and 1 / 2 (linear last layer)
    assert predicted_variances(with_bias, "hyperfan_in") == (pytest.approx([1 / 128]), pytest.approx([0.5]))


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("generates_bias", [False, True])
def test_size_based_prediction_agrees_with_the_hypernet_based_one(name, generates_bias):
    """Two routes to the generated variances of a linear hypernet: from the layer sizes (predict.py's formulas,
    what the explorers use) and from a built Hypernet's head variances (what the experiments use)."""
    sizes, d_k = [40, 30, 30, 10], 12
    hn = Hypernet(sizes, d_k, generates_bias=generates_bias, activation="tanh")
    from_sizes = METHODS[name].generated_variances(sizes, d_k, "tanh", generates_bias, embedding_variance=0.7)
    from_hypernet = predicted_variances(hn, name, embedding_variance=0.7)
    assert from_sizes == (pytest.approx(from_hypernet[0], rel=1e-12), pytest.approx(from_hypernet[1], rel=1e-12))


def test_registry_applies_the_package_initializers():
    def fresh():
        return Hypernet([20, 30, 10], 8, hidden_sizes=(16,), generates_bias=True,
                        generator=torch.Generator().manual_seed(0))

    for name, reference in (("hyperfan_in", lambda h, g: hyperfan_in_(h, generator=g)),
                            ("kaiming_fan_out", lambda h, g: kaiming_(h, "fan_out", generator=g))):
        a = init_(fresh(), name, generator=torch.Generator().manual_seed(1))
        b = reference(fresh(), torch.Generator().manual_seed(1))
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_registry_on_a_chunked_hypernet():
    shapes = [(16, 3, 3, 3), (32, 16, 3, 3), (10, 32, 1, 1)]

    def fresh():
        return ChunkedHypernet(shapes, 8, 6, 5, generator=torch.Generator().manual_seed(0))

    for name, (init, mode) in {"hyperfan_out": ("hyperfan_out", "fan_in"),
                               "kaiming_fan_out": ("kaiming", "fan_out")}.items():
        a = init_(fresh(), name, generator=torch.Generator().manual_seed(1))
        b = chunked_init_(fresh(), init, mode, generator=torch.Generator().manual_seed(1))
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert predicted_variances(a, name)[0] == chunked_predicted_variances(b, init, mode)


@pytest.mark.parametrize("name, body", [("hyperfan_in", "relu"), ("hyperfan_out", "relu"),
                                        ("xavier", "tanh"), ("kaiming_harmonic", "relu")])
def test_predicted_weight_variance_matches_measurement(name, body):
    """Mean over 64 seeded hypernets of the generated weights' variance, within 15% of the prediction (the
    seed-to-seed spread of one hypernet's variance is about 25%, so the mean's is about 3%)."""
    measured, predicted = [], None
    for seed in range(64):
        gen = torch.Generator().manual_seed(seed)
        hn = Hypernet([16, 24, 4], 32, hidden_sizes=(32,), body_activation=body, activation="relu",
                      generator=gen)
        init_(hn, name, generator=gen)
        with torch.no_grad():
            weights, _ = hn()
        measured.append([w.var().item() for w in weights])
        predicted = predicted_variances(hn, name)[0]
    mean = torch.tensor(measured).mean(0)
    assert mean.tolist() == pytest.approx(predicted, rel=0.15)


def test_a_module_of_your_own_is_pointed_to_head_init():
    with pytest.raises(TypeError, match="head_init"):
        init_(torch.nn.Linear(3, 4), "hyperfan_in")


def test_public_api_resolves_and_keeps_the_old_names():
    import hyperinit_lite as hl
    from hyperinit_lite.init import hyperfan_in_ as head_hyperfan_in_
    old = """MODES NONLINEARITIES harmonic_mean init_variance kaiming_variance normal_ relu_factor sample_
    uniform_ xavier_variance fan_in_and_fan_out receptive_field METHODS hyperfan_in_bias_variance
    hyperfan_in_weight_variance hyperfan_out_bias_variance hyperfan_out_weight_variance hyperfan_variances
    Hypernet classical_mainnet layer_shapes mainnet_forward uniform_embeddings classical_
    fan_in_body_ hyperfan_ hyperfan_harmonic_ hyperfan_in_ hyperfan_out_ kaiming_ xavier_
    hypernet_statistics mainnet_statistics""".split()
    assert set(old) <= set(hl.__all__)
    for name in hl.__all__:
        assert getattr(hl, name) is not None, name
    for name in hl.init.__all__:
        assert getattr(hl.init, name) is not None, name
    assert hl.ChunkedHypernet is ChunkedHypernet and hl.init.init_ is init_
    assert head_hyperfan_in_.__module__ == "hyperinit_lite.head_init"
    assert hl.hyperfan_in_ is hyperfan_in_  # the package Hypernet's initializer keeps its name
