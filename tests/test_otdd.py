"""otdd(): closed forms, POT oracles on the augmented cost, gradients, properties, bad input."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import generators as G
from datasetflow import ClassStats, ExactLabelCost, GaussianLabelCost, LabeledDataset, SinkhornLabelCost, otdd
from datasetflow.errors import EmptyDatasetError, InvalidArgumentError, NonFiniteError, ShapeMismatchError
from generators import gaussian_classes

pytestmark = pytest.mark.fast


def _augmented_cost(source, target, label_matrix, feature_weight=1.0, label_weight=1.0):
    """The OTDD ground cost built explicitly as a numpy matrix (the oracle's input)."""
    xs, xt = source.x.detach().numpy(), target.x.detach().numpy()
    features = ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1)
    labels = label_matrix.detach().numpy()[source.y.numpy()][:, target.y.numpy()]
    return feature_weight * features + label_weight * labels


@pytest.mark.parametrize("inner", ["gaussian", "exact", "sinkhorn"])
def test_exact_outer_equals_emd2_on_augmented_cost(small_pair, inner):
    source, target = small_pair
    result = otdd(source, target, inner=inner, outer="exact", feature_weight=0.7, label_weight=1.3)
    cost = _augmented_cost(source, target, result.label_distances, 0.7, 1.3)
    expected = ot.emd2(source.weights.numpy(), target.weights.numpy(), cost)
    assert result.distance_squared.item() == pytest.approx(expected, rel=1e-12)
    assert result.distance.item() == pytest.approx(np.sqrt(expected), rel=1e-12)
    assert result.label_distances.shape == (3, 2)


def test_sinkhorn_outer_equals_pot_on_augmented_cost(small_pair):
    source, target = small_pair
    result = otdd(source, target, reg=5.0, debiased=False, tol=1e-12, max_iter=20000)
    cost = _augmented_cost(source, target, result.label_distances)
    a, b = source.weights.numpy(), target.weights.numpy()
    full = ot.solve(cost, a, b, reg=5.0, tol=1e-13, max_iter=100000)
    linear = ot.sinkhorn2(a, b, cost, 5.0, stopThr=1e-13, numItermax=100000)
    assert result.distance_squared.item() == pytest.approx(float(full.value), rel=1e-9)
    assert result.ot.value_linear.item() == pytest.approx(float(linear), rel=1e-9)


def test_inner_exact_label_distances_match_emd2(small_pair):
    source, target = small_pair
    matrix = ExactLabelCost().pairwise(source, target)
    xs, xt = source.x.numpy(), target.x.numpy()
    for i in range(source.num_classes):
        for j in range(target.num_classes):
            cloud1, cloud2 = xs[source.y.numpy() == i], xt[target.y.numpy() == j]
            expected = ot.emd2(ot.unif(len(cloud1)), ot.unif(len(cloud2)), ot.dist(cloud1, cloud2))
            assert matrix[i, j].item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("inner", ["gaussian", "exact", "sinkhorn"])
def test_distance_to_itself_is_zero(gen, inner):
    data = gaussian_classes(gen)
    exact = otdd(data, data, inner=inner, outer="exact")
    assert exact.distance_squared.item() == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(exact.label_distances.diagonal(), torch.zeros(3, dtype=torch.float64), atol=1e-8)
    debiased = otdd(data, data, inner=inner, tol=1e-10)
    assert debiased.distance_squared.item() == pytest.approx(0.0, abs=1e-8)


def test_shifted_copy_gives_shift_squared(gen):
    """Translating every sample by v adds |v|^2 to the feature term and to the label term of every
    coupling (see generators.translated_copy): OTDD^2 = 2 |v|^2, and |v|^2 without the label term."""
    data = gaussian_classes(gen, spread=20.0)
    case = G.translated_copy(data, [0.3, -0.2, 0.1, 0.4])
    result = otdd(case.source, case.target, outer="exact")
    assert result.distance_squared.item() == pytest.approx(case.distance_squared, rel=1e-9)
    features_only = G.translated_copy(data, [0.3, -0.2, 0.1, 0.4], label_weight=0.0)
    value = otdd(case.source, case.target, outer="exact", label_weight=0.0).distance_squared.item()
    assert value == pytest.approx(features_only.distance_squared, rel=1e-9)


@pytest.mark.parametrize(
    ("inner", "outer"),
    [
        ("gaussian", "exact"),
        ("exact", "exact"),
        ("sinkhorn-fixed-reg", "exact"),
        ("gaussian", "sinkhorn"),
        ("exact", "sinkhorn"),
    ],
)
def test_translated_labeled_mixture_is_exact_without_class_separation(gen, inner, outer):
    """(feature_weight + label_weight) |v|^2 also for overlapping classes and for the debiased
    Sinkhorn outer problem at its default (relative) reg; the coupling is the identity."""
    data = gaussian_classes(gen, spread=1.0)
    case = G.translated_copy(data, [0.5, -0.4, 0.2, 0.3], feature_weight=0.7, label_weight=1.3)
    # (the identity needs one reg for all class pairs, so the Sinkhorn label cost gets a fixed one; its
    # combination with the Sinkhorn outer problem is left out only because it converges slowly)
    label_cost = SinkhornLabelCost(reg=2.0, tol=1e-9) if inner == "sinkhorn-fixed-reg" else inner
    options = {"tol": 1e-7, "max_iter": 20_000} if outer == "sinkhorn" else {}
    result = otdd(
        case.source, case.target, inner=label_cost, outer=outer, feature_weight=0.7, label_weight=1.3, **options
    )
    assert result.distance_squared.item() == pytest.approx(case.distance_squared, rel=1e-8)
    assert case.lower <= result.distance_squared.item() * (1 + 1e-8)
    if outer == "exact":
        torch.testing.assert_close(result.ot.plan, torch.eye(len(data), dtype=torch.float64) / len(data))


@pytest.mark.parametrize("outer", ["exact", "sinkhorn"])
def test_relabelled_copy_is_at_distance_zero(gen, outer):
    data = gaussian_classes(gen)
    case = G.relabelled_copy(data, torch.Generator().manual_seed(18))
    result = otdd(case.source, case.target, outer=outer, tol=1e-10 if outer == "sinkhorn" else None)
    assert result.distance_squared.item() == pytest.approx(case.distance_squared, abs=1e-8)
    for name, renamed in case.correspondence.items():
        i, j = result.source_classes.index(name), result.target_classes.index(renamed)
        assert result.label_distances[i, j].item() == pytest.approx(0.0, abs=1e-8)
        assert result.label_distances[i].min().item() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("inner", ["gaussian", "exact"])
@pytest.mark.parametrize("case_name", ["random", "noisy-relabelled", "mixed-sizes"])
def test_exact_otdd_lies_between_coupling_bounds(gen, inner, case_name):
    """Upper: the product (or one-to-one) coupling; lower: feature-only OT plus label-only OT."""
    if case_name == "random":
        source, target = gaussian_classes(gen, per_class=8), gaussian_classes(gen, per_class=8, spread=2.0)
    elif case_name == "noisy-relabelled":
        case = G.relabelled_copy(gaussian_classes(gen, per_class=8), gen, noise=0.5)
        source, target = case.source, case.target
    else:
        source, target = gaussian_classes(gen, num_classes=2, per_class=9), gaussian_classes(gen, per_class=5)
    reference = G.reference_label_distances(source, target, inner)
    lower, upper = G.otdd_bounds(source, target, reference, feature_weight=0.8, label_weight=1.5)
    result = otdd(source, target, inner=inner, outer="exact", feature_weight=0.8, label_weight=1.5)
    np.testing.assert_allclose(result.label_distances.numpy(), reference, rtol=1e-8, atol=1e-10)
    value = result.distance_squared.item()
    assert lower * (1 - 1e-9) <= value <= upper * (1 + 1e-9)
    assert lower < upper


def test_label_distances_of_classes_with_exact_gaussian_moments(gen):
    case = G.labeled_gaussians(gen, 3, 2, 4, per_class=[6, 9, 12, 5, 20], structure="commuting")
    result = otdd(case.source, case.target, outer="exact")
    torch.testing.assert_close(result.label_distances, case.label_distances, rtol=1e-9, atol=1e-9)


def test_gaussian_label_cost_equals_bures_for_gaussian_classes(gen):
    """For a single class per side, the label distance is the Bures distance of the samples' moments."""
    x1 = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    x2 = 2 * torch.randn(60, 3, generator=gen, dtype=torch.float64) + 1
    value = GaussianLabelCost().pairwise(LabeledDataset(x1, [0] * 50), LabeledDataset(x2, ["a"] * 60))
    expected = (
        ot.gaussian.bures_wasserstein_distance(
            x1.mean(0).numpy(), x2.mean(0).numpy(), torch.cov(x1.T).numpy(), torch.cov(x2.T).numpy()
        )
        ** 2
    )
    assert value.item() == pytest.approx(float(expected), rel=1e-9)


def test_labels_of_any_type_and_different_label_sets(gen):
    source = gaussian_classes(gen, num_classes=2, labels=[3, 7])
    target = gaussian_classes(gen, num_classes=3, labels=["cat", "dog", "emu"])
    result = otdd(source, target, outer="exact")
    assert result.source_classes == (3, 7)
    assert result.target_classes == ("cat", "dog", "emu")
    assert result.label_distances.shape == (2, 3)
    as_dict = result.to_dict()
    assert as_dict["source_classes"] == [3, 7] and len(as_dict["label_distances"]) == 2


@pytest.mark.parametrize("outer", ["exact", "sinkhorn"])
def test_gradient_with_respect_to_source_features(gen, outer):
    source, target = gaussian_classes(gen, per_class=6), gaussian_classes(gen, per_class=5)
    x = source.x.clone().requires_grad_()

    def value(features):
        options = {"reg": 3.0, "tol": 1e-13, "max_iter": 50000} if outer == "sinkhorn" else {}
        return otdd(source.with_features(features), target, outer=outer, **options).distance_squared

    assert torch.autograd.gradcheck(value, (x,), atol=1e-5)


def test_gradient_with_respect_to_class_statistics(gen):
    """jd-fl flows move class means and covariances as parameters."""
    source, target = gaussian_classes(gen, per_class=8, dim=3), gaussian_classes(gen, per_class=8, dim=3)
    base = source.class_stats()
    means = base.means.detach().clone().requires_grad_()
    covs = base.covariance_matrices().detach().clone().requires_grad_()

    def value(m, c):
        stats = ClassStats(means=m, weights=base.weights, counts=base.counts, classes=base.classes, covariances=c)
        return otdd(source, target, outer="exact", source_stats=stats).distance_squared

    out = value(means, covs)
    grad_m, grad_c = torch.autograd.grad(out, (means, covs))
    assert grad_m.abs().sum() > 0 and torch.isfinite(grad_c).all()
    assert torch.autograd.gradcheck(value, (means, covs))


def test_envelope_and_autodiff_agree_through_otdd(gen):
    source, target = gaussian_classes(gen, per_class=6), gaussian_classes(gen, per_class=5)
    grads = []
    for grad in ("envelope", "autodiff"):
        x = source.x.clone().requires_grad_()
        out = otdd(source.with_features(x), target, reg=2.0, tol=1e-13, max_iter=20000, grad=grad)
        grads.append(torch.autograd.grad(out.distance_squared, x)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=1e-7)


def test_default_reg_is_relative_to_cost_scale(gen):
    data = gaussian_classes(gen)
    other = gaussian_classes(gen)
    small = otdd(data, other)
    big = otdd(data.scaled(10.0), other.scaled(10.0))
    assert big.config["reg"] == pytest.approx(100 * small.config["reg"], rel=1e-9)
    assert big.distance_squared.item() == pytest.approx(100 * small.distance_squared.item(), rel=1e-4)
    assert small.config["reg_is_default"]


def test_float32_agrees_with_float64(gen):
    source, target = gaussian_classes(gen), gaussian_classes(gen)
    r64 = otdd(source, target)
    r32 = otdd(source.to(dtype=torch.float32), target.to(dtype=torch.float32))
    assert r32.distance_squared.dtype == torch.float32
    assert r32.distance_squared.item() == pytest.approx(r64.distance_squared.item(), rel=1e-4)


# ----------------------------------------------------------------------------- properties
def _dataset_from_seed(seed: int, num_classes: int, per_class: int) -> LabeledDataset:
    return gaussian_classes(torch.Generator().manual_seed(seed), num_classes=num_classes, per_class=per_class, dim=3)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    c1=st.integers(1, 3),
    c2=st.integers(1, 3),
    inner=st.sampled_from(["gaussian", "exact"]),
)
def test_exact_outer_is_symmetric(seed, c1, c2, inner):
    source, target = _dataset_from_seed(seed, c1, 4), _dataset_from_seed(seed + 1, c2, 5)
    forward = otdd(source, target, inner=inner, outer="exact")
    backward = otdd(target, source, inner=inner, outer="exact")
    assert forward.distance_squared.item() == pytest.approx(backward.distance_squared.item(), rel=1e-9)
    torch.testing.assert_close(forward.label_distances, backward.label_distances.T, atol=1e-9, rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), outer=st.sampled_from(["exact", "sinkhorn"]))
def test_invariant_to_point_order_and_relabelling(seed, outer):
    source, target = _dataset_from_seed(seed, 3, 5), _dataset_from_seed(seed + 7, 2, 6)
    reference = otdd(source, target, outer=outer, tol=1e-10).distance_squared.item()
    perm = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    renamed = {0: "z", 1: "x", 2: "y"}
    shuffled = LabeledDataset(source.x[perm], [renamed[k] for k in source.y[perm].tolist()])
    assert shuffled.classes != source.classes
    value = otdd(shuffled, target, outer=outer, tol=1e-10).distance_squared.item()
    assert value == pytest.approx(reference, rel=1e-7, abs=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_debiased_self_distance_vanishes(seed):
    data = _dataset_from_seed(seed, 2, 6)
    assert otdd(data, data, tol=1e-10).distance_squared.item() == pytest.approx(0.0, abs=1e-8)


# ----------------------------------------------------------------------------- bad input
def test_nan_features_rejected():
    x = np.zeros((4, 2))
    x[1, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"x of shape \(4, 2\)"):
        LabeledDataset(x, [0, 0, 1, 1])
    x[1, 0] = np.inf
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        LabeledDataset(x, [0, 0, 1, 1])


def test_dimension_mismatch_rejected(gen):
    a = gaussian_classes(gen, dim=4)
    b = gaussian_classes(gen, dim=5)
    with pytest.raises(ShapeMismatchError, match=r"\(36, 4\).*\(36, 5\)"):
        otdd(a, b)


def test_empty_dataset_rejected():
    with pytest.raises(EmptyDatasetError, match=r"shape \(0, 3\)"):
        LabeledDataset(np.zeros((0, 3)), [])


def test_single_sample_class_warns_and_still_computes(gen):
    source = LabeledDataset(torch.randn(5, 3, generator=gen, dtype=torch.float64), [0, 0, 0, 0, 1])
    target = gaussian_classes(gen, dim=3)
    with pytest.warns(UserWarning, match=r"\[1\] have a single sample"):
        result = otdd(source, target, outer="exact")
    assert torch.isfinite(result.distance_squared)


@pytest.mark.parametrize("reg", [-1.0, 0.0, float("nan")])
def test_bad_reg_rejected(small_pair, reg):
    with pytest.raises(InvalidArgumentError, match="reg"):
        otdd(*small_pair, reg=reg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inner": "gromov"}, "gaussian"),
        ({"outer": "emd"}, "exact"),
        ({"feature_weight": -1.0}, "feature_weight"),
        ({"label_weight": float("inf")}, "label_weight"),
        ({"outer": "exact", "reg": 1.0}, "no reg"),
    ],
)
def test_bad_options_rejected(small_pair, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        otdd(*small_pair, **kwargs)


def test_cloud_label_costs_refuse_stats(small_pair):
    source, target = small_pair
    with pytest.raises(InvalidArgumentError, match="Gaussian label cost"):
        otdd(source, target, inner=SinkhornLabelCost(), source_stats=source.class_stats())
