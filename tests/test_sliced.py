"""Sliced dataset distances: s-OTDD (moment transform) and Busemann slicing (SWB1DG, SWBG).

Known answers from ``../shared/spec/sliced.md`` §6: identity, symmetry, relabelling, translation and
homogeneity per direction, the feature-only limit, Dirac classes, POT's ``wasserstein_1d`` on
independently recomputed projections (unequal sizes and weights), convergence in L, chunk invariance,
float64 ``gradcheck`` through the class moments and quantiles, and the input errors.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

import datasetflow as dfl
from datasetflow import LabeledDataset
from datasetflow.distances.sliced import DirectionBank, sliced_distance
from datasetflow.errors import EmptyDatasetError, InvalidArgumentError, NonFiniteError, ShapeMismatchError

F64 = torch.float64
FAMILIES = ("sotdd", "swb1dg", "swbg")


def make(gen, n, d, num_classes, *, shift=0.0, weights=False, names=None):
    x = torch.randn(n, d, generator=gen, dtype=F64) + shift
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=gen)]
    w = torch.rand(n, generator=gen, dtype=F64) + 0.2 if weights else None
    labels = [names[k] for k in y.tolist()] if names is not None else y
    return LabeledDataset(x, labels, weights=w)


def value(source, target, family, **options):
    return sliced_distance(source, target, family=family, **options)


@pytest.fixture
def pair(gen):
    return make(gen, 30, 3, 3, weights=True), make(gen, 41, 3, 4, shift=0.4)


# ---------------------------------------------------------------------- identity, symmetry, invariances
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_self_distance_permuted_and_doubled(gen, family):
    ds = make(gen, 25, 3, 3, weights=True)
    assert float(value(ds, ds, family, n_projections=64).value_pow) == 0.0
    perm = torch.randperm(len(ds), generator=gen)
    permuted = LabeledDataset(ds.x[perm], ds.y[perm], weights=ds.weights[perm])
    assert abs(float(value(ds, permuted, family, n_projections=64).value_pow)) < 1e-12
    doubled = LabeledDataset(torch.cat([ds.x, ds.x]), torch.cat([ds.y, ds.y]), weights=torch.cat([ds.weights] * 2))
    assert abs(float(value(ds, doubled, family, n_projections=64).value_pow)) < 1e-12


@pytest.mark.parametrize("family", FAMILIES)
def test_relabelling_to_disjoint_names_changes_nothing_but_merging_does(gen, family):
    first = make(gen, 24, 2, 3)
    second = make(gen, 30, 2, 2, shift=1.0)
    renamed = LabeledDataset(first.x, [f"cls{9 - k}" for k in first.y.tolist()], weights=first.weights)
    base = float(value(first, second, family, n_projections=50).value_pow)
    assert float(value(renamed, second, family, n_projections=50).value_pow) == pytest.approx(base, abs=1e-12)
    merged = LabeledDataset(first.x, (first.y > 0).long(), weights=first.weights)
    assert abs(float(value(merged, second, family, n_projections=50).value_pow) - base) > 1e-6


@settings(max_examples=15, deadline=None)
@given(
    n1=st.integers(3, 20),
    n2=st.integers(3, 20),
    c1=st.integers(1, 3),
    c2=st.integers(1, 3),
    weighted=st.booleans(),
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 2**31 - 1),
)
def test_symmetry(n1, n2, c1, c2, weighted, family, seed):
    gen = torch.Generator().manual_seed(seed)
    first = make(gen, max(n1, c1), 2, c1, weights=weighted)
    second = make(gen, max(n2, c2), 2, c2, shift=0.3)
    forward = value(first, second, family, n_projections=16, seed=seed % 1000).per_projection
    backward = value(second, first, family, n_projections=16, seed=seed % 1000).per_projection
    assert torch.allclose(forward, backward, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunk_invariance_and_prefix(pair, family):
    source, target = pair
    L = 300
    reference = value(source, target, family, n_projections=L, chunk=L).per_projection
    for chunk in (1, 7, 256):
        per = value(source, target, family, n_projections=L, chunk=chunk).per_projection
        assert torch.allclose(per, reference, rtol=0, atol=1e-12)
    # the first L projections of a larger bank are the same projections
    prefix = value(source, target, family, n_projections=L + 100).per_projection[:L]
    assert torch.allclose(prefix, reference, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- closed forms per direction
def _bank(family, L, d, **options):
    bank = DirectionBank(family, 0, L, d, **options)
    return bank.chunk(0, L, F64, torch.device("cpu"))


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_swb1dg_translation_per_direction(gen, eps):
    ds = make(gen, 30, 3, 3, weights=True)
    v = torch.tensor([0.7, -1.5, 0.4], dtype=F64)
    result = dfl.busemann(ds, ds.with_features(ds.x + v), variant="swb1dg", n_projections=200, eps=eps)
    params = _bank("swb1dg", 200, 3, eps=eps)
    psi, m1 = params["psi"], params["m1"]
    expected = (psi[:, 0] - psi[:, 1] * m1) ** 2 * (params["theta"] @ v) ** 2
    assert torch.allclose(result.per_projection, expected, rtol=1e-10, atol=1e-12)
    # expectation (2/3)|v|^2/d, within 4 standard errors
    big = dfl.busemann(ds, ds.with_features(ds.x + v), n_projections=4000, eps=eps)
    assert abs(float(big.value_pow) - 2 / 3 * float(v @ v) / 3) < 4 * big.stderr_pow


@pytest.mark.parametrize("eps", [1.0, 0.25])
def test_swbg_translation_per_direction(gen, eps):
    ds = make(gen, 36, 3, 3)
    v = torch.tensor([0.7, -1.5, 0.4], dtype=F64)
    result = dfl.busemann(ds, ds.with_features(ds.x + v), variant="swbg", n_projections=200, eps=eps)
    params = _bank("swbg", 200, 3, eps=eps, label_dim=3)
    psi = params["psi"]
    expected = (psi[:, 0] * (params["theta"] @ v) - psi[:, 1] * (params["m_dir"] @ v)) ** 2
    assert torch.allclose(result.per_projection, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant", ["swb1dg", "swbg"])
def test_busemann_is_homogeneous_and_sotdd_is_not(pair, variant):
    source, target = pair
    a = 2.5
    base = dfl.busemann(source, target, variant=variant, n_projections=64).per_projection
    scaled = dfl.busemann(source.scaled(a), target.scaled(a), variant=variant, n_projections=64).per_projection
    assert torch.allclose(scaled, a**2 * base, rtol=1e-9, atol=1e-12)
    mtp = dfl.sotdd(source, target, n_projections=64).value_pow
    mtp_scaled = dfl.sotdd(source.scaled(a), target.scaled(a), n_projections=64).value_pow
    assert abs(float(mtp_scaled) / float(mtp) - a**2) > 0.1  # not scale-equivariant (spec §2.6)


def test_feature_only_limit_is_sliced_wasserstein(pair):
    source, target = pair
    result = dfl.sotdd(source, target, n_projections=40, n_moments=0)
    theta = _bank("sotdd", 40, 3, n_moments=0)["theta"]
    expected = [
        ot.wasserstein_1d(
            (source.x @ th).numpy(), (target.x @ th).numpy(), source.weights.numpy(), target.weights.numpy(), p=2
        )
        for th in theta
    ]
    assert np.allclose(result.per_projection.numpy(), expected, rtol=1e-10, atol=1e-12)


def _z_sotdd(ds, params, r_count):
    """Independent numpy recomputation of the MTP projections (math.factorial, plain powers)."""
    x, y, w = ds.x.numpy(), ds.y.numpy(), ds.weights.numpy()
    out = []
    for j in range(params["theta"].shape[0]):
        t = x @ params["theta"][j].numpy()
        psi = params["psi"][j].numpy()
        z = psi[0] * t
        for r in range(r_count):
            lam = int(params["lam"][j, r])
            h = np.zeros(ds.num_classes)
            for c in range(ds.num_classes):
                mask = y == c
                h[c] = np.sum(w[mask] * t[mask] ** lam) / w[mask].sum() / math.factorial(lam)
            z = z + psi[r + 1] * h[y]
        out.append(z)
    return out


@pytest.mark.parametrize("rates", ["sotdd", "bonet"])
def test_sotdd_matches_pot_on_recomputed_projections_unequal_sizes_and_weights(gen, rates):
    source = make(gen, 23, 3, 3, weights=True)
    target = make(gen, 37, 3, 2, shift=0.5, weights=True)
    result = dfl.sotdd(source, target, n_projections=30, n_moments=4, rates=rates)
    params = _bank("sotdd", 30, 3, n_moments=4, rates=rates)
    if rates == "bonet":
        assert bool((params["lam"][:, 0] == 1).all())  # rate 0: the class mean is always the first feature
    z1, z2 = _z_sotdd(source, params, 4), _z_sotdd(target, params, 4)
    expected = [
        ot.wasserstein_1d(u, v, source.weights.numpy(), target.weights.numpy(), p=2)
        for u, v in zip(z1, z2, strict=True)
    ]
    assert np.allclose(result.per_projection.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_swb1dg_sigma_tilde_is_the_exact_cell_integral(gen):
    """One class on each side: z = psi_1 t + psi_2 h, with sigma~ integrated numerically (scipy.quad)."""
    n1, n2 = 7, 11
    source = LabeledDataset(torch.randn(n1, 2, generator=gen, dtype=F64), [0] * n1)
    target = LabeledDataset(torch.randn(n2, 2, generator=gen, dtype=F64) * 2, [5] * n2)
    result = dfl.busemann(source, target, n_projections=5, p=1.5)
    params = _bank("swb1dg", 5, 2)

    def sigma(t):
        q = np.sort(t)
        levels = np.arange(len(q) + 1) / len(q)
        return sum(q[r] * integrate.quad(stats.norm.ppf, levels[r], levels[r + 1])[0] for r in range(len(q)))

    for j in range(5):
        th, psi, m1 = params["theta"][j].numpy(), params["psi"][j].numpy(), float(params["m1"][j])
        s1 = math.sqrt(1 - m1 * m1)
        zs = []
        for ds in (source, target):
            t = ds.x.numpy() @ th
            h = -m1 * t.mean() - s1 * sigma(t)
            zs.append(psi[0] * t + psi[1] * h)
        assert float(result.per_projection[j]) == pytest.approx(ot.wasserstein_1d(zs[0], zs[1], p=1.5), rel=1e-7)


def test_sigma_tilde_of_gaussian_classes_is_their_sd(gen):
    """C = 1, Gaussians: with psi-weights known, the per-direction value tends to the spec §6.6 limit."""
    n = 20000
    first = LabeledDataset(torch.randn(n, 1, generator=gen, dtype=F64), [0] * n)
    second = LabeledDataset(2.0 * torch.randn(n, 1, generator=gen, dtype=F64) + 1.0, [0] * n)
    result = dfl.busemann(first, second, n_projections=50)
    params = _bank("swb1dg", 50, 1)
    psi, m1, theta = params["psi"], params["m1"], params["theta"][:, 0]
    s1 = (1 - m1 * m1).sqrt()
    delta = theta * (0.0 - 1.0)
    expected = psi[:, 0] ** 2 * (1 - 2) ** 2 + ((psi[:, 0] - psi[:, 1] * m1) * delta - psi[:, 1] * s1 * (1 - 2)) ** 2
    assert torch.allclose(result.per_projection, expected, rtol=0.05, atol=0.02)


def test_dirac_classes_by_hand():
    """Every point of class c at x_c, in d = 1 (theta = +-1): z is known in closed form."""
    source = LabeledDataset(torch.tensor([[0.5]] * 3 + [[-1.0]] * 2, dtype=F64), [0, 0, 0, 1, 1])
    target = LabeledDataset(torch.tensor([[2.0]] * 4, dtype=F64), ["a"] * 4)
    result = dfl.sotdd(source, target, n_projections=20, n_moments=3)
    params = _bank("sotdd", 20, 1, n_moments=3)
    for j in range(20):
        th, psi, lam = float(params["theta"][j, 0]), params["psi"][j].tolist(), params["lam"][j].tolist()

        def z(point, th=th, psi=psi, lam=lam):
            t = th * point
            return psi[0] * t + sum(psi[r + 1] * t ** lam[r] / math.factorial(lam[r]) for r in range(3))

        u = np.array([z(0.5)] * 3 + [z(-1.0)] * 2)
        v = np.array([z(2.0)] * 4)
        assert float(result.per_projection[j]) == pytest.approx(ot.wasserstein_1d(u, v, p=2), rel=1e-10)


def test_truncated_poisson_orders_have_the_published_means():
    bank = DirectionBank("sotdd", 3, 256 * 40, 2, n_moments=5)
    lam = torch.cat([bank.block(b)["lam"] for b in range(40)]).double()
    means = torch.tensor([r / (1 - math.exp(-r)) for r in range(1, 6)], dtype=F64)
    assert bool((lam >= 1).all())
    assert torch.allclose(lam.mean(0), means, rtol=0.03)


# ---------------------------------------------------------------------- behaviour in L
@pytest.mark.parametrize("family", ["sotdd", "swb1dg"])
def test_converges_in_L_against_a_high_L_reference(pair, family):
    source, target = pair
    reference = value(source, target, family, n_projections=20000, seed=7)
    errors = {}
    for L in (10, 100, 1000):
        est = value(source, target, family, n_projections=L, seed=11)
        assert abs(float(est.value_pow) - float(reference.value_pow)) < 4 * est.stderr_pow + 4 * reference.stderr_pow
        errors[L] = est.stderr_pow
    assert errors[1000] < errors[100] < errors[10]
    assert 2.0 < errors[100] / errors[1000] < 5.0  # ~ sqrt(10)


# ---------------------------------------------------------------------- gradients
def _tiny(gen, n, num_classes, shift=0.0):
    return make(gen, n, 2, num_classes, shift=shift, weights=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_through_projection_and_class_statistics(gen, family):
    source, target = _tiny(gen, 9, 2), _tiny(gen, 8, 2, 0.5)

    def f(x1, x2):
        return value(source.with_features(x1), target.with_features(x2), family, n_projections=6, n_moments=3).value_pow

    x1 = source.x.clone().requires_grad_(True)
    x2 = target.x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x1, x2), eps=1e-6, atol=1e-6)


def test_gradient_includes_the_class_moment_term(gen):
    """MTP: the autograd gradient equals the spec §5 formula, own-projection plus class-moment terms."""
    source, target = _tiny(gen, 10, 2), _tiny(gen, 10, 2, 0.5)
    source = LabeledDataset(source.x, source.y)  # uniform weights, equal sizes: g_j = (2/N)(z_j - z'_sigma(j))
    target = LabeledDataset(target.x, target.y)
    x = source.x.clone().requires_grad_(True)
    result = dfl.sotdd(source.with_features(x), target, n_projections=3, n_moments=2)
    (grad,) = torch.autograd.grad(result.value_pow, x)
    params = _bank("sotdd", 3, 2, n_moments=2)
    expected = torch.zeros_like(x)
    n = len(source)
    for j in range(3):
        th, psi, lam = params["theta"][j], params["psi"][j], params["lam"][j]

        def zs(ds, th=th, psi=psi, lam=lam):
            t = ds.x @ th
            z = psi[0] * t
            for r in range(2):
                mom = torch.zeros(ds.num_classes, dtype=F64).index_add(0, ds.y, t ** lam[r]) / ds.class_counts()
                z = z + psi[r + 1] * mom[ds.y] / math.factorial(int(lam[r]))
            return z, t

        z1, t1 = zs(source)
        z2, _ = zs(target)
        rank1, rank2 = torch.argsort(torch.argsort(z1)), torch.sort(z2).values
        g = 2.0 / n * (z1 - rank2[rank1])
        for i in range(n):
            c = int(source.y[i])
            members = source.y == c
            total = g[members].sum()
            coefficient = psi[0] * g[i]
            for r in range(2):
                lr = int(lam[r])
                coefficient = (
                    coefficient + psi[r + 1] * total * t1[i] ** (lr - 1) / math.factorial(lr - 1) / members.sum()
                )
            expected[i] += coefficient * th / 3
    assert torch.allclose(grad, expected, rtol=1e-9, atol=1e-12)


def test_distance_matrix_matches_pairwise_values(gen):
    datasets = [make(gen, 20 + 5 * k, 3, 2 + k % 2, shift=0.3 * k, weights=k == 1) for k in range(4)]
    for method, family in (("sotdd", "sotdd"), ("busemann", "swb1dg"), ("busemann-gaussian", "swbg")):
        result = dfl.distance_matrix(datasets, method=method, n_projections=70, seed=3)
        assert result.matrix_pow.shape == (4, 4)
        assert bool((torch.diagonal(result.matrix_pow) == 0).all())
        assert torch.equal(result.matrix_pow, result.matrix_pow.T)
        for i, j in ((0, 1), (1, 3), (2, 3)):
            pair = value(datasets[i], datasets[j], family, n_projections=70, seed=3)
            assert float(result.matrix_pow[i, j]) == pytest.approx(float(pair.value_pow), abs=1e-12)
            assert float(result.stderr_pow[i, j]) == pytest.approx(pair.stderr_pow, rel=1e-6, abs=1e-12)
    exact = dfl.distance_matrix(datasets[:3], method="otdd", otdd_options={"outer": "exact"})
    assert float(exact.matrix_pow[0, 1]) == pytest.approx(
        float(dfl.otdd(datasets[0], datasets[1], outer="exact").distance_squared), rel=1e-9
    )


def test_result_fields_and_standardize(pair):
    source, target = pair
    result = dfl.sotdd(source, target, n_projections=50, standardize="joint")
    assert result.per_projection.shape == (50,)
    assert result.value_pow.ndim == 0 and result.value.ndim == 0
    assert float(result.value) == pytest.approx(float(result.value_pow) ** 0.5)
    assert result.config["standardize"]["mode"] == "joint"
    assert result.config["family"] == "sotdd" and result.config["n_projections"] == 50
    # 'joint' is the given (shift, scale) it fitted
    shift, scale = result.config["standardize"]["shift"], result.config["standardize"]["scale"]
    given_ = dfl.sotdd(source, target, n_projections=50, standardize=(shift, scale))
    assert float(given_.value_pow) == pytest.approx(float(result.value_pow), rel=1e-12)
    # a common translation no longer matters after a joint standardisation
    v = torch.tensor([3.0, -1.0, 2.0], dtype=F64)
    moved = dfl.sotdd(
        source.with_features(source.x + v), target.with_features(target.x + v), n_projections=50, standardize="joint"
    )
    assert float(moved.value_pow) == pytest.approx(float(result.value_pow), rel=1e-9)
    d = result.to_dict()
    assert set(d) >= {"value", "value_pow", "stderr", "stderr_pow", "config"}


def test_float32_and_raw_pixel_scale_stay_finite(gen):
    x = torch.rand(200, 784, generator=gen) * 255
    y = torch.arange(200) % 10
    ds = LabeledDataset(x, y)
    other = LabeledDataset(x.flip(0), y)
    result = dfl.sotdd(ds, other, n_projections=20)
    assert math.isfinite(float(result.value_pow)) and result.value_pow.dtype == torch.float32


# ---------------------------------------------------------------------- bad input
def test_bad_inputs(gen, pair):
    source, target = pair
    with pytest.raises(ShapeMismatchError, match="dimension"):
        dfl.sotdd(source, make(gen, 10, 4, 2))
    with pytest.raises(InvalidArgumentError, match="n_projections"):
        dfl.sotdd(source, target, n_projections=0)
    with pytest.raises(InvalidArgumentError, match="n_projections"):
        dfl.busemann(source, target, n_projections=-3)
    with pytest.raises(InvalidArgumentError, match="n_moments"):
        dfl.sotdd(source, target, n_moments=2.5)
    with pytest.raises(InvalidArgumentError, match="n_moments"):
        dfl.sotdd(source, target, n_moments=-1)
    with pytest.raises(InvalidArgumentError, match="variant"):
        dfl.busemann(source, target, variant="gauss")
    with pytest.raises(InvalidArgumentError, match="rates"):
        dfl.sotdd(source, target, rates="poisson")
    with pytest.raises(InvalidArgumentError, match="standardize"):
        dfl.sotdd(source, target, standardize="per-dataset")
    with pytest.raises(InvalidArgumentError, match="method"):
        dfl.distance_matrix([source, target], method="wow")
    nan = source.x.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        dfl.sotdd(LabeledDataset.from_tensors(nan, source.y, source.weights, source.classes), target)
    empty = LabeledDataset.from_tensors(source.x, source.y, source.weights, (*source.classes, "ghost"))
    with pytest.raises(EmptyDatasetError, match="ghost"):
        dfl.busemann(empty, target)
    with pytest.raises(InvalidArgumentError, match="LabeledDataset"):
        dfl.sotdd(source.x, target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_same_values_and_gradients_on_cuda(pair, family):
    source, target = pair
    cpu = value(source, target, family, n_projections=300)
    gpu = value(source.to("cuda"), target.to("cuda"), family, n_projections=300, chunk=64)
    assert torch.allclose(gpu.per_projection.cpu(), cpu.per_projection, rtol=1e-9, atol=1e-12)
    x = source.x.cuda().requires_grad_(True)
    (grad,) = torch.autograd.grad(value(source.to("cuda").with_features(x), target.to("cuda"), family).value_pow, x)
    x_cpu = source.x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(value(source.with_features(x_cpu), target, family).value_pow, x_cpu)
    assert torch.allclose(grad.cpu(), reference, rtol=1e-8, atol=1e-12)
