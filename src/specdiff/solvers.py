"""Solver steps: pure functions over a ``Denoiser`` in the rectified-flow frame.

Frame: ``x_t = (1 - t) x0 + t eps``; the denoiser returns ``x0_hat``; the
probability-flow ODE is ``dx/dt = (x - x0_hat) / t``. Every step has the
signature (k-diffusion style)::

    step(denoiser, x, t, t_next, *, cond, state, noise, info) -> (x_next, state, x0_hat)

``t`` and ``t_next`` are floats with ``1 >= t > t_next >= 0`` or, for the
single-step solvers (Euler, Heun, stochastic), ``(B,)`` tensors giving every
sample its own step (broadcast by rank); the denoiser is called with ``t`` as a
``(B,)`` tensor of ``x``'s dtype. ``state`` carries the
multistep history (``None`` after a transition: the sampler resets it);
``noise`` is the injected randomness of stochastic steps (white N(0, 1) of
``x``'s shape), unused by deterministic ones. ``info`` (a :class:`StepInfo`,
or ``None`` outside a plan) says where the step sits in the plan's walk; it is
handed on to denoisers that declare ``takes_step_info = True`` (the diffusers
adapters), so no denoiser keeps a step counter of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .spectral import broadcast_time


class Denoiser(Protocol):
    """``(x, t, **cond) -> x0_hat``: ``x`` is ``(B, C, *grid)``, ``t`` a ``(B,)`` tensor.

    A denoiser with the attribute ``takes_step_info = True`` is also called with
    ``step_info=`` (a :class:`StepInfo`) when it runs inside a plan.
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """Where one model evaluation sits in a plan's walk (DESIGN.md section 5).

    The plan's steps are numbered ``0 .. num_steps - 1`` across all stages; step
    ``k`` runs from walk position ``k`` to ``k + 1``. ``index`` is the position
    of the evaluation's own time: ``k`` for a step's first evaluation, ``k + 1``
    for an evaluation at the step's end time (Heun's corrector, the clean
    estimate an x0 transition takes at a stage's last time). For the step a
    solver takes, ``remaining = num_steps - index`` counts it and every later
    one (UniPC lowers its order on the final steps of the whole plan).
    """

    stage: int
    index: int
    num_steps: int
    model: str | None = None

    @property
    def remaining(self) -> int:
        return self.num_steps - self.index

    def at_step_end(self) -> StepInfo:
        """The same step seen from its end time (position ``index + 1``)."""
        return StepInfo(self.stage, self.index + 1, self.num_steps, self.model)


def call_denoiser(denoiser, x, t, cond=None, info: StepInfo | None = None) -> torch.Tensor:
    """Call ``denoiser`` at time ``t`` (float or ``(B,)``) as every solver does.

    ``t`` reaches the denoiser as a ``(B,)`` tensor of ``x``'s dtype; ``info`` is
    passed as ``step_info=`` only to denoisers that declare ``takes_step_info``.
    The output is checked to have ``x``'s shape and cast to ``x``'s dtype.
    """
    if isinstance(t, torch.Tensor):
        tt = t.to(dtype=x.dtype, device=x.device).expand(x.shape[0])
    else:
        tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    kw = dict(cond or {})
    if info is not None and getattr(denoiser, "takes_step_info", False):
        kw["step_info"] = info
    out = denoiser(x, tt, **kw)
    if out.shape != x.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}; a "
            "Denoiser must return x0_hat of the input's shape"
        )
    return out.to(x.dtype)


_bt = broadcast_time  # a float stays a float; a (B,) tensor broadcasts against x by rank


def _end(info: StepInfo | None) -> StepInfo | None:
    return None if info is None else info.at_step_end()


def _velocity(x, x0, t):
    return (x - x0) / _bt(t, x)


def euler_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None, info=None):
    """First-order step of the flow ODE (equals DDIM in the flow frame)."""
    x0 = call_denoiser(denoiser, x, t, cond, info)
    return x + (_bt(t_next, x) - _bt(t, x)) * _velocity(x, x0, t), None, x0


def heun_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None, info=None):
    """Second-order Heun (EDM Alg. 1 without churn); plain Euler onto ``t_next = 0``."""
    x0 = call_denoiser(denoiser, x, t, cond, info)
    d = _velocity(x, x0, t)
    h = _bt(t_next, x) - _bt(t, x)
    x_e = x + h * d
    if not isinstance(t_next, torch.Tensor):
        if t_next == 0:
            return x_e, None, x0
        x0_e = call_denoiser(denoiser, x_e, t_next, cond, _end(info))
        return x + h * 0.5 * (d + _velocity(x_e, x0_e, t_next)), None, x0
    # per-sample times: samples stepping onto 0 take the Euler result
    last = t_next == 0
    t_safe = torch.where(last, torch.ones_like(t_next), t_next)
    x0_e = call_denoiser(denoiser, x_e, t_safe, cond, _end(info))
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


def dpmpp_2m_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None, info=None):
    """DPM-Solver++(2M), data-prediction form (Lu et al. 2022, Alg. 2) in the flow frame.

    With ``alpha = 1 - t``, ``sigma = t``, ``lambda = log(alpha / sigma)`` and
    ``h = lambda_next - lambda``:
    ``x_next = (sigma_next / sigma) x - alpha_next (exp(-h) - 1) D``, where
    ``D`` is the x0 estimate, corrected with the previous one when history
    exists: ``D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev``, ``r = h_prev / h``.
    The first step after a reset and the step onto ``t = 0`` are first order.
    """
    x0 = call_denoiser(denoiser, x, t, cond, info)
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


def stochastic_step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None, eta=1.0,
                    info=None):
    """Ancestral (DDIM-eta) step in the flow frame.

    ``x_next = (1 - t') x0 + sqrt(t'^2 - s^2) eps_hat + s * noise`` with
    ``eps_hat = (x - (1 - t) x0) / t`` and the DDIM variance
    ``s = eta * t' * sqrt(1 - SNR(t) / SNR(t'))``, ``SNR(t) = ((1-t)/t)^2``
    (Song et al. 2021, Eq. 16 written scale-free). ``eta = 0`` is Euler;
    ``eta = 1`` is the ancestral (DDPM-like) sampler.
    """
    x0 = call_denoiser(denoiser, x, t, cond, info)
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
