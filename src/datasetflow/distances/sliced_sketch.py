r"""The scalable (sketched) mode of s-OTDD and Busemann slicing: :math:`O(C\,L\,Q)` traffic, independent of ``n``.

``sotdd(..., quantiles=Q)``, ``busemann(..., quantiles=Q)`` and the flow terms ``sotdd_to`` / ``busemann_to``
with ``quantiles=Q`` (the option name of ``mmd_sw_to``'s scalable mode). The source may be sharded over ranks
(``world=``); the target is replicated. Within a class :math:`c`, the hybrid projection is
:math:`z = \psi_1 t + b_c` with :math:`t = \theta^\top x` and a per-class constant :math:`b_c` (spec §8.1), so the
source's projected law is rebuilt from per-class summaries:

* **class terms, exact** (sums, all-reduced in float64): s-OTDD's moments
  :math:`\sum_{j \in c} (a_j/\alpha_c)\, t_j^{\lambda_r}/\lambda_r!`, SWB1DG's class mean, SWBG's label-space
  mean and covariance (once per call, :math:`C(d' + d'^2)` numbers);
* **the projected class laws** :math:`t \mid c`, by the mergeable quantile sketch of MMD-SW
  (:func:`~datasetflow.solvers.sliced.sketch_projections`: ranges all-reduced MIN/MAX, ``Q`` bin counts
  all-reduced SUM, exact integers), a ``K``-atom measure :math:`\hat\mu_{c,l}` (``K = 4Q``); SWB1DG's L-statistic
  :math:`\tilde\sigma_c` is that of the atoms;
* the source's :math:`z` law :math:`\sum_c \alpha_c\,(\psi_1 \hat\mu_{c,l} + \hat b_c)`, compared *exactly*
  with the target's (1-D transport on merged quantile levels).

Traffic per chunk of ``B`` directions: :math:`8(C + 2CB + CBQ)` bytes for the sketch, :math:`8CB` for the
class terms (s-OTDD, SWB1DG), plus :math:`8(2C + 1)` per call (class masses, the weight check) and, for SWBG,
:math:`8C(d' + d'^2)` per call. Nothing is all-gathered (except once, to fit ``label_map="pca"``).

**Error, stated and returned.** Per class and direction the sketch is within
:math:`e_{q,c,l} = \Delta_{c,l} + (\frac1K\sum_k \mathrm{osc}_{c,l,k}^q)^{1/q}` of the class's projected law in
:math:`W_q` (:func:`~datasetflow.solvers.sliced.sketch_direction_error`). The class term of s-OTDD and SWBG is
exact; SWB1DG's :math:`\tilde\sigma = \int_0^1 Q(u)\Phi^{-1}(u)\,du` moves by at most
:math:`W_2 \cdot \|\Phi^{-1}\|_{L^2} \le e_{2,c,l}` (Cauchy-Schwarz, :math:`\|\Phi^{-1}\|_{L^2} = 1`). Coupling class
by class,

.. math:: W_p(\hat z_l\#D, z_l\#D) \le E_l = \Big(\sum_c \alpha_c \big(|\psi_{1,l}|\, e_{p,c,l}
          + [\text{SWB1DG}]\;|\psi_{2,l}|\sqrt{1 - m_{1,l}^2}\; e_{2,c,l}\big)^p\Big)^{1/p},

so each :math:`W_p(\cdot, z_l\#D')` moves by at most :math:`E_l` (triangle inequality), and by Minkowski's
inequality over directions the distance ``value`` (the :math:`p`-th root of ``value_pow``) is within
:math:`\delta = (\frac1L\sum_l E_l^p)^{1/p}` of the exact mode's for the same directions
(``SlicedResult.error_bound``); ``value_pow`` within :math:`(\hat v^{1/p} + \delta)^p - \hat v`
(``error_bound_pow``). A worst case: the measured error is far below it (``tests/test_distributed_objectives.py``).

Gradients reach each rank's own points through their projections (the sketch sends atom ``k``'s gradient to
the points whose merged-CDF level falls in its level interval, scaled by :math:`K/n_c`) and through the class
terms (the all-reduce's backward is the identity: every rank holds the whole objective); no collective in the
backward. The target is detached. Class weights must be uniform inside every class (the sketch counts points).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..costs.linalg import nuclear_norm, psd_sqrt
from ..data.dataset import LabeledDataset, check_dataset_pair
from ..data.sharding import gather_dataset
from ..distributed.comm import World, all_reduce_max, all_reduce_sum, get_world
from ..errors import InvalidArgumentError, NonFiniteError
from ..solvers.sliced import (
    argsort_rows,
    sketch_direction_error,
    sketch_projections,
    wasserstein_1d_sorted,
)
from .sliced import (
    SlicedResult,
    _bank_order,
    _check_dataset,
    _chunks,
    _class_sum,
    _default_chunk,
    _effective_theta,
    _Features,
    _normal_pdf_of_quantile,
    _power,
    _prepare,
    _root,
    _rows_by_order,
    _Side,
    _sketch,
    _standardized,
    fit_preprocessing,
)

__all__ = ["sketched_distance", "fit_sharded_preprocessing", "check_quantiles"]


def check_quantiles(quantiles: Any) -> int | None:
    """``quantiles`` (``Q``, the sketch's bins) as an int, or None (the exact mode)."""
    if quantiles is None:
        return None
    if isinstance(quantiles, bool) or not isinstance(quantiles, int) or quantiles < 1:
        raise InvalidArgumentError(
            f"quantiles must be None (exact mode) or a positive int Q (bins of the scalable sketches), "
            f"got {quantiles!r}."
        )
    return int(quantiles)


def fit_sharded_preprocessing(
    part: LabeledDataset,
    target: LabeledDataset,
    world: World,
    *,
    family: str,
    standardize: Any,
    label_map: Any,
    label_dim: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`~datasetflow.distances.sliced.fit_preprocessing` on ``(source, target)`` with the source sharded.

    ``standardize="joint"`` comes from all-reduced sums (the source mean, ``d`` numbers, and its second moment
    about the shift, one number); SWBG's ``label_map="pca"`` is fitted on the source gathered once
    (``n (d + 2)`` numbers, at the first evaluation of a flow only). Same constants as one process up to rounding.
    """
    if not world.distributed:
        return fit_preprocessing(
            (part, target), family=family, standardize=standardize, label_map=label_map, label_dim=label_dim, seed=seed
        )
    fitted_standardize: Any = standardize
    if isinstance(standardize, str) and standardize == "joint":
        with torch.no_grad():
            x = part.x.detach().double()
            w = part.weights.detach().double()
            source_mean = all_reduce_sum(w @ x, world).cpu()
            target_mean = (target.weights.double() @ target.x.double()).cpu()
            shift = torch.stack([source_mean, target_mean]).mean(0)
            second_source = float(all_reduce_sum((w @ (x - shift.to(x.device)).square().sum(1)).reshape(1), world))
            tx = target.x.double()
            second_target = float(target.weights.double() @ (tx - shift.to(tx.device)).square().sum(1))
        scale = math.sqrt((second_source + second_target) / 2 / part.dim)
        fitted_standardize = (shift, torch.tensor([scale if scale > 0 else 1.0], dtype=torch.float64))
    out: dict[str, Any] = {"standardize": fitted_standardize, "label_map": label_map}
    if family == "swbg":
        needs_data = label_map == "pca" or (label_map is None and part.dim > 64)
        source = gather_dataset(part, world) if needs_data else part
        out["label_map"] = fit_preprocessing(
            (source, target),
            family=family,
            standardize=fitted_standardize,
            label_map=label_map,
            label_dim=label_dim,
            seed=seed,
        )["label_map"]
    return out


class _SketchedRunner:
    """The chunk loop of the scalable mode (forward and, when asked, the gradient of this rank's points)."""

    def __init__(self, bank, setup, source: LabeledDataset, target: LabeledDataset, chunk, world, bins) -> None:
        self.bank, self.setup, self.chunk, self.world, self.bins = bank, setup, chunk, world, bins
        self.levels = 4 * bins
        self.source, self.target = source, target
        self.num_classes = source.num_classes
        f64, device = torch.float64, source.x.device
        w = source.weights.detach().to(f64)
        y = source.y
        self.masses = all_reduce_sum(torch.zeros(self.num_classes, dtype=f64, device=device).index_add(0, y, w), world)
        counts = all_reduce_sum(torch.bincount(y, minlength=self.num_classes).to(f64), world)
        if bool((counts == 0).any()):
            empty = [source.classes[k] for k in torch.nonzero(counts == 0).flatten().tolist()]
            raise InvalidArgumentError(f"source has classes {empty!r} without samples (on any rank).")
        # the sketch counts points: class weights must be uniform inside every class (over all ranks)
        expected = (self.masses / counts)[y]
        gap = (w - expected).abs().max() / expected.max() if len(y) else w.new_zeros(())
        if float(all_reduce_max(gap.reshape(1), world)) > 1e-9:
            raise InvalidArgumentError(
                "quantiles (the scalable sketches) need uniform weights inside every source class "
                "(e.g. dataset.with_class_weights(...)); use the exact mode (quantiles=None) for other weights."
            )
        self.over_mass = w / self.masses[y]
        steps = torch.arange(self.levels + 1, dtype=f64, device=device) / self.levels
        pdf = _normal_pdf_of_quantile(steps)
        self.bracket = pdf[:-1] - pdf[1:]  # exact sigma~ weights of K equal-mass sorted atoms
        self.atom_weights = (self.masses / self.levels).repeat_interleave(self.levels)  # (C K,)
        self.uniform_atoms = bool((self.masses == self.masses[0]).all())  # equal class masses: equal atoms
        self.target_side = _Side.build(target)
        self.target_x = self.target_side.arrange(target.x.detach())
        self.target_features = _Features(setup, self.target_side, self.target_x, False)
        self.per_projection: torch.Tensor | None = None
        self.error_pow_sum = 0.0

    # ------------------------------------------------------------------ class Gaussians (SWBG)
    def _gaussians(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, d')`` means and ``(C, d', d')`` covariance square roots from all-reduced sums (float64)."""
        setup, y, C = self.setup, self.source.y, self.num_classes
        lab = _standardized(x.to(torch.float64), setup.affine)
        if setup.label_map is not None:
            lab = lab @ setup.label_map.to(lab).T
        w = self.over_mass[:, None]
        # raw sums only (no partial sum depends on a replicated quantity, so the all-reduce's identity backward
        # is exact and the backward needs no collective): the covariance is E[l l^T] - m m^T, in float64
        means = all_reduce_sum(lab.new_zeros(C, lab.shape[1]).index_add(0, y, lab * w), self.world)
        second = lab.new_zeros(C, lab.shape[1], lab.shape[1]).index_add(0, y, torch.einsum("ni,nj->nij", lab * w, lab))
        covs = all_reduce_sum(second, self.world) - means[:, :, None] * means[:, None, :]
        return means, psd_sqrt(0.5 * (covs + covs.mT))

    # ------------------------------------------------------------------ one chunk
    def _class_term(self, t, params, atoms, gauss) -> torch.Tensor:
        """``(B, C)`` class constants :math:`b_c` (replicated), differentiable in this rank's ``t`` / atoms."""
        setup, y, C, psi = self.setup, self.source.y, self.num_classes, params["psi"]
        if setup.family == "sotdd":
            lam = params["lam"]
            if lam.shape[1] == 0:
                return t.new_zeros(t.shape[0], C)
            lam64 = lam.to(t.dtype)
            factor = psi[:, 1:] * torch.exp(-torch.lgamma(lam64 + 1.0))  # (B, k)
            big = float(t.detach().abs().max()) if t.numel() else 0.0
            total = t.new_zeros(t.shape)
            for r in range(lam.shape[1]):
                total = total + _power(t, lam64[:, r : r + 1], big) * factor[:, r : r + 1]
            return all_reduce_sum(_class_sum(total * self.over_mass, y, C), self.world)
        if setup.family == "swb1dg":
            m1 = params["m1"][:, None]
            mean = all_reduce_sum(_class_sum(t * self.over_mass, y, C), self.world)
            sigma = torch.einsum("ckb,k->bc", atoms, self.bracket)
            return -psi[:, 1:2] * m1 * mean - psi[:, 1:2] * torch.sqrt(1.0 - m1 * m1) * (sigma - setup.eps)
        means, roots = gauss
        eps = setup.eps
        S = params["S"]
        nuclear = nuclear_norm(S[:, None] @ roots[None])  # (B, C)
        trace = torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)[:, None]
        return psi[:, 1:2] * (-params["m_dir"] @ means.T + eps * trace - math.sqrt(eps) * nuclear)

    def _chunk(self, x, params, gauss) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w (B,), E_l^p (B,))`` of one chunk: the sketched :math:`W_p^p` and the bound's terms."""
        setup, C, K = self.setup, self.num_classes, self.levels
        theta, offset = _effective_theta(params, setup.affine)
        t = (theta @ x.T).to(torch.float64)  # (B, n_r)
        if offset is not None:
            t = t - offset[:, None]
        sketch = sketch_projections(t.T, self.source.y, C, self.world, bins=self.bins, levels=K, p=setup.p)
        atoms = sketch.sorted.values  # (C, K, B)
        b = self._class_term(t, params, atoms, gauss)
        psi1 = params["psi"][:, :1]
        z = (psi1[:, :, None] * atoms.permute(2, 0, 1) + b[:, :, None]).reshape(t.shape[0], C * K)
        order = argsort_rows(z).to(z.device)
        z_sorted = z.gather(1, order)
        cum = None if self.uniform_atoms else self.atom_weights[order].cumsum(dim=1)
        with torch.no_grad():
            v, cum_b, _, _ = _sketch(self.target_x, self.target_features, params)
        w = wasserstein_1d_sorted(z_sorted, cum, v.to(z_sorted.dtype), cum_b, setup.p)
        with torch.no_grad():
            per_class = psi1.abs().T * sketch_direction_error(sketch, setup.p)  # (C, B)
            if setup.family == "swb1dg":
                m1 = params["m1"][None, :]
                per_class = per_class + params["psi"][:, 1].abs()[None, :] * torch.sqrt(1.0 - m1 * m1) * (
                    sketch_direction_error(sketch, 2.0)
                )
            bound_terms = self.masses @ per_class.pow(setup.p)
        return w, bound_terms

    def run(self, x: torch.Tensor, need: bool) -> tuple[torch.Tensor, torch.Tensor]:
        bank, L = self.bank, self.bank.n_projections
        values, bounds, grad = [], [], torch.zeros_like(x)
        with torch.enable_grad() if need else torch.no_grad():
            leaf = x.detach().requires_grad_(need)
            gauss = self._gaussians(leaf) if self.setup.family == "swbg" else None
            gauss_leaves = None if gauss is None else tuple(g.detach().requires_grad_(need) for g in gauss)
            stats_grads = None if gauss is None else [torch.zeros_like(g) for g in gauss]
            for start, stop in _chunks(L, self.chunk):
                params, perm = _rows_by_order(bank.chunk(start, stop, x.dtype, x.device))
                w, terms = self._chunk(leaf, params, gauss_leaves)
                if need:
                    inputs = [leaf, *(gauss_leaves or ())]
                    grads = torch.autograd.grad(w.sum() / L, inputs, allow_unused=True)
                    if grads[0] is not None:
                        grad += grads[0]
                    for acc, g in zip(stats_grads or (), grads[1:], strict=True):
                        if g is not None:
                            acc += g
                values.append(_bank_order(w.detach().to(torch.float64), perm))
                bounds.append(terms)
            if need and gauss is not None:
                (extra,) = torch.autograd.grad(
                    sum((g * a).sum() for g, a in zip(gauss, stats_grads, strict=True)), leaf, allow_unused=True
                )
                if extra is not None:
                    grad += extra
        self.error_pow_sum = float(torch.cat(bounds).sum())
        return torch.cat(values), grad


class _SketchedPow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, runner, x):  # type: ignore[override]
        per, grad = runner.run(x, ctx.needs_input_grad[1])
        ctx.save_for_backward(grad)
        runner.per_projection = per
        return per.mean().to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return None, grad_output.to(grad.dtype) * grad


def sketched_distance(
    source: LabeledDataset,
    target: LabeledDataset,
    *,
    family: str,
    quantiles: int,
    n_projections: Any,
    n_moments: Any,
    rates: str,
    p: Any,
    seed: Any,
    eps: Any,
    label_map: Any,
    label_dim: Any,
    standardize: Any,
    chunk: Any,
    world: Any,
) -> SlicedResult:
    """:func:`~datasetflow.distances.sliced.sliced_distance` in the scalable mode (see the module docstring)."""
    quantiles = check_quantiles(quantiles)
    world = World() if world is None else get_world(world)
    check_dataset_pair(("source", "target"), source, target)
    _check_dataset("target", target)  # the source's classes may be empty on one shard: checked over all ranks
    if not bool(torch.isfinite(source.x.detach()).all()):
        raise NonFiniteError(f"source.x of shape {tuple(source.x.shape)} holds NaN or Inf.")
    if target.x.device != source.x.device or target.x.dtype != source.x.dtype:
        target = target.to(device=source.x.device, dtype=source.x.dtype)
    fitted = fit_sharded_preprocessing(
        source,
        target,
        world,
        family=family,
        standardize=standardize,
        label_map=label_map,
        label_dim=label_dim,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
    )
    bank, setup, config = _prepare(
        family,
        (source, target),
        n_projections=n_projections,
        n_moments=n_moments,
        rates=rates,
        p=p,
        seed=seed,
        eps=eps,
        label_map=fitted["label_map"],
        label_dim=label_dim,
        standardize=fitted["standardize"],
    )
    n_source = int(all_reduce_sum(torch.tensor([float(len(source))], dtype=torch.float64), world))
    chunk = _default_chunk(chunk, bank.n_projections, len(source) + 4 * quantiles * source.num_classes + len(target))
    runner = _SketchedRunner(bank, setup, source, target, chunk, world, quantiles)
    value_pow = _SketchedPow.apply(runner, source.x)
    per = runner.per_projection
    L = per.numel()
    stderr_pow = float(per.std(correction=1) / math.sqrt(L)) if L > 1 else 0.0
    value = _root(value_pow, setup.p)
    root = float(value.detach())
    stderr = 0.0 if stderr_pow == 0.0 else (stderr_pow / (setup.p * root ** (setup.p - 1)) if root > 0 else math.inf)
    bound = (runner.error_pow_sum / L) ** (1.0 / setup.p)
    bound_pow = (root + bound) ** setup.p - float(value_pow.detach())
    config.update(
        chunk=chunk,
        n_source=n_source,
        n_target=len(target),
        dim=source.dim,
        mode="sketch",
        quantiles=quantiles,
        levels=4 * quantiles,
        world_size=world.size,
        error_bound=bound,
        error_bound_pow=bound_pow,
    )
    if isinstance(standardize, str) and standardize == "joint":
        config["standardize"] = {**config["standardize"], "mode": "joint"}
    return SlicedResult(
        value=value,
        value_pow=value_pow,
        stderr_pow=stderr_pow,
        stderr=stderr,
        per_projection=per,
        config=config,
        error_bound=bound,
        error_bound_pow=bound_pow,
    )
