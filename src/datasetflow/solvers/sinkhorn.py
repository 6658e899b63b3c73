r"""Log-domain Sinkhorn for entropic OT on dense or implicitly defined (chunked) costs.

Solves

.. math::
    OT_\varepsilon(a, b) = \min_{P \in \Pi(a, b)} \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P \,\|\, a b^\top)
                        = \max_{f, g} \langle f, a\rangle + \langle g, b\rangle
                          - \varepsilon \langle e^{(f \oplus g - C)/\varepsilon} - 1, a b^\top\rangle

by alternating the soft-min updates

.. math::
    f_i = -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon}, \qquad
    g_j = -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon},

after an optional :math:`\varepsilon`-scaling warm start (``eps_scaling``), *until* the marginal
error is below ``tol`` (annealing alone is not enough: its gradients can be off by tens of
percent). The fixed-point map :math:`g \mapsto T_b(T_a(g))` is Anderson-accelerated, which
matters most for nearly identical measures (the end of every flow), where plain Sinkhorn
stalls. The returned pair has ``f = T_a(g)``, so the row marginals are exact and the
reported error is :math:`\|P^\top 1 - b\|_1`. Self-transport problems (debiasing) use the
symmetric averaged update :math:`f \leftarrow \tfrac12 (f + T(f))`.

The *dense* backend materialises ``C`` once; the *chunked* backend recomputes row blocks
of an implicit cost at every sweep (one pass over ``C`` per iteration, memory
``O((n + m) \cdot \text{block})``), so ``n = m = 20\,000`` fits in a few hundred MB.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..costs.ground import CostOperator
from ..errors import ConvergenceWarning, InvalidArgumentError, RegularizationError
from ..utils import flush_subnormals_
from .envelope import attach_envelope
from .result import OTResult

__all__ = ["sinkhorn", "check_reg"]


def check_reg(reg: float, scale: float, dtype: torch.dtype) -> float:
    """Validate an entropic regularisation against the cost scale and the float precision."""
    if not isinstance(reg, (int, float)) or isinstance(reg, bool) or not math.isfinite(reg) or reg <= 0:
        raise InvalidArgumentError(f"reg must be a positive finite float for entropic OT, got {reg!r}.")
    finfo = torch.finfo(dtype)
    if reg < finfo.tiny or reg < abs(scale) * finfo.eps:
        raise RegularizationError(
            f"reg={reg!r} underflows: with a cost scale of {scale:.4g}, C/reg exceeds the precision of {dtype} "
            f"(eps={finfo.eps:.2g}). Use reg >= {abs(scale) * finfo.eps * 10:.3g}, a float64 cost, or method='exact'."
        )
    return float(reg)


#: Exponents below this (relative to the largest term) are raised to it in :func:`_logsumexp`.
EXP_FLOOR = -80.0


def _logsumexp(values: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`\log \sum \exp` along ``dim``, with the shifted exponents clamped below at ``EXP_FLOOR``.

    Vectorised ``exp`` leaves its fast path for arguments far below the float range, and at small ``reg``
    most entries of :math:`(f \oplus g - C)/\varepsilon` lie there (:math:`-10^4`): ``torch.logsumexp``
    measured 5x slower on them than on O(1) values. Each clamped term contributes at most
    :math:`e^{-80} \approx 2 \cdot 10^{-35}` of the largest one, below float64 rounding for any
    ``n < 10^{18}``. Rows that are entirely ``-inf`` are not supported (Sinkhorn never forms them:
    the weights sum to 1).
    """
    if torch.is_grad_enabled() and values.requires_grad:  # autodiff through the iterations: out of place
        top = values.amax(dim=dim, keepdim=True).detach()
        return (values - top).clamp_min(EXP_FLOOR).exp().sum(dim).log() + top.squeeze(dim)
    return _logsumexp_(values.clone(), dim)


def _logsumexp_(values: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`_logsumexp` computed in place in ``values`` (a work buffer, overwritten; no autograd)."""
    top = values.amax(dim=dim, keepdim=True)
    return values.sub_(top).clamp_min_(EXP_FLOOR).exp_().sum(dim).log_() + top.squeeze(dim)


def _exp_plan(exponent: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``exp`` of plan exponents (in place), cast to ``dtype`` (default: theirs), entries below ``tiny`` set to 0.

    The exponents are clamped below at ``log(tiny)``, which keeps ``exp`` on its fast path (see
    :func:`_logsumexp`), and the entries at or below ``2 tiny`` (the clamped ones, and those that would be
    subnormal after the cast) are **0**: their sum over any plan is below ``2 n m tiny``, far below rounding, and
    subnormal operands slow the plan's products down. Measured: at ``reg = 0.2`` on the 10 x 200 x 784 OTDD
    benchmark the plan is nearly a permutation, ``exp(log(tiny))`` rounded below ``tiny``, and each ``P @ y`` of
    the envelope gradient took 4.6 s instead of about 30 ms.
    """
    tiny = torch.finfo(exponent.dtype).tiny
    plan = exponent.clamp_min_(math.log(tiny)).exp_()
    plan = plan.masked_fill_(plan <= 2.0 * tiny, 0.0)  # the clamped entries (exp(log(tiny)) rounds either way)
    if dtype is None or dtype == plan.dtype:
        return plan
    return flush_subnormals_(plan.to(dtype))


class _Kernel:
    """Soft-min sweeps over a cost, dense (cached matrix) or chunked (recomputed blocks).

    A log-domain soft-min forms its exponents :math:`\text{shift} - C/\varepsilon` in one subtraction into a
    reused work buffer, then one in-place ``logsumexp``; the dense backend keeps ``C``, the chunked one recomputes
    its row blocks. With ``kernel_form`` (dense only; chosen
    where the cost's spread is at most ``KERNEL_MAX_SPREAD`` times ``eps``) a sweep is two matrix-vector
    products with a Gibbs kernel kept around the potentials (:meth:`_kernel_sweep`), about 5x cheaper.
    """

    def __init__(
        self,
        cost: CostOperator,
        a: torch.Tensor,
        b: torch.Tensor,
        dense: torch.Tensor | None,
        dtype: torch.dtype | None = None,
        kernel_form: bool = False,
    ) -> None:
        self.dtype = dtype or a.dtype
        self.cost, self.dense = cost, None if dense is None else dense.to(self.dtype)
        self.kernel_form = kernel_form and self.dense is not None
        #: the potentials' dtype: float64 in kernel form (see :meth:`_kernel_sweep`), else the compute dtype
        self.vector_dtype = torch.float64 if self.kernel_form else self.dtype
        self.log_a, self.log_b = a.to(self.vector_dtype).log(), b.to(self.vector_dtype).log()
        self._work: dict[torch.Size, torch.Tensor] = {}  # reused exponent buffers (see _soft_lse)
        # (eps, alpha / eps, beta / eps, K), the centres as float64 copies of the kernel dtype's values
        self._gibbs: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._kernel_min = 0.0  # log of the kernel's smallest entry
        self.recentred = 0

    def _blocks(self):
        """``(start, stop, C[start:stop])`` over the row blocks (in the kernel's compute dtype; dense: views)."""
        if self.dense is not None:
            return ((s, e, self.dense[s:e]) for s, e in self.cost.row_blocks())
        return ((s, e, self.cost.block(s, e).to(self.dtype)) for s, e in self.cost.row_blocks())

    def _soft_lse(self, shift: torch.Tensor, block: torch.Tensor, eps: float, dim: int) -> torch.Tensor:
        r""":math:`\log \sum \exp(\text{shift} - C / \varepsilon)` along ``dim`` (``shift`` broadcasts over the block).

        Without a graph to record, the exponents are formed in one reused work buffer per block shape
        (:func:`_logsumexp_` in place): a fresh ``(n, m)`` temporary costs more in page faults than the passes over
        it (measured: a 2000 x 2000 float32 log-sum-exp took 15 ms with two fresh temporaries and 3 ms in a buffer).
        """
        if torch.is_grad_enabled() and (block.requires_grad or shift.requires_grad):
            return _logsumexp(shift - block / eps, dim)
        work = self._work.get(block.shape)
        if work is None:
            work = self._work[block.shape] = torch.empty_like(block)
        torch.sub(shift.to(block.dtype), block, alpha=1.0 / eps, out=work)
        return _logsumexp_(work, dim).to(shift.dtype)

    def _kernel_around(self, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        r"""``(alpha / eps, beta / eps, K)``, the Gibbs kernel
        :math:`K_{ij} = e^{(\alpha_i + \beta_j - C_{ij})/\varepsilon}` with ``beta`` within ``KERNEL_DRIFT * eps`` of
        ``g``, or None (see below).

        Rebuilt (one ``exp`` pass) around ``beta = g`` and the c-transform :math:`\alpha_i = \min_j (C_{ij} - g_j)`
        when ``g`` has moved further: every row's largest entry is then 1 and the scalings
        :math:`e^{(g - \beta)/\varepsilon}` stay within :math:`e^{\pm \text{KERNEL\_DRIFT}}`. The exponents are
        formed in the kernel's dtype; the centres returned are exactly the (rounded) values used, so that rounding
        is a fixed perturbation of each entry, of the size of the cost's own rounding (per row or column it would
        not change the plan at all). Entries below :math:`e \cdot` ``tiny`` (the smallest normal number) are raised
        to it, which keeps subnormals out of the products (they slow them down many times on the CPU) and adds less
        than ``3 tiny`` to any entry. Near the fixed point every column's largest entry is at least about
        :math:`\min_j b_j\, e^{-\text{KERNEL\_DRIFT}}` (the plan's columns sum to ``b``), so those are negligible;
        far from it (an Anderson extrapolation that wanders) a column can lie entirely below ``tiny``: then, when a
        column's largest entry is within :math:`e^{\text{KERNEL\_COLUMN\_MARGIN}}\, n` of the raised ones, there is
        no kernel (None) and the sweep is a log-domain one.
        """
        gibbs = self._gibbs
        if gibbs is None or gibbs[0] != eps or not float((g / eps - gibbs[2]).abs().max()) <= KERNEL_DRIFT:
            beta = (g / eps).to(self.dtype)
            exponent = torch.sub(beta[None, :], self.dense, alpha=1.0 / eps)  # (g_j - C_ij) / eps
            alpha = -exponent.amax(dim=1)
            exponent.add_(alpha[:, None])
            floor = math.log(torch.finfo(exponent.dtype).tiny) + 1.0
            self._kernel_min = max(float(exponent.min()), floor)
            if self._kernel_min == floor:  # entries below exp(floor) ~ 3 tiny: raised to it (normal, negligible)
                # ... unless a column's largest entry is not far above them (potentials far from the fixed point)
                if float(exponent.amax(dim=0).min()) < floor + KERNEL_COLUMN_MARGIN + math.log(exponent.shape[0]):
                    self._gibbs = None
                    return None
                exponent.clamp_min_(floor)
            self._gibbs = gibbs = (eps, alpha.to(self.vector_dtype), beta.to(self.vector_dtype), exponent.exp_())
            self.recentred += 1
        return gibbs[1], gibbs[2], gibbs[3]

    def _soft_min(self, kernel, centre_out, centre_in, potential, log_weights, eps) -> torch.Tensor:
        r"""One soft-min update in kernel form, :math:`\varepsilon\,(c_{out} - \log K (w\, e^{g/\varepsilon - c_{in}}))`
        (centres in units of ``eps``), the product in the kernel's dtype and the rest in the potentials' dtype."""
        scalings = (log_weights + potential / eps - centre_in).exp().to(kernel.dtype)
        return eps * (centre_out - (kernel @ scalings).to(self.vector_dtype).log())

    def _kernel_sweep(self, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        r""":meth:`sweep` in kernel form: two matrix-vector products with the kernel of :meth:`_kernel_around`.

        :math:`f = \alpha - \varepsilon \log K (b\, e^{(g - \beta)/\varepsilon})` and
        :math:`g' = \beta - \varepsilon \log K^\top (a\, e^{(f - \alpha)/\varepsilon})` are the log-sum-exp updates
        up to the rounding of the sums. The potentials are float64: a float32 potential of size :math:`|C|` carries
        the plan only to :math:`\varepsilon_{32} |C| / \varepsilon` (the log domain's precision floor), while the
        kernel's scalings carry it to float32 rounding. None (a log-domain sweep instead) when a sum under- or
        overflowed.
        """
        around = self._kernel_around(g, eps)
        if around is None:
            return None
        alpha, beta, kernel = around
        f = self._soft_min(kernel, alpha, beta, g, self.log_b, eps)
        g_new = self._soft_min(kernel.mT, beta, alpha, f, self.log_a, eps)
        if bool(torch.isfinite(f).all()) and bool(torch.isfinite(g_new).all()):
            return f, g_new
        self._gibbs = None
        return None

    def sweep(self, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``f = T_a(g)`` then ``g = T_b(f)``; one pass over the cost."""
        if self.kernel_form:
            out = self._kernel_sweep(g, eps)
            if out is not None:
                return out
        shifted_b = g / eps + self.log_b
        f_parts, col_lse = [], None
        for start, stop, block in self._blocks():
            f_block = -eps * self._soft_lse(shifted_b, block, eps, dim=1)
            f_parts.append(f_block)
            shifted_a = f_block / eps + self.log_a[start:stop]
            part = self._soft_lse(shifted_a[:, None], block, eps, dim=0)
            col_lse = part if col_lse is None else torch.logaddexp(col_lse, part)
        return torch.cat(f_parts), -eps * col_lse

    def symmetric(self, f: torch.Tensor, eps: float) -> torch.Tensor:
        r"""``T(f)_i = -eps log sum_j a_j exp((f_j - C_ij)/eps)`` for a self-transport cost (in kernel form,
        :math:`\alpha - \varepsilon \log K (a\, e^{(f - \beta)/\varepsilon})`, :meth:`_kernel_around` ``f``)."""
        around = self._kernel_around(f, eps) if self.kernel_form else None
        if around is not None:
            alpha, beta, kernel = around
            out = self._soft_min(kernel, alpha, beta, f, self.log_a, eps)
            if bool(torch.isfinite(out).all()):
                return out
            self._gibbs = None
        shifted = f / eps + self.log_a
        return torch.cat([-eps * self._soft_lse(shifted, block, eps, dim=1) for _, _, block in self._blocks()])

    def plan_block(self, start: int, stop: int, block: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float):
        """Rows ``start:stop`` of ``P = a_i b_j exp((f_i + g_j - C_ij)/eps)`` from a raw cost block."""
        exponent = (f[start:stop, None] + g[None, :] - block.to(self.dtype)) / eps
        return _exp_plan(exponent + self.log_a[start:stop, None] + self.log_b, block.dtype)

    def plan_stats(self, f, g, eps) -> tuple[torch.Tensor | None, torch.Tensor, float]:
        """The dense plan (or None), ``<P, C>`` and the L1 marginal error of ``P``."""
        if self.kernel_form and self._gibbs is not None and self._gibbs[0] == eps:
            # P = diag(a e^{(f - alpha)/eps}) K diag(b e^{(g - beta)/eps}): two scalings instead of an exp pass
            _, alpha, beta, kernel = self._gibbs
            left = (self.log_a + f / eps - alpha).exp().to(kernel.dtype)
            right = (self.log_b + g / eps - beta).exp().to(kernel.dtype)
            if bool(torch.isfinite(left).all()) and bool(torch.isfinite(right).all()):
                self._gibbs = None  # the kernel becomes the plan, in place
                plan = kernel.mul_(left[:, None]).mul_(right[None, :])
                tiny = torch.finfo(plan.dtype).tiny
                if math.exp(self._kernel_min) * float(left.min()) * float(right.min()) < 2.0 * tiny:
                    plan.masked_fill_(plan < 2.0 * tiny, 0.0)  # (subnormal entries are possible: none, as elsewhere)
                linear = torch.dot(plan.flatten(), self.dense.flatten())
                # summed in the plan's dtype (a float64 sum converts the whole plan first, 3-4 ms per 2000^2 plan),
                # as the block branch below does: its rounding is far below the marginal tolerance
                rows, cols = plan.sum(1).to(torch.float64), plan.sum(0).to(torch.float64)
                error = float((rows - self.log_a.exp()).abs().sum() + (cols - self.log_b.exp()).abs().sum())
                return plan, linear, error
        shifted_a, shifted_b = f / eps + self.log_a, g / eps + self.log_b
        linear, rows, cols = 0.0, [], 0.0
        plan = None if self.dense is None else torch.empty_like(self.dense)
        for start, stop, raw in self._blocks():
            block = _exp_plan(torch.sub(shifted_a[start:stop, None] + shifted_b, raw, alpha=1.0 / eps))
            linear = linear + torch.dot(block.flatten(), raw.flatten())
            rows.append(block.sum(1))
            cols = cols + block.sum(0)
            if plan is not None:
                plan[start:stop] = block
        error = float((torch.cat(rows) - self.log_a.exp()).abs().sum() + (cols - self.log_b.exp()).abs().sum())
        return plan, linear, error

    def extremes(self) -> tuple[float, float]:
        """``(min C, max C)`` over the whole cost (one pass over the blocks)."""
        with torch.no_grad():
            if self.dense is not None:
                low, high = torch.aminmax(self.dense)
                return float(low), float(high)
            low, high = math.inf, -math.inf
            for s, e in self.cost.row_blocks():
                block = self.cost.block(s, e)
                low, high = min(low, float(block.min())), max(high, float(block.max()))
            return low, high


#: The dense backend sweeps in kernel form where the cost's spread is at most this many ``eps`` (the default
#: ``reg``, 5 % of the mean cost, gives 40-50 on MNIST-size images). Above it the solves anneal and the potentials
#: move more than ``KERNEL_DRIFT * eps`` per sweep, so the kernel would be rebuilt (an ``exp`` pass) at every one.
KERNEL_MAX_SPREAD = 500.0

#: The kernel is rebuilt when a potential moved more than this many ``eps`` from the one it was built around.
KERNEL_DRIFT = 30.0

#: A kernel whose entries had to be raised to the smallest normal number is used only where every column's largest
#: entry exceeds them by ``n exp(KERNEL_COLUMN_MARGIN)`` (their share of any column sum is then below 4e-18).
KERNEL_COLUMN_MARGIN = 40.0

#: With ``eps_scaling="auto"``, anneal only below this ``reg / cost scale`` ratio (measured: above
#: it, Anderson-accelerated Sinkhorn from zero potentials needs as few or fewer sweeps).
AUTO_SCALING_BELOW = 0.005

#: ``spread / reg`` at or below which the value comes from the large-``reg`` expansion (its next term
#: is ``O((spread / reg)^2)`` relative to the spread of the cost).
LARGE_REG_RATIO = 1e-3

#: Sweeps run in float64 when ``reg * eps(dtype)`` exceeds this fraction of the cost's spread (the
#: rounding of the log-sum-exp, multiplied by ``reg``, would otherwise show in the value).
VALUE_PRECISION = 1e-6

#: Sweeps without a 30 % fall of the best marginal error, near the precision floor, that count as a stall.
STALL_WINDOW = 20


#: ``value_tol="auto"``: the relative accuracy of the dual value at which an annealed solve may stop.
AUTO_VALUE_TOL = 1e-4

#: Sweeps over which the value-based stop measures the rise of the dual value and the fall of the error.
VALUE_WINDOW = 5


def _value_settled(values: list[float], errors: list[float], value_tol: float | None) -> bool:
    r"""Whether the dual value is within ``value_tol`` (relative) of its limit, by a linear-convergence model.

    Over the last ``VALUE_WINDOW`` sweeps the dual value rose by :math:`\Delta` and the marginal error fell by
    the factor :math:`\rho^W`; if both keep converging linearly at the rate :math:`\rho`, the value still
    rises by about :math:`(\Delta / W)\,\rho / (1 - \rho)`. (Measured on the 10 x 200 x 784 OTDD problem at
    ``reg=0.2``: this estimate was 1.1-1.5 times the remaining rise.) Never when the error did not fall or
    the value fell (Anderson steps that overshoot).
    """
    if value_tol is None or len(values) <= VALUE_WINDOW:
        return False
    rise = values[-1] - values[-1 - VALUE_WINDOW]
    first, last = errors[-1 - VALUE_WINDOW], errors[-1]
    if not (rise >= 0 and 0 < last < first):
        return False
    rate = (last / first) ** (1.0 / VALUE_WINDOW)
    return rise / VALUE_WINDOW * rate / (1.0 - rate) <= value_tol * abs(values[-1])


def _schedule(eps: float, start: float, factor: float | str | None, scale: float | None = None) -> list[float]:
    """Geometric epsilon-scaling schedule from ``start`` (the cost's spread) down to (excluding) ``eps``.

    ``"auto"`` anneals by 0.5 when ``eps`` is below ``AUTO_SCALING_BELOW`` times ``scale`` (the mean cost).
    """
    if factor == "auto":
        factor = 0.5 if eps < AUTO_SCALING_BELOW * (start if scale is None else scale) else None
    if factor is None or start <= eps:
        return []
    if isinstance(factor, str) or not 0.0 < factor < 1.0:
        raise InvalidArgumentError(f"eps_scaling must be in (0, 1), None or 'auto', got {factor!r}.")
    steps = int(math.ceil(math.log(start / eps) / math.log(1.0 / factor)))
    return [start * factor**k for k in range(steps) if start * factor**k > eps]


def precision_floor(max_abs_cost: float, eps: float, dtype: torch.dtype) -> float:
    r"""Marginal-error floor of Sinkhorn in ``dtype``: :math:`\varepsilon_{\text{dtype}} \max|C| / \text{reg}`.

    The exponents :math:`(f_i + g_j - C_{ij})/\text{reg}` are differences of numbers of size
    :math:`\max|C|/\text{reg}`; their rounding is a relative error of that size in every plan entry.
    (Measured on the 10 x 50 x 784 OTDD benchmark at ``reg=0.2``: float32 stalls at 1.3e-3, this gives 5e-3.)
    """
    return torch.finfo(dtype).eps * max_abs_cost / eps


def _stalled(errors: list[float], floor: float) -> bool:
    """The marginal error is near the precision floor and has not fallen 30 % over the last ``STALL_WINDOW`` sweeps."""
    if len(errors) < 2 * STALL_WINDOW or errors[-1] > 2 * floor:
        return False
    return min(errors[-STALL_WINDOW:]) > 0.7 * min(errors[:-STALL_WINDOW])


def _marginal_gap(a: torch.Tensor, f_old: torch.Tensor, f_new: torch.Tensor, eps: float) -> float:
    """``|| a * exp((f_old - f_new)/eps) - a ||_1``: the marginal error of the plan built on ``f_old``
    when ``f_new`` is the soft-min update that would make that marginal exact."""
    with torch.no_grad():
        return float((a * torch.expm1((f_old - f_new) / eps)).abs().sum())


class _Anderson:
    """Type-II Anderson acceleration of a Sinkhorn fixed-point map (``g -> T_b(T_a(g))``, or the
    averaged symmetric map).

    Keeps the last ``memory`` outputs and residuals (gauge-centred) and extrapolates with a
    Tikhonov-regularised least-squares fit; the history is reset when the residual grows.

    **Safeguard.** Where the cost spread is hundreds of times ``reg`` and the plan must carry mass over
    expensive entries (stratified minibatches with unequal class masses), the extrapolation can wander: measured
    on a 6 x 6 OTDD minibatch at ``C/reg`` up to 280, the marginal error oscillated between 0.2 and 1.2 for 5,000
    sweeps (a 1e-15 change of the cost decided between converging in 334 sweeps and not at all), while plain
    Sinkhorn converged in 2,077. When the best error has not improved for ``patience`` sweeps, the accelerator
    switches itself off for the rest of the solve and restarts plain Sinkhorn from the best iterate seen. (Where
    the extrapolation works it has plateaus too: 47 sweeps at most on a translated mixture whose plain Sinkhorn
    needs over 20,000, hence the default of 200.)
    """

    def __init__(self, memory: int = 5, patience: int = 200) -> None:
        self.memory, self.patience = memory, patience
        self.outputs: list[torch.Tensor] = []
        self.residuals: list[torch.Tensor] = []
        self.best = math.inf
        self.best_input: torch.Tensor | None = None
        self.since_best = 0

    def step(self, g_in: torch.Tensor, g_out: torch.Tensor, error: float) -> torch.Tensor:
        """The next iterate after ``g_in`` (marginal error ``error``) and its fixed-point image ``g_out``."""
        if self.memory == 0:
            return g_out
        if error < self.best:
            self.best, self.best_input, self.since_best = error, g_in, 0
        else:
            self.since_best += 1
        if self.since_best >= self.patience:  # the extrapolation does not help here: plain Sinkhorn from the best
            self.memory = 0
            self.outputs, self.residuals = [], []
            return self.best_input
        if error > 10 * self.best:
            self.outputs, self.residuals = [], []
        residual = g_out - g_in
        self.outputs = (self.outputs + [g_out])[-(self.memory + 1) :]
        self.residuals = (self.residuals + [residual - residual.mean()])[-(self.memory + 1) :]
        if len(self.residuals) < 2:
            return g_out
        d_res = torch.stack([r1 - r0 for r0, r1 in zip(self.residuals, self.residuals[1:], strict=False)], dim=1)
        d_out = torch.stack([o1 - o0 for o0, o1 in zip(self.outputs, self.outputs[1:], strict=False)], dim=1)
        gram = d_res.mT @ d_res
        ridge = 1e-10 * gram.diagonal().sum() + torch.finfo(gram.dtype).tiny
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        gamma = torch.linalg.solve(gram + ridge * eye, d_res.mT @ self.residuals[-1])
        candidate = g_out - d_out @ gamma
        return candidate if bool(torch.isfinite(candidate).all()) else g_out


def _solve_pair(kernel: _Kernel, a, b, eps, schedule, max_iter, tol, init, memory, floor, value_tol=None):
    """Alternating Sinkhorn with Anderson acceleration; returns ``(f, g, n_iter, status, errors)`` with
    ``f = T_a(g)`` (exact row marginals), the column-marginal error history and ``status`` one of
    ``"converged"``, ``"stalled"`` (at the precision ``floor``), ``"value"`` (the dual value settled to
    ``value_tol``, :func:`_value_settled`, before the marginals reached ``tol``) or ``"max_iter"``."""
    n, m = kernel.cost.shape
    g = b.new_zeros(m) if init is None else init[1].detach().to(b.dtype).clone()
    for eps_k in schedule:
        _, g = kernel.sweep(g, eps_k)
    errors: list[float] = []
    status = "max_iter"
    n_iter = len(schedule)
    accelerator = _Anderson(memory)
    f = a.new_zeros(n)
    values: list[float] = []
    while n_iter < max_iter:
        f, g_out = kernel.sweep(g, eps)
        n_iter += 1
        errors.append(_marginal_gap(b, g, g_out, eps))
        if errors[-1] < tol:
            status = "converged"
            break
        if _stalled(errors, floor):
            status = "stalled"
            break
        if value_tol is not None:
            with torch.no_grad():  # the dual value of (T_a(g), g): its row marginals are exact
                values.append(float((f * a).sum(dtype=torch.float64) + (g * b).sum(dtype=torch.float64)))
            if _value_settled(values, errors, value_tol):
                status = "value"
                break
        g = accelerator.step(g, g_out, errors[-1])
    return f, g, n_iter, status, errors


def _solve_symmetric(kernel: _Kernel, a, eps, schedule, max_iter, tol, init, memory, floor):
    """Averaged fixed-point iteration ``f <- (f + T(f)) / 2`` (Anderson-accelerated); a warm
    start skips the annealing. Returns like :func:`_solve_pair`."""
    f = a.new_zeros(a.shape[0]) if init is None else init.detach().to(a.dtype).clone()
    for eps_k in schedule if init is None else ():
        f = 0.5 * (f + kernel.symmetric(f, eps_k))
    errors: list[float] = []
    n_iter = len(schedule) if init is None else 0
    accelerator = _Anderson(memory)
    status = "max_iter"
    while n_iter < max_iter:
        f_new = kernel.symmetric(f, eps)
        n_iter += 1
        errors.append(_marginal_gap(a, f, f_new, eps))
        if errors[-1] < tol:  # (f, T(f)) has exact column marginals and row error errors[-1]
            return f, f_new, n_iter, "converged", errors
        if _stalled(errors, floor):
            status = "stalled"
            break
        f = accelerator.step(f, 0.5 * (f + f_new), errors[-1])
    return f, kernel.symmetric(f, eps), n_iter, status, errors


def _large_reg_ot(cost: CostOperator, a, b, eps, *, grad, backend, spread) -> OTResult:
    r"""Entropic OT for ``reg`` far above the cost's spread, from its expansion in ``1/reg``.

    With :math:`\mu = \langle a b^\top, C\rangle` and the doubly centred cost
    :math:`\tilde C_{ij} = C_{ij} - \sum_l b_l C_{il} - \sum_k a_k C_{kj} + \mu`,

    .. math:: OT_\varepsilon(a, b) = \mu - \frac{\langle a b^\top, \tilde C^2\rangle}{2\varepsilon}
              + O\Big(\frac{\|\tilde C\|_\infty^3}{\varepsilon^2}\Big),
              \qquad P = a b^\top \odot (1 - \tilde C / \varepsilon) + O(\varepsilon^{-2}),

    (the independent coupling :math:`a b^\top` and its first correction, which keeps the marginals
    exact), with dual potentials :math:`f_i = \sum_l b_l C_{il} - \mu/2`, :math:`g_j = \sum_k a_k C_{kj} - \mu/2`.
    Everything is accumulated in float64 over cost blocks, so the value does not drown in the rounding
    of a log-sum-exp multiplied by ``reg``. Gradients: the envelope theorem with this plan.
    """
    f64 = torch.float64
    a64, b64 = a.detach().to(f64), b.detach().to(f64)
    n, m = cost.shape
    rows = torch.zeros(n, dtype=f64, device=a.device)
    cols = torch.zeros(m, dtype=f64, device=a.device)
    with torch.no_grad():
        blocks = cost.row_blocks()
        for s, e in blocks:
            block = cost.block(s, e).to(f64)
            rows[s:e] = block @ b64
            cols += a64[s:e] @ block
        mean = float(a64 @ rows)
        second = 0.0
        for s, e in blocks:
            centred = cost.block(s, e).to(f64) - rows[s:e, None] - cols[None, :] + mean
            second += float(a64[s:e] @ (centred * centred) @ b64)
    value64 = mean - second / (2.0 * eps)
    dtype = cost.dtype

    def plan_rows(start: int, stop: int, block: torch.Tensor) -> torch.Tensor:
        centred = block.to(f64) - rows[start:stop, None] - cols[None, :] + mean
        return (a64[start:stop, None] * b64[None, :] * (1.0 - centred / eps)).to(dtype)

    f, g = (rows - 0.5 * mean).to(dtype), (cols - 0.5 * mean).to(dtype)
    dense_cost = cost.dense() if backend == "dense" else None
    plan = plan_rows(0, n, dense_cost.detach()) if dense_cost is not None else None
    value = torch.tensor(value64, dtype=dtype, device=a.device)
    if grad != "detach":
        value = attach_envelope(
            value,
            cost,
            a,
            b,
            f,
            g,
            plan=plan,
            dense_cost=dense_cost,
            plan_block=None if plan is not None else plan_rows,
        )
    return OTResult(
        value=value,
        value_linear=torch.tensor(mean - second / eps, dtype=dtype, device=a.device),
        plan=plan,
        potentials=(f, g),
        n_iter=0,
        converged=True,
        marginal_error=0.0,
        reg=eps,
        method="sinkhorn",
        backend=backend,
        config={"large_reg_expansion": True, "spread_over_reg": spread / eps},
    )


def _entropic_ot(
    cost, a, b, eps, *, max_iter, tol, eps_scaling, grad, backend, symmetric, init, scale, anderson, value_tol=None
):
    """One entropic OT problem; returns the OTResult with envelope/autodiff/detached value."""
    use_dense = backend == "dense"
    dense_cost = cost.dense() if use_dense else None
    autodiff = grad == "autodiff"
    if autodiff and not use_dense:
        raise InvalidArgumentError("grad='autodiff' needs backend='dense'.")
    probe = _Kernel(cost, a, b, None if dense_cost is None else dense_cost.detach())
    low, high = probe.extremes()
    spread = max(high - low, 0.0)
    if not autodiff and spread <= LARGE_REG_RATIO * eps:
        return _large_reg_ot(cost, a, b, eps, grad=grad, backend=backend, spread=spread)
    # float64 sweeps where reg times the working precision would show in the value (large reg)
    working = torch.finfo(cost.dtype)
    wide = not autodiff and eps * working.eps > VALUE_PRECISION * max(spread, working.tiny)
    compute_dtype = torch.float64 if wide else cost.dtype
    kernel_form = use_dense and not autodiff and spread <= KERNEL_MAX_SPREAD * eps
    if kernel_form:  # float64 potentials: only the kernel's sums round (in compute_dtype)
        floor = max(cost.shape) ** 0.5 * torch.finfo(compute_dtype).eps
    else:
        floor = precision_floor(max(abs(low), abs(high)), eps, compute_dtype)
    schedule = _schedule(eps, max(spread, eps), eps_scaling, scale)
    if value_tol == "auto":  # only annealed (small-reg) solves, whose marginals converge slowly
        value_tol = AUTO_VALUE_TOL if schedule and not autodiff else None
    with torch.set_grad_enabled(autodiff):
        a_solve, b_solve = (a, b) if autodiff else (a.detach(), b.detach())
        kernel = _Kernel(
            cost,
            a_solve,
            b_solve,
            None if dense_cost is None else (dense_cost if autodiff else dense_cost.detach()),
            compute_dtype,
            kernel_form=kernel_form,
        )
        a_k, b_k = a_solve.to(kernel.vector_dtype), b_solve.to(kernel.vector_dtype)
        if symmetric:
            f, g, n_iter, status, errors = _solve_symmetric(
                kernel, a_k, eps, schedule, max_iter, tol, init, 0 if autodiff else anderson, floor
            )
        else:
            f, g, n_iter, status, errors = _solve_pair(
                kernel, a_k, b_k, eps, schedule, max_iter, tol, init, 0 if autodiff else anderson, floor, value_tol
            )
        dual64 = (f * a_k).sum() + (g * b_k).sum()
        dual = dual64.to(cost.dtype)
    with torch.no_grad():
        plan, linear, error = kernel.plan_stats(f.detach(), g.detach(), eps)
        if plan is not None and plan.dtype != cost.dtype:  # (_exp_plan left no subnormals in its own dtype)
            plan = flush_subnormals_(plan.to(cost.dtype))
    f, g = f.to(cost.dtype), g.to(cost.dtype)
    if autodiff:
        value = dual
    elif grad == "detach":
        value = dual.detach()
    else:
        fd, gd = f.detach(), g.detach()
        fk, gk = fd.to(compute_dtype), gd.to(compute_dtype)
        value = attach_envelope(
            dual,
            cost,
            a,
            b,
            fd,
            gd,
            plan=plan,
            dense_cost=dense_cost,
            plan_block=None if use_dense else (lambda s, e, blk: kernel.plan_block(s, e, blk, fk, gk, eps)),
        )
    last = errors[-1] if errors else float("nan")
    if status == "converged" and error > 10 * tol and error > 10 * last:
        # the update-based error reached tol because the iteration hit a fixed point of the working precision
        # (bitwise equal potentials, a gap of 0), but the plan's own marginal error is above tol: the floor
        status, last = "stalled", error
    converged = status == "converged"
    if status == "stalled":
        warnings.warn(
            f"Sinkhorn stalled at marginal error {last:.2g} > tol={tol:g} after {n_iter} sweeps: that is the "
            f"{compute_dtype} precision floor for reg={eps:.4g} on costs up to {max(abs(low), abs(high)):.4g} "
            f"(about {floor:.1g}). Use float64 features (dtype=torch.float64, --dtype float64), a larger reg, "
            "or a looser tol.",
            ConvergenceWarning,
            stacklevel=4,
        )
    elif status == "value":
        warnings.warn(
            f"Sinkhorn stopped after {n_iter} sweeps when its dual value settled to a relative {value_tol:g} "
            f"(value_tol), with marginal error {last:.2g} > tol={tol:g} (reg={eps:.4g}); the gradient is that "
            "of this plan. Pass value_tol=None to iterate until tol or the precision floor.",
            ConvergenceWarning,
            stacklevel=4,
        )
    elif not converged:
        warnings.warn(
            f"Sinkhorn stopped at max_iter={max_iter} with marginal error {last:.3g} "
            f"> tol={tol:g} (reg={eps:.4g}, cost scale {scale:.4g}). Increase max_iter or reg, or loosen tol.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return OTResult(
        value=value,
        value_linear=torch.as_tensor(linear).detach().to(cost.dtype),
        plan=plan,
        potentials=(f.detach(), g.detach()),
        n_iter=n_iter,
        converged=converged,
        marginal_error=error,
        reg=eps,
        method="sinkhorn",
        backend=backend,
        errors=tuple(errors),
        config={
            "status": status,
            "precision_floor": floor,
            "compute_dtype": str(compute_dtype).replace("torch.", ""),
            "kernel_form": kernel_form,
        },
    )


def sinkhorn(
    cost: CostOperator,
    a: torch.Tensor,
    b: torch.Tensor,
    reg: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    eps_scaling: float | str | None = "auto",
    grad: str = "envelope",
    backend: str = "dense",
    debiased: bool = False,
    potentials_init: tuple[torch.Tensor, torch.Tensor] | None = None,
    anderson: int = 5,
    known_self_values: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    value_tol: float | str | None = "auto",
) -> OTResult:
    r"""Entropic OT (or the debiased Sinkhorn divergence) by log-domain Sinkhorn.

    Args:
        cost: a :class:`~datasetflow.costs.ground.CostOperator` of shape ``(n, m)``.
        a, b: marginals ``(n,)``, ``(m,)`` (positive, summing to the same mass).
        reg: :math:`\varepsilon > 0`, absolute (same units as the cost).
        max_iter: maximum number of sweeps (including the epsilon-scaling ones).
        tol: stop when the L1 row-marginal error is below ``tol``.
        eps_scaling: factor of the geometric annealing from the cost scale down to ``reg``,
            None (no annealing) or ``"auto"`` (default: 0.5 when ``reg`` is below
            ``AUTO_SCALING_BELOW`` times the cost scale, else none).
        grad: ``"envelope"`` (default: plan and potentials attached, no backprop through the
            iterations), ``"autodiff"`` (backprop through the iterations; dense only) or
            ``"detach"``.
        backend: ``"dense"`` or ``"chunked"``.
        debiased: return :math:`S_\varepsilon = OT_\varepsilon(a,b) - \tfrac12 OT_\varepsilon(a,a)
            - \tfrac12 OT_\varepsilon(b,b)`; the cost must define ``self_costs()``.
        potentials_init: warm start ``(f, g)`` (only ``g`` is used).
        known_self_values: ``(OT_eps(a, a), OT_eps(b, b))`` already known (None entries are
            solved), e.g. a fixed target's self-transport value during a flow; they must have
            been computed with the same cost and ``reg``.
        anderson: memory of the Anderson acceleration of the Sinkhorn fixed-point map
            (0 disables it). It typically cuts iterations 3-6x and rescues the slow regime
            of nearly identical measures at small ``reg``.
        value_tol: also stop (status ``"value"``, ``converged=False``, a ``ConvergenceWarning``) when the
            dual value is estimated within this relative accuracy of its limit although the marginal error
            is still above ``tol`` (the model: both converge linearly at the rate measured over the last
            ``VALUE_WINDOW`` sweeps). ``"auto"`` (default): ``AUTO_VALUE_TOL`` for annealed solves (small
            ``reg``, where the marginals converge slowly once the plan is nearly a permutation), None
            otherwise; None: iterate until ``tol``, the precision floor or ``max_iter``.

    Returns:
        An :class:`OTResult`.
    """
    scale = cost.weighted_mean(a.detach(), b.detach())
    eps = check_reg(reg, scale, cost.dtype)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidArgumentError(f"max_iter must be a positive int, got {max_iter!r}.")
    if not tol > 0:
        raise InvalidArgumentError(f"tol must be positive, got {tol!r}.")
    options = dict(
        max_iter=max_iter,
        tol=tol,
        eps_scaling=eps_scaling,
        grad=grad,
        backend=backend,
        scale=max(scale, eps),
        anderson=anderson,
    )
    if not (value_tol is None or value_tol == "auto" or (isinstance(value_tol, float) and 0 < value_tol < 1)):
        raise InvalidArgumentError(f"value_tol must be a float in (0, 1), None or 'auto', got {value_tol!r}.")
    symmetric = a is b and cost.is_symmetric()  # the same measure on both sides
    cross = _entropic_ot(cost, a, b, eps, symmetric=symmetric, init=potentials_init, value_tol=value_tol, **options)
    config = {
        "reg": eps,
        "max_iter": max_iter,
        "tol": tol,
        "eps_scaling": eps_scaling,
        "grad": grad,
        "backend": backend,
        "debiased": debiased,
        "anderson": anderson,
        "value_tol": value_tol,
    }
    if not debiased:
        return _replace(cross, config={**cross.config, **config})
    if symmetric:  # S(a, a) = 0 exactly: both self terms equal the cross term
        self_a = self_b = cross
    else:
        known = known_self_values or (None, None)
        costs = cost.self_costs()
        # the cross potentials are a good warm start for the self-transport problems
        results = [
            None if known[k] is not None else _entropic_ot(costs[k], w, w, eps, symmetric=True, init=init, **options)
            for k, (w, init) in enumerate(zip((a, b), cross.potentials, strict=True))
        ]
        self_a, self_b = results
    values = [
        known_value.to(cross.value) if res is None else res.value
        for res, known_value in zip((self_a, self_b), known_self_values or (None, None), strict=True)
    ]
    solved = [res for res in (self_a, self_b) if res is not None and res is not cross]
    return _replace(
        cross,
        value=cross.value - 0.5 * (values[0] + values[1]),
        self_values=(values[0].detach(), values[1].detach()),
        converged=cross.converged and all(res.converged for res in solved),
        n_iter=cross.n_iter + sum(res.n_iter for res in solved),
        config={**cross.config, **config, "status": _worst_status([cross, *solved])},
    )


def _worst_status(results: list[OTResult]) -> str:
    statuses = [res.config.get("status", "converged") for res in results]
    return next((s for s in ("stalled", "max_iter", "value") if s in statuses), "converged")


def _replace(result: OTResult, **changes) -> OTResult:
    from dataclasses import replace

    return replace(result, **changes)
