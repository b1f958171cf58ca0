"""The chunked (Ha et al.) hypernet of Chapter 7: layout, sharing, errors, and the variance of generated kernels."""
import math

import pytest
import torch

from conftest import sample_variance_tolerance
from hyperinit_lite import all_conv_net as acn
from hyperinit_lite import chunked as hc

SHAPES = [(10, 3, 3, 3), (8, 10, 3, 3), (5, 8, 1, 1), (8, 8, 3, 3)]


def _randomize_(hn, gen):
    """Nonzero gamma and beta too, so the layout test also checks where the biases land."""
    with torch.no_grad():
        for p in hn.parameters():
            if p.requires_grad:
                p.normal_(generator=gen)
    return hn


def _reference_kernels(hn):
    """Eq. 6 with explicit loops: chunk m = r * n_in + s, vector q = input channel s*K + q, H row block p = output."""
    K, d = hn.chunk_size, hn.hidden_size
    kernels = []
    for t, (n_out, n_in, kh, kw) in enumerate(hn.shapes):
        w = torch.full((n_out, n_in, kh, kw), float("nan"))
        n_o, n_i = hn.grid[t]
        head = hn.output_layers[hn.output_layer_of[t]]
        for r in range(n_o):
            for s in range(n_i):
                m = r * n_i + s
                g = 0 if hn.input_layers == "per_layer" else m
                a = (hn.input_weights[t][g] @ hn.embeddings[t][m] + hn.input_biases[t][g]).view(K, d)
                for q in range(K):
                    out = (head.weight @ a[q] + head.bias).view(K, kh, kw)
                    for p in range(K):
                        if r * K + p < n_out and s * K + q < n_in:
                            w[r * K + p, s * K + q] = out[p]
        kernels.append(w)
    return kernels


@pytest.mark.parametrize("input_layers", ["per_layer", "per_chunk"])
def test_kernels_match_the_explicit_loop_of_eq_6(input_layers, gen):
    hn = _randomize_(hc.ChunkedHypernet(SHAPES, 4, 3, 5, input_layers=input_layers, generator=gen), gen)
    with torch.no_grad():
        kernels, reference = hn(), _reference_kernels(hn)
    assert [tuple(k.shape) for k in kernels] == SHAPES
    assert hn.grid == [(3, 1), (2, 3), (2, 2), (2, 2)]
    for k, ref in zip(kernels, reference):
        assert not torch.isnan(ref).any()
        torch.testing.assert_close(k, ref, rtol=1e-5, atol=1e-5)


def test_a_chunk_lands_in_its_documented_block(gen):
    """Changing the embedding of chunk m = (r, s) changes exactly W[rK:(r+1)K, sK:(s+1)K]."""
    hn = _randomize_(hc.ChunkedHypernet([(12, 8, 3, 3)], 4, 3, 5, generator=gen), gen)
    with torch.no_grad():
        before = hn()[0].clone()
        r, s = 2, 1
        hn.embeddings[0][r * hn.grid[0][1] + s] += 1.0
        changed = (hn()[0] != before).any(dim=(2, 3))
    expected = torch.zeros(12, 8, dtype=torch.bool)
    expected[8:12, 4:8] = True
    assert torch.equal(changed, expected)


def test_hidden_vector_q_is_input_channel_and_output_row_block_p_is_output_channel(gen):
    hn = _randomize_(hc.ChunkedHypernet([(8, 8, 3, 3), (8, 4, 3, 3)], 4, 3, 5, input_layers="per_chunk",
                                        generator=gen), gen)
    K, d = 4, 3
    with torch.no_grad():
        before = [k.clone() for k in hn()]
        q, m = 2, 1  # chunk m = 1 is (r, s) = (0, 1): vector q feeds input channel 1*K + q = 6, outputs 0..3
        hn.input_biases[0][m, q * d:(q + 1) * d] += 1.0
        changed = (hn()[0] != before[0]).any(dim=(2, 3))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:4, 6] = True
    assert torch.equal(changed, expected)
    with torch.no_grad():  # row block p of the shared H: output channels p and p + K, in *both* layers
        before = [k.clone() for k in hn()]
        p = 1
        hn.output_layers[0].bias[p * 9:(p + 1) * 9] += 1.0
        after = hn()
    for k0, k1 in zip(before, after):
        rows = (k1 != k0).flatten(1).any(dim=1)
        assert rows.nonzero().flatten().tolist() == [p, p + K]


def test_output_layer_is_shared_per_kernel_size_and_sums_gradients(gen):
    shapes = [(8, 3, 3, 3), (8, 8, 3, 3), (8, 8, 1, 1), (4, 8, 3, 3)]
    hn = hc.ChunkedHypernet(shapes, 4, 3, 5, generator=gen)
    assert hn.kernel_sizes == [(3, 3), (1, 1)] and hn.output_layer_of == [0, 0, 1, 0]
    assert len(hn.output_layers) == 2 and len(hn.input_weights) == 4
    weights = [torch.randn(s, generator=gen) for s in shapes]
    head = hn.output_layers[0].weight
    per_layer = []
    for t in (0, 1, 3):
        hn.zero_grad()
        (hn.kernel(t) * weights[t]).sum().backward()
        per_layer.append(head.grad.clone())
    hn.zero_grad()
    sum((k * w).sum() for k, w in zip(hn(), weights)).backward()
    torch.testing.assert_close(head.grad, sum(per_layer))
    assert not hn.embeddings[0].requires_grad
    assert hc.ChunkedHypernet(shapes, 4, 3, 5, learn_embeddings=True).embeddings[0].requires_grad


def test_generated_numel_counts_the_sliced_away_entries(gen):
    hn = hc.ChunkedHypernet([(10, 3, 3, 3)], 8, 2, 2, generator=gen)
    assert hn.generated_numel() == (2 * 1 * 64 * 9, 10 * 3 * 9)
    torch.testing.assert_close(hn.kept_fraction(0), torch.tensor([24 / 64, 6 / 64], dtype=torch.float64))


@pytest.mark.parametrize("kwargs,message", [
    (dict(shapes=[]), "shapes must contain at least one"),
    (dict(shapes=[(8, 8, 3)]), r"shapes\[0\] must be a conv kernel shape"),
    (dict(shapes=[(8, 8, 3, 3), (8, 0, 3, 3)]), r"shapes\[1\]\[1\] must be a positive integer"),
    (dict(shapes=[(8, 8.0, 3, 3)]), r"shapes\[0\]\[1\] must be a positive integer"),
    (dict(shapes=5), "shapes must be a list"),
    (dict(chunk_size=0), "chunk_size must be a positive integer"),
    (dict(hidden_size=-2), "hidden_size must be a positive integer"),
    (dict(embedding_dim=True), "embedding_dim must be a positive integer"),
    (dict(activation="gelu"), "activation must be one of 'linear', 'tanh', 'relu'"),
    (dict(last_activation="softmax"), "last_activation must be one of"),
    (dict(input_layers="shared"), "input_layers must be one of 'per_layer', 'per_chunk'"),
])
def test_bad_constructor_arguments(kwargs, message):
    args = dict(shapes=[(8, 8, 3, 3)], chunk_size=4, hidden_size=3, embedding_dim=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        hc.ChunkedHypernet(**args)


def test_bad_initializer_arguments(gen):
    hn = hc.ChunkedHypernet([(8, 8, 3, 3)], 4, 3, 5, generator=gen)
    with pytest.raises(ValueError, match="init must be one of 'hyperfan_in', 'hyperfan_out'"):
        hc.chunked_init_(hn, "hyperfan")
    with pytest.raises(ValueError, match="mode must be one of 'fan_in', 'fan_out', 'harmonic'"):
        hc.chunked_kaiming_(hn, mode="fan_avg")
    with pytest.raises(ValueError, match="embedding_variance"):
        hc.chunked_hyperfan_in_(hn, embedding_variance=0.0)
    with pytest.raises(ValueError, match="distribution must be one of"):
        hc.chunked_hyperfan_out_(hn, distribution="cauchy")
    with pytest.raises(ValueError, match="method must be one of 'in', 'out', 'harmonic'"):
        hc.chunked_hyperfan_variances("fan_in", 9, 9, 3, 5)
    with pytest.raises(TypeError, match="hnet must be"):
        hc.chunked_hyperfan_in_(torch.nn.Linear(3, 3))


def test_hyperfan_formula_gives_the_target_exactly():
    """Var(G) = c / (fan d_z Var(z)) with Var(H) = 1/d, so d Var(H) d_z Var(G) Var(z) = c / fan."""
    fan_in, fan_out, d, d_z, var_z = 96 * 9, 192 * 9, 50, 50, 1.7
    for method, fan in (("in", fan_in), ("out", fan_out)):
        var_g, var_h = hc.chunked_hyperfan_variances(method, fan_in, fan_out, d, d_z, var_z, "relu")
        assert var_h == pytest.approx(1 / d)
        assert var_g == pytest.approx(2 / (fan * d_z * var_z))
        assert hc.chunked_kernel_variance(var_g, var_h, d, d_z, var_z) == pytest.approx(2 / fan)
    var_g, _ = hc.chunked_hyperfan_variances("harmonic", fan_in, fan_out, d, d_z, var_z, "linear")
    assert hc.chunked_kernel_variance(var_g, 1 / d, d, d_z, var_z) == pytest.approx(2 / (fan_in + fan_out))


def _relative_sd(hn, t):
    """Conservative relative sd of one layer's measured variance given the embeddings (derived in Chapter 7).

    ``2 / n_g`` from the ``n_g`` independent rows of ``G`` that reach the kept entries, plus
    ``2 (1/d + 1/q) / n_r`` from the ``n_r`` rows of ``H`` (``q`` kept input vectors per chunk).
    """
    n_out, n_in, kh, kw = hn.shapes[t]
    K, d = hn.chunk_size, hn.hidden_size
    q = min(n_in, K)
    n_g = q * d * (1 if hn.input_layers == "per_layer" else hn.grid[t][0] * hn.grid[t][1])
    n_r = min(n_out, K) * kh * kw
    return math.sqrt(2 / n_g + 2 * (1 / d + 1 / q) / n_r)


@pytest.mark.parametrize("input_layers", ["per_layer", "per_chunk"])
@pytest.mark.parametrize("init,mode", [("hyperfan_in", "fan_in"), ("hyperfan_out", "fan_out")])
def test_generated_kernel_variance_matches_c_over_fan(init, mode, input_layers):
    """Embeddings fixed, G and H redrawn R times: the mean measured variance is c/fan times the embeddings' factor."""
    gen = torch.Generator().manual_seed(21)
    shapes = [(40, 3, 3, 3), (24, 40, 3, 3), (10, 24, 1, 1)]
    hn = hc.ChunkedHypernet(shapes, 8, 24, 16, input_layers=input_layers, generator=gen)
    reps = 60
    total = torch.zeros(len(shapes), dtype=torch.float64)
    for _ in range(reps):
        hc.chunked_init_(hn, init, generator=gen)
        total += torch.tensor(hc.chunked_kernel_variances(hn), dtype=torch.float64)
    measured = total / reps
    target = hc.chunked_target_variances(hn, mode)
    conditional = hc.chunked_predicted_variances(hn, init, conditional=True)
    for t in range(len(shapes)):
        # given the embeddings, E[a^2] carries mean(z^2) of the chunks instead of Var(z) = 1, each chunk weighted
        # by the share of its entries that the kernel keeps
        w = hn.kept_fraction(t)
        z_factor = ((w * hn.embeddings[t].double().pow(2).mean(dim=1)).sum() / w.sum()).item()
        assert abs(z_factor - 1) < 6 * math.sqrt(0.8 / hn.embedding_dim)  # Var(z^2) / E[z^2]^2 = 0.8 for U
        expected = target[t] * z_factor
        assert conditional[t] == pytest.approx(expected, rel=1e-9)
        tol = 6 * _relative_sd(hn, t) / math.sqrt(reps)
        assert measured[t].item() == pytest.approx(expected, rel=tol), (t, measured[t].item(), expected)


def test_unconditional_mean_over_embeddings_is_the_target(gen):
    """Redrawing the embeddings too, the average over hypernets is c / fan_in itself (no conditioning needed)."""
    shapes = [(16, 16, 3, 3), (8, 16, 1, 1)]
    reps, total = 40, torch.zeros(2, dtype=torch.float64)
    for _ in range(reps):
        hn = hc.ChunkedHypernet(shapes, 8, 16, 16, generator=gen)
        total += torch.tensor(hc.chunked_kernel_variances(hn), dtype=torch.float64)
    target = hc.chunked_target_variances(hn, "fan_in")
    assert target == pytest.approx([2 / 144, 1 / 16])
    for t in range(2):
        # per-draw relative sd: the G/H part plus the embeddings' mean square over 4 (or 2) chunks of size 16
        n_z = hn.embedding_dim * hn.grid[t][0] * hn.grid[t][1]
        rel = math.sqrt(_relative_sd(hn, t) ** 2 + 0.8 / n_z)
        assert (total[t] / reps).item() == pytest.approx(target[t], rel=6 * rel / math.sqrt(reps))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_chunked_kaiming_gives_the_same_variance_to_every_layer(mode, gen):
    """M1: Var(W) = d Var(H) d_z Var(G) Var(z) with Var(G), Var(H) from the hypernet's own shapes only."""
    shapes = [(32, 3, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3)]
    K, d, d_z = 16, 20, 12
    hn = hc.chunked_kaiming_(hc.ChunkedHypernet(shapes, K, d, d_z, generator=gen), mode, generator=gen)
    predicted = hc.chunked_predicted_variances(hn, "kaiming", mode)
    expected = 4.0 if mode == "fan_in" else d * (2 / (K * 9)) * d_z * (2 / (K * d))
    assert predicted == pytest.approx([expected] * 3)
    stats = hc.chunked_kernel_statistics(hn, "kaiming", mode)
    fans = stats["fan_in"] if mode == "fan_in" else stats["fan_out"]
    assert [p / t for p, t in zip(stats["predicted"], stats["target"])] == pytest.approx(
        [expected * f / c for f, c in zip(fans, (2, 2, 1))])  # off by a factor that grows with the fan
    for t in range(3):
        tol = 6 * _relative_sd(hn, t)
        assert stats["measured"][t] == pytest.approx(stats["conditional"][t], rel=tol)
        if mode == "fan_in":
            assert stats["ratio"][t] > 20  # far above c / fan_in: the mismatch Chapter 7 shows


def test_all_conv_net_forward_shapes():
    gen = torch.Generator().manual_seed(0)
    shapes = acn.all_conv_net_shapes(width=8, in_channels=3, num_classes=10)
    assert shapes[0] == (8, 3, 3, 3) and shapes[-1] == (10, 16, 1, 1) and shapes[-2] == (16, 16, 1, 1)
    hn = hc.ChunkedHypernet(shapes, 8, 4, 4, generator=gen)
    out, trace = acn.all_conv_net_forward(torch.randn(2, 3, 32, 32, generator=gen), hn(), trace=True)
    assert out.shape == (2, 10)
    assert [y.shape[-1] for y in trace["preactivations"]] == [32, 32, 16, 16, 16, 8, 6, 6, 6]
    with pytest.raises(ValueError, match="kernels must hold the 9 kernels"):
        acn.all_conv_net_forward(torch.randn(2, 3, 8, 8), hn()[:3])
    with pytest.raises(ValueError, match="width must be a positive integer"):
        acn.all_conv_net_shapes(width=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generation_on_cuda_matches_cpu(gen):
    hn = _randomize_(hc.ChunkedHypernet(SHAPES, 4, 3, 5, generator=gen), gen)
    with torch.no_grad():
        cpu = hn()
        gpu = hn.to("cuda")()
    for a, b in zip(cpu, gpu):
        assert b.is_cuda
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-4)
    assert hc.chunked_predicted_variances(hn, "hyperfan_in", conditional=True)
    hc.chunked_hyperfan_out_(hn, generator=torch.Generator().manual_seed(3))  # CPU generator, CUDA hypernet
    cuda_params = [p.detach().cpu() for p in hn.parameters()]
    hc.chunked_hyperfan_out_(hn.cpu(), generator=torch.Generator().manual_seed(3))
    for a, b in zip(hn.parameters(), cuda_params):
        torch.testing.assert_close(a.detach(), b)


@pytest.mark.parametrize("input_layers", ["per_layer", "per_chunk"])
def test_chunks_of_a_layer_correlate_like_their_embeddings_only_with_a_shared_input_layer(input_layers):
    """Appendix A.1 inside a layer: given z, E[corr(chunk m, chunk m')] = cos(z_m, z_m') with one G[t], else 0."""
    gen = torch.Generator().manual_seed(5)
    hn = hc.ChunkedHypernet([(16, 16, 3, 3)], 8, 16, 4, input_layers=input_layers, generator=gen)
    z = hn.embeddings[0]
    cos = torch.nn.functional.cosine_similarity(z[:, None], z[None], dim=-1)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    reps, runs = 40, []
    for _ in range(reps):
        hc.chunked_hyperfan_in_(hn, generator=gen)
        with torch.no_grad():
            chunks = hn.chunks(0).flatten(0, 1).flatten(1)
        runs.append([torch.corrcoef(chunks[[m, n]])[0, 1].item() for m, n in pairs])
    runs = torch.tensor(runs)
    expected = [cos[m, n].item() if input_layers == "per_layer" else 0.0 for m, n in pairs]
    assert max(abs(c) for c in expected) > 0.3 or input_layers == "per_chunk"  # the test has something to see
    for mean, sd, e in zip(runs.mean(0), runs.std(0), expected):
        assert abs(mean.item() - e) < 6 * sd.item() / math.sqrt(reps) + 1e-3, (mean.item(), e)


def test_conv_input_coverage_counts_the_outputs_that_read_each_input():
    """Hand counts: a 3x3 stride-1 conv with padding 1 reads an interior input 9 times, an edge 6, a corner 4;
    at stride 2 an input is read 1, 2 or 4 times by the parity of its position (Chapter 10's stride caveat)."""
    one = acn.conv_input_coverage(3, 1, 1, 5)
    assert one[2, 2] == 9 and one[0, 2] == 6 and one[0, 0] == 4
    two = acn.conv_input_coverage(3, 2, 1, 8)
    assert two[0, 0] == 1 and two[1, 0] == 2 and two[1, 1] == 4 and two[7, 7] == 1
    # reads per axis: 3 * 32 - 2 = 94 over 32 positions at stride 1 with padding 1; 3 * 16 - 1 = 47 at stride 2
    coverage = acn.all_conv_net_coverage(32)
    assert coverage[:3] == pytest.approx([(94 / 32) ** 2] * 2 + [(47 / 32) ** 2])
    assert coverage[3:] == pytest.approx([(46 / 16) ** 2] * 2 + [(23 / 16) ** 2] + [(18 / 8) ** 2, 1.0, 1.0])
    with pytest.raises(ValueError, match="stride"):
        acn.conv_input_coverage(3, 0, 1, 8)
