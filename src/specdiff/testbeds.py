"""Models whose right answer is known (DESIGN.md section 6).

``GaussianField``: a zero-mean Gaussian field whose orthonormal DCT
coefficients are independent with variance ``P(k) = A * w**-beta``,
``w = |k| / 2`` (cycles per image; ``P(0) = A``), defined on the full grid.
A grid with ``N'`` elements holds the consistent coarse field with variance
``(N'/N) P(k)`` on the shared low frequencies (the orthonormal truncation
times ``rho``). The exact denoiser at time ``t`` is the per-coefficient Wiener
filter ``E[x0 | x_t] = (1-t) P / ((1-t)^2 P + t^2) * x_t``, so every solver
step and every DCT resize is linear and diagonal in the DCT basis and the
output law of any plan is a Gaussian with a computable per-coefficient
variance. W2 and KL to the true field follow in closed form.

``EmpiricalDenoiser``: the exact posterior mean of the flow state over a small
image set (the optimal denoiser for that set), at any grid size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .plans import Plan, PowerSpectrum
from .solvers import get_solver
from .spectral import _check_finite, broadcast_time, dct, expansion_gain, idct, make_noise, resize
from .transitions import Spectral, X0Renoise

__all__ = ["GaussianField", "EmpiricalDenoiser", "CLOSED_FORM_TRANSITIONS"]

# transitions that act diagonally on DCT coefficients: their law stays closed form
CLOSED_FORM_TRANSITIONS = (Spectral("dct"), X0Renoise("dct"))


def _freq_radius(grid: Sequence[int], dtype=torch.float64) -> torch.Tensor:
    """``|k| / 2`` for every DCT index of ``grid`` (cycles per image)."""
    axes = torch.meshgrid(*[torch.arange(n, dtype=dtype) for n in grid], indexing="ij")
    return torch.sqrt(sum(a**2 for a in axes)) / 2


class GaussianField:
    """Power-law Gaussian field with an exact denoiser and closed-form plan laws.

    Args:
        A, beta: the power law ``P(w) = A w**-beta`` of the full-resolution grid.
        grid: full-resolution grid, ``(H, W)`` or ``(T, H, W)``.
        channels: independent channels per sample (all with the same law).
    """

    def __init__(self, A: float, beta: float, grid: Sequence[int], channels: int = 1):
        self.spectrum = PowerSpectrum(float(A), float(beta))
        self.grid = tuple(int(g) for g in grid)
        if not self.grid or any(g < 1 for g in self.grid):
            raise ValueError(f"grid must be positive sizes, got {grid}")
        if channels < 1:
            raise ValueError("channels must be >= 1")
        self.channels = int(channels)
        self._var_cache: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def A(self) -> float:
        return self.spectrum.A

    @property
    def beta(self) -> float:
        return self.spectrum.beta

    def variance(self, grid: Sequence[int] | None = None) -> torch.Tensor:
        """DCT coefficient variances (float64, shape ``grid``) of the field on ``grid``."""
        g = self.grid if grid is None else tuple(int(v) for v in grid)
        if len(g) != len(self.grid):
            raise ValueError(f"grid {g} does not have the rank of {self.grid}")
        if g not in self._var_cache:
            w = _freq_radius(g)
            p = torch.where(w > 0, self.A * w.clamp_min(1e-12) ** (-self.beta),
                            torch.tensor(self.A, dtype=torch.float64))
            self._var_cache[g] = p * (math.prod(g) / math.prod(self.grid))
        return self._var_cache[g]

    def sample(self, n: int, generator=None, *, grid: Sequence[int] | None = None,
               dtype=torch.float32) -> torch.Tensor:
        """``(n, channels, *grid)`` exact samples of the field."""
        g = self.grid if grid is None else tuple(grid)
        z = make_noise((n, self.channels, *g), generator, dtype=torch.float64)
        dims = tuple(range(-len(g), 0))
        return idct(z * self.variance(g).sqrt(), dims).to(dtype)

    # --- the exact denoiser --------------------------------------------------
    def wiener_gain(self, t, grid: Sequence[int]) -> torch.Tensor:
        """``(1-t) P / ((1-t)^2 P + t^2)`` per coefficient (``t`` float or ``(B,)``)."""
        p = self.variance(grid)
        if isinstance(t, torch.Tensor) and t.ndim == 1:
            t = broadcast_time(t, p.expand(len(t), *p.shape))  # (B,) -> (B, 1, ..., 1)
        return (1 - t) * p / ((1 - t) ** 2 * p + t**2)

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        """Exact ``E[x0 | x_t]`` on whatever grid ``x`` lives on."""
        grid = tuple(x.shape[2:])
        dims = tuple(range(-len(grid), 0))
        gain = self.wiener_gain(t.to(torch.float64), grid)
        if gain.ndim == len(grid) + 1:
            gain = gain.unsqueeze(1)
        return idct(dct(x, dims) * gain.to(x.dtype).to(x.device), dims).to(x.dtype)

    # --- closed-form law of a plan -------------------------------------------
    def output_variance(self, plan: Plan, solver="euler", *, eta: float = 1.0) -> torch.Tensor:
        """Per-coefficient variance (float64, shape ``plan.full_grid``) of the plan's output.

        The sampler's own step functions run on the DCT-domain gain of every
        noise source (the full-resolution noise and, for x0 transitions, each
        fresh draw; stacked along the batch axis) with the Wiener filter as the
        denoiser; independent noise injected by stochastic steps is tracked as
        a variance. Transitions must be ``dct`` or ``x0_dct`` (diagonal in the
        DCT basis); other kinds are not diagonal and raise.
        """
        if not isinstance(plan, Plan):
            raise ValueError("plan must be a specdiff.plans.Plan")
        if tuple(plan.full_grid) != self.grid:
            raise ValueError(f"plan's full grid {plan.full_grid} differs from the field's {self.grid}")
        for tr in plan.transitions:
            if tr not in CLOSED_FORM_TRANSITIONS:
                raise ValueError(
                    f"the closed form needs transitions diagonal in the DCT basis (Spectral('dct') "
                    f"or X0Renoise('dct')), got {tr!r}; use Monte Carlo with specdiff.sample")
        sv = get_solver(solver)
        grid0 = plan.stages[0].grid
        gains = torch.ones((1, *grid0), dtype=torch.float64)  # source 0 = the seed noise
        extra = torch.zeros(grid0, dtype=torch.float64)  # variance of stochastic-step noise

        for i, stage in enumerate(plan.stages):
            if i > 0:
                gains, extra = self._transition(plan, i, gains, extra)
            if stage.steps == 0:
                continue
            den = self._denoiser_for(stage.grid)
            if sv.stochastic:
                # x' = a x + b z: probe the linear step with (x=1, z=0) and (x=0, z=1)
                ones = torch.ones((1, 1, *stage.grid), dtype=torch.float64)
                zeros = torch.zeros_like(ones)
                for j in range(stage.steps):
                    t, tn = stage.times[j], stage.times[j + 1]
                    a = sv.step(den, ones, t, tn, noise=zeros, eta=eta)[0][0, 0]
                    b = sv.step(den, zeros, t, tn, noise=ones, eta=eta)[0][0, 0]
                    gains = gains * a
                    extra = a**2 * extra + b**2
            else:
                # the gains of every noise source form a batch (S, 1, *grid); one
                # step at a time keeps the working set in cache
                x, state = gains.unsqueeze(1), None
                for j in range(stage.steps):
                    x, state, _ = sv.step(den, x, stage.times[j], stage.times[j + 1], state=state)
                gains = x.squeeze(1)
        return (gains**2).sum(0) + extra

    def _denoiser_for(self, grid):
        """Wiener filter acting on DCT-domain states ``(S, 1, *grid)`` (one time per call)."""
        p = self.variance(grid)

        def den(x, t, **cond):
            tt = float(t[0])
            return x * ((1 - tt) * p / ((1 - tt) ** 2 * p + tt**2))

        return den

    def _transition(self, plan: Plan, i: int, gains, extra):
        """Stage ``i``'s entering transition acting on the per-coefficient gains of every
        noise source (and the variance of stochastic-step noise)."""
        prev, nxt = plan.stages[i - 1], plan.stages[i]
        t_end, t_start = prev.times[-1], nxt.times[0]
        old, new = prev.grid, nxt.grid
        rho = math.sqrt(math.prod(new) / math.prod(old))
        common = tuple(slice(0, min(a, b)) for a, b in zip(old, new, strict=True))
        g2 = gains.new_zeros((gains.shape[0], *new))
        e2 = extra.new_zeros(new)
        if nxt.transition.carries_state:  # Spectral("dct"): x' = kappa x on the common band
            kappa = expansion_gain(t_end, rho)
            g2[(slice(None), *common)] = gains[(slice(None), *common)] * kappa
            e2[common] = extra[common] * kappa**2
            entered = torch.ones(new, dtype=torch.bool)
            entered[common] = False
            # seed-coupled: entering bins take the seed noise at t_new (source 0)
            g2[0][entered] = t_start
            return g2, e2
        # x0_dct: x' = (1 - t') * rho * D(x, t_end) on the common band + t' * fresh noise
        c = self.wiener_gain(t_end, old) if t_end > 0 else torch.ones(old, dtype=torch.float64)
        g2[(slice(None), *common)] = gains[(slice(None), *common)] * (c * (1 - t_start) * rho)[common]
        e2[common] = (extra * (c * (1 - t_start) * rho) ** 2)[common]
        fresh = torch.full((1, *new), t_start, dtype=torch.float64)
        return torch.cat([g2, fresh]), e2

    def metrics(self, plan: Plan, solver="euler", **kw) -> dict[str, float]:
        """``{"w2": ..., "kl": ...}`` from one closed-form evaluation (see :meth:`w2`, :meth:`kl`)."""
        v = self.output_variance(plan, solver, **kw)
        p = self.variance()
        r = v / p
        return {
            "w2": math.sqrt(float(((v.sqrt() - p.sqrt()) ** 2).sum()) / p.numel()),
            "kl": float(0.5 * (r - 1 - torch.log(r)).sum()) / p.numel(),
        }

    def w2(self, plan: Plan, solver="euler", **kw) -> float:
        """Exact W2 between the plan's output law and the field, RMS per element.

        For centred Gaussians diagonal in one basis,
        ``W2^2 = sum_k (sqrt(v_k) - sqrt(P_k))^2``; reported as
        ``sqrt(W2^2 / N)``.
        """
        return self.metrics(plan, solver, **kw)["w2"]

    def kl(self, plan: Plan, solver="euler", **kw) -> float:
        """``KL(output || field)`` per element (nats), exact."""
        return self.metrics(plan, solver, **kw)["kl"]

    def w2_from_samples(self, samples: torch.Tensor) -> float:
        """W2 (RMS per element) of the Gaussian matched to ``samples``' per-coefficient
        variances: the Monte Carlo counterpart of :meth:`w2`."""
        dims = tuple(range(-len(self.grid), 0))
        c = dct(samples.to(torch.float64), dims)
        v = (c**2).mean(dim=(0, 1))
        p = self.variance()
        return math.sqrt(float(((v.sqrt() - p.sqrt()) ** 2).sum()) / p.numel())


class EmpiricalDenoiser:
    """Exact posterior mean ``E[x0 | x_t]`` when the data are ``images`` with equal weight.

    ``D(x, t) = sum_i w_i y_i``, ``w = softmax(-||x - (1-t) y_i||^2 / (2 t^2))``,
    where ``y_i`` are the images brought to ``x``'s grid by the consistent
    spectral resample (the same convention as the Gaussian field: coarse data
    is ``rho`` times the orthonormal truncation). It memorises the set; its
    cost is linear in pixels like a convnet, and it is exact, which makes it
    the nonlinear reference model for sampler tests.

    Args:
        images: ``(N, C, *grid)`` data at full resolution.
    """

    def __init__(self, images: torch.Tensor):
        if not isinstance(images, torch.Tensor) or images.ndim < 3:
            raise ValueError("images must be a (N, C, *grid) tensor")
        _check_finite(images, "images")
        self.images = images.to(torch.float64)
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def data(self, grid: Sequence[int]) -> torch.Tensor:
        g = tuple(int(v) for v in grid)
        if g not in self._cache:
            if g == tuple(self.images.shape[2:]):
                self._cache[g] = self.images
            else:
                # t = 0 resize: orthonormal truncation/padding times rho
                self._cache[g] = resize(self.images, 0.0, g)[0]
        return self._cache[g]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        y = self.data(x.shape[2:]).to(device=x.device)
        xd = x.to(torch.float64)
        tb = broadcast_time(t.to(torch.float64), xd)
        flat_x = xd.flatten(1)
        flat_y = y.flatten(1)
        a = (1 - tb).flatten()[:, None] if tb.ndim else (1 - tb)
        # ||x - a y||^2 = |x|^2 - 2a x.y + a^2 |y|^2 ; the |x|^2 term cancels in softmax
        logits = 2 * a * (flat_x @ flat_y.T) - a**2 * (flat_y**2).sum(1)[None]
        s2 = (tb.flatten()[:, None] if tb.ndim else tb) ** 2
        w = torch.softmax(logits / (2 * s2.clamp_min(1e-300)), dim=1)
        return (w @ flat_y).reshape(x.shape).to(x.dtype)
