"""UniPC (Zhao et al. 2023, arXiv 2302.04867) as a specdiff ``Solver``, in the flow frame.

Why a solver and not diffusers' ``UniPCMultistepScheduler``: Wan 2.1 ships with
UniPC, a multistep predictor-corrector whose history (the last ``order`` x0
estimates and the sample the last predictor started from) has the latent's
shape. A scheduler object cannot change shape or rewind time mid-run; driving
fresh scheduler instances per stage would mean writing into their private
fields (``sigmas``, ``model_outputs``, ``last_sample``, ``_step_index``), which
change between diffusers releases. Written as a step function, UniPC is a pure
function of ``(x, t, t_next, state)``: :func:`specdiff.sample` resets the state
at every transition (first order on the first step of each stage, no
corrector until there is history), exactly like SPD's reference code does with
``reset_scheduler_state``, and a one-stage plan reproduces the pipeline's own
scheduler to float rounding (tested on the tiny Wan pipeline).

Frame: ``x_t = (1 - t) x0 + t eps`` so ``alpha_t = 1 - t``, ``sigma_t = t`` and
``lambda_t = log(alpha_t / sigma_t)``. UniPC in data-prediction form
(``predict_x0=True``) is an exponential integrator on ``lambda``; its update
``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D`` is invariant under the
VP <-> flow change of frame (both sides scale by ``alpha + sigma``), so the same
step also reproduces UniPC on VP schedules (SDXL) when the denoiser converts
the model output to x0 at the boundary.

Step ``i`` (diffusers' ``step`` order): evaluate ``m_i = x0(x_i, t_i)``; if
there is history, correct ``x_i`` with UniC (order of the previous predictor,
using ``m_i``); push ``m_i``; predict ``x_{i+1}`` with UniP of order
``min(order, steps left, warm-up count + 1)``, the steps left read from the
``StepInfo`` the sampler passes (so one solver object serves every plan).
Variants ``bh1`` (``B(h) = h``) and ``bh2`` (``B(h) = e^h - 1``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ..plans import Plan
from ..solvers import Solver, StepInfo, call_denoiser

__all__ = ["unipc_solver"]

# diffusers moves sigma = 1 to 1 - 1e-6 for the same reason: lambda(1) = -inf.
_T_MAX = 1.0 - 1e-6


@dataclass(frozen=True)
class _UniPCState:
    outputs: tuple[torch.Tensor, ...]  # last x0 estimates, oldest first
    times: tuple[float, ...]  # their times
    last_sample: torch.Tensor  # the (corrected) sample the last predictor started from
    last_order: int  # order of the last predictor (the corrector's order)
    warm: int  # lower_order_nums: steps taken since the last reset, capped at order


def _lam(t: float) -> float:
    if t <= 0:
        return math.inf
    t = min(t, _T_MAX)
    return math.log(1.0 - t) - math.log(t)


def _alpha_sigma(t: float) -> tuple[float, float]:
    if t <= 0:
        return 1.0, 0.0
    t = min(t, _T_MAX)
    return 1.0 - t, t


def _coefficients(h: float, rks: list[float], order: int, variant: str):
    """``h phi_1``, ``B(h)`` and the (R, b) system of UniPC's B(h) updates (predict_x0)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    fact = 1
    R, b = [], []
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return h_phi_1, b_h, R, b


def _solve(R, b) -> list[float]:
    sol = torch.linalg.solve(torch.tensor(R, dtype=torch.float64),
                             torch.tensor(b, dtype=torch.float64))
    return [float(v) for v in sol]


def _step_terms(t_s0, t, outputs, times, order, variant):
    """What UniP and UniC share for a step from ``t_s0`` to ``t``: the latest estimate
    ``m0``, the scaled differences ``d1s`` of earlier estimates, the B(h) coefficients
    and the flow ``alpha``/``sigma`` at both ends."""
    m0 = outputs[-1]
    lam_s0 = _lam(t_s0)
    h = _lam(t) - lam_s0
    rks, d1s = [], []
    for k in range(1, order):
        rk = (_lam(times[-(k + 1)]) - lam_s0) / h
        rks.append(rk)
        d1s.append((outputs[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    h_phi_1, b_h, R, b = _coefficients(h, rks, order, variant)
    a_t, s_t = _alpha_sigma(t)
    _, s_s0 = _alpha_sigma(t_s0)
    return m0, d1s, h_phi_1, b_h, R, b, a_t, s_t, s_s0


def _predict(x, t_s0, t_next, outputs, times, order, variant):
    """UniP-B(h): from ``x`` at ``t_s0`` (latest estimate ``outputs[-1]``) to ``t_next``."""
    m0, d1s, h_phi_1, b_h, R, b, a_t, s_t, s_s0 = _step_terms(t_s0, t_next, outputs, times, order,
                                                              variant)
    x_t = (s_t / s_s0) * x - (a_t * h_phi_1) * m0
    if d1s:
        rhos = [0.5] if order == 2 else _solve([r[:-1] for r in R[:-1]], b[:-1])
        res = sum(r * d for r, d in zip(rhos, d1s, strict=True))
        x_t = x_t - (a_t * b_h) * res
    return x_t


def _correct(m_t, last_sample, t_s0, t, outputs, times, order, variant):
    """UniC-B(h): recompute the sample at ``t`` from ``last_sample`` (at ``t_s0``) using ``m_t``."""
    m0, d1s, h_phi_1, b_h, R, b, a_t, s_t, s_s0 = _step_terms(t_s0, t, outputs, times, order, variant)
    rhos = [0.5] if order == 1 else _solve(R, b)
    x_t = (s_t / s_s0) * last_sample - (a_t * h_phi_1) * m0
    res = m_t - m0
    corr = rhos[-1] * res
    for r, d in zip(rhos[:-1], d1s, strict=True):
        corr = corr + r * d
    return x_t - (a_t * b_h) * corr


def _order_now(order: int, lower_order_final: bool, warm: int, t_next: float,
               info: StepInfo | None) -> int:
    """The predictor's order for this step: ``min(order, steps left, warm-up count + 1)``.

    The steps left (this one included) come from the sampler's ``info``, counted
    over the whole plan across stages as diffusers counts ``len(timesteps) -
    step_index``; without ``info`` (a call outside a plan) only the step onto
    ``t = 0`` counts as the last one."""
    this = order
    if lower_order_final:
        left = info.remaining if info is not None else (1 if t_next == 0 else order)
        this = min(order, left)
    return min(this, warm + 1)


def unipc_solver(plan: Plan | None = None, *, order: int = 2, variant: str = "bh2",
                 lower_order_final: bool = True) -> Solver:
    """A UniPC ``Solver`` (data prediction, B(h) variant ``"bh1"``/``"bh2"``).

    The solver holds no plan: one solver object walks any plan.
    ``lower_order_final`` (diffusers lowers the order to the number of steps
    left in the whole schedule) reads the steps left from the
    :class:`specdiff.solvers.StepInfo` that :func:`specdiff.sample` passes to
    every step (``info.remaining``, counted across stages). A step taken
    without ``info`` lowers only the step onto ``t = 0`` to first order.

    Args:
        plan: accepted for compatibility with earlier releases and ignored (the
            steps left come from ``info``); a ``DeprecationWarning`` says so.
        order: ``solver_order`` (2 for Wan 2.1; 3 for some image pipelines).
        variant: ``solver_type`` of the diffusers scheduler.
        lower_order_final: as in diffusers.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    if plan is not None:
        if not isinstance(plan, Plan):
            raise ValueError(f"unipc_solver(plan=...) takes a specdiff Plan or None, got "
                             f"{type(plan).__name__}; leave it out (it is no longer needed)")
        warnings.warn("unipc_solver(plan=...) is no longer needed and is ignored: the steps "
                      "left come from the StepInfo that specdiff.sample passes",
                      DeprecationWarning, stacklevel=2)

    def step(denoiser, x, t, t_next, *, cond=None, state=None, noise=None, info=None):
        t, t_next = float(t), float(t_next)
        m = call_denoiser(denoiser, x, t, cond, info)
        if state is not None:
            x = _correct(m, state.last_sample, state.times[-1], t, state.outputs, state.times,
                         state.last_order, variant).to(x.dtype)
            outputs = (*state.outputs, m)[-order:]
            times = (*state.times, t)[-order:]
            warm = state.warm
        else:
            outputs, times, warm = (m,), (t,), 0
        this = _order_now(order, lower_order_final, warm, t_next, info)
        x_next = _predict(x, t, t_next, outputs, times, this, variant).to(x.dtype)
        new = _UniPCState(outputs, times, x, this, min(warm + 1, order))
        return x_next, new, m

    return Solver(f"unipc_{variant}_{order}", step, order, stochastic=False, multistep=True)
