"""Solver steps: pure functions over a ``Denoiser`` in the rectified-flow frame.

Frame: ``x_t = (1 - t) x0 + t eps``; the denoiser returns ``x0_hat``; the
probability-flow ODE is ``dx/dt = (x - x0_hat) / t``. Every step has the
signature (k-diffusion style)::

    step(denoiser, x, t, t_next, *, cond, state, noise) -> (x_next, state, x0_hat)

``t`` and ``t_next`` are floats with ``1 >= t > t_next >= 0`` or, for the
single-step solvers (Euler, Heun, stochastic), ``(B,)`` tensors giving every
sample its own step (broadcast by rank); the denoiser is called with ``t`` as a
``(B,)`` tensor of ``x``'s dtype. ``state`` carries the
multistep history (``None`` after a transition: the sampler resets it);
``noise`` is the injected randomness of stochastic steps (white N(0, 1) of
``x``'s shape), unused by deterministic ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class Denoiser(Protocol):
    """``(x, t, **cond) -> x0_hat``: ``x`` is ``(B, C, *grid)``, ``t`` a ``(B,)`` tensor."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor: ...


def _call(denoiser, x, t, cond):
    if isinstance(t, torch.Tensor):
        tt = t.to(dtype=x.dtype, device=x.device).expand(x.shape[0])
    else:
        tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    out = denoiser(x, tt, **(cond or {}))
    if out.shape != x.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}; a "
            "Denoiser must return x0_hat of the input's shape"
        )
    return out.to(x.dtype)


def _bt(t, x):
    """A float stays a float; a ``(B,)`` tensor is shaped to broadcast against ``x``."""
    if isinstance(t, torch.Tensor):
        return t.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
    return t


def _velocity(x, x0, t):
    return (x - x0) / _bt(t, x)


def euler_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None):
    """First-order step of the flow ODE (equals DDIM in the flow frame)."""
    x0 = _call(denoiser, x, t, cond)
    return x + (_bt(t_next, x) - _bt(t, x)) * _velocity(x, x0, t), None, x0


def heun_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None):
    """Second-order Heun (EDM Alg. 1 without churn); plain Euler onto ``t_next = 0``."""
    x0 = _call(denoiser, x, t, cond)
    d = _velocity(x, x0, t)
    h = _bt(t_next, x) - _bt(t, x)
    x_e = x + h * d
    if not isinstance(t_next, torch.Tensor):
        if t_next == 0:
            return x_e, None, x0
        x0_e = _call(denoiser, x_e, t_next, cond)
        return x + h * 0.5 * (d + _velocity(x_e, x0_e, t_next)), None, x0
    # per-sample times: samples stepping onto 0 take the Euler result
    last = t_next == 0
    t_safe = torch.where(last, torch.ones_like(t_next), t_next)
    x0_e = _call(denoiser, x_e, t_safe, cond)
    heun = x + h * 0.5 * (d + _velocity(x_e, x0_e, t_safe))
    return torch.where(_bt(last, x).bool(), x_e, heun), None, x0


def _half_log_snr(t: float) -> float:
    # lambda = log(alpha / sigma) = log((1 - t) / t) in the flow frame.
    if t <= 0:
        return math.inf
    if t >= 1:
        return -math.inf
    return math.log((1 - t) / t)


@dataclass(frozen=True)
class _DPMState:
    x0_prev: torch.Tensor
    h_prev: float


def dpmpp_2m_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None):
    """DPM-Solver++(2M), data-prediction form (Lu et al. 2022, Alg. 2) in the flow frame.

    With ``alpha = 1 - t``, ``sigma = t``, ``lambda = log(alpha / sigma)`` and
    ``h = lambda_next - lambda``:
    ``x_next = (sigma_next / sigma) x - alpha_next (exp(-h) - 1) D``, where
    ``D`` is the x0 estimate, corrected with the previous one when history
    exists: ``D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev``, ``r = h_prev / h``.
    The first step after a reset and the step onto ``t = 0`` are first order.
    """
    x0 = _call(denoiser, x, t, cond)
    lam, lam_next = _half_log_snr(t), _half_log_snr(t_next)
    h = lam_next - lam
    if t_next == 0:
        return x0, None, x0
    d = x0
    if state is not None and math.isfinite(state.h_prev) and math.isfinite(h):
        r = state.h_prev / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * state.x0_prev
    # exp(-h) is 0 when t = 1 (lambda = -inf): the step is then x_next = alpha_next * d + sigma_next * x.
    em = math.exp(-h) if math.isfinite(h) else 0.0
    x_next = (t_next / t) * x - (1 - t_next) * (em - 1) * d
    return x_next, _DPMState(x0, h), x0


def stochastic_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None, eta=1.0):
    """Ancestral (DDIM-eta) step in the flow frame.

    ``x_next = (1 - t') x0 + sqrt(t'^2 - s^2) eps_hat + s * noise`` with
    ``eps_hat = (x - (1 - t) x0) / t`` and the DDIM variance
    ``s = eta * t' * sqrt(1 - SNR(t) / SNR(t'))``, ``SNR(t) = ((1-t)/t)^2``
    (Song et al. 2021, Eq. 16 written scale-free). ``eta = 0`` is Euler;
    ``eta = 1`` is the ancestral (DDPM-like) sampler.
    """
    x0 = _call(denoiser, x, t, cond)
    if not isinstance(t_next, torch.Tensor) and t_next == 0:
        return x0, None, x0
    if noise is None:
        raise ValueError("stochastic_step needs noise= (white N(0,1) of x's shape)")
    tt = torch.as_tensor(t, dtype=torch.float64)
    tn = torch.as_tensor(t_next, dtype=torch.float64)
    # SNR(t)/SNR(t') = ((1-t) t' / ((1-t') t))^2, which is 0 at t = 1 and 1 at t' = t
    ratio = torch.where(tn > 0, ((1 - tt) * tn / ((1 - tn) * tt)) ** 2, torch.zeros_like(tn))
    s = eta * tn * torch.sqrt((1 - ratio).clamp_min(0))
    keep = torch.sqrt((tn**2 - s**2).clamp_min(0))
    s, keep, tn_x = (_bt(v.to(x.dtype), x) if v.ndim else float(v) for v in (s, keep, tn))
    eps = (x - (1 - _bt(t, x)) * x0) / _bt(t, x)
    return (1 - tn_x) * x0 + keep * eps + s * noise, None, x0


@dataclass(frozen=True)
class Solver:
    """A step function and what the sampler and cost model need to know about it."""

    name: str
    step: Any
    order: int
    stochastic: bool = False
    multistep: bool = False

    def evaluations(self, times) -> int:
        """Model evaluations to walk the descending grid ``times``."""
        n = len(times) - 1
        if self.name == "heun":
            return 2 * n - (1 if n and float(times[-1]) == 0 else 0)
        return n


SOLVERS: dict[str, Solver] = {
    "euler": Solver("euler", euler_step, 1),
    "heun": Solver("heun", heun_step, 2),
    "dpmpp_2m": Solver("dpmpp_2m", dpmpp_2m_step, 2, multistep=True),
    "stochastic": Solver("stochastic", stochastic_step, 1, stochastic=True),
}


def get_solver(solver: str | Solver) -> Solver:
    if isinstance(solver, Solver):
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[solver]
