"""The ``Denoiser`` boundary: every model becomes ``(x, t, **cond) -> x0_hat``.

Frame: rectified flow, ``x_t = (1 - t) x0 + t eps``. Models trained in other
frames are converted once, here (the parameterisation table, EDM-style):

=================  ===========================  ==================================
prediction         model input                  x0 from the model output ``m``
=================  ===========================  ==================================
``"flow"``         ``x`` at flow time ``t``     ``x - t m``  (``m = eps - x0``)
``"x0"``           ``x`` at flow time ``t``     ``m``
``"eps"`` (VP)     ``(a + s) x`` at VP step     ``(x - t m) / (1 - t)``
``"v"`` (VP)       ``(a + s) x`` at VP step     ``a x_vp - s m``  (``a^2 + s^2 = 1``)
=================  ===========================  ==================================

A VP state ``a x0 + s eps`` is the flow state ``x_vp / (a + s)`` at
``t = s / (a + s)`` (DESIGN.md section 2).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from .solvers import Denoiser
from .spectral import broadcast_time

__all__ = [
    "Denoiser",
    "FlowDenoiser",
    "VPDenoiser",
    "vp_to_flow",
    "flow_to_vp",
    "ve_to_flow",
    "flow_to_ve",
]


def check_call(x, t) -> torch.Tensor:
    """``t`` as a denoiser call takes it, checked against ``x`` before the network runs.

    A number becomes a ``(B,)`` tensor of ``x``'s dtype (as the solvers pass it); a float
    tensor of shape ``()`` or ``(1,)`` is expanded to ``(B,)`` (same values: the network
    always sees one time per sample) and a ``(B,)`` one is returned as it is. Anything else (a
    string, ``None``, an integer tensor, ``(B, 1)``, another length, values outside
    ``[0, 1]``) is a ``ValueError``: the network would otherwise run first and fail with a
    ``TypeError``, broadcast a wrong batch, or extrapolate silently (``t = 5``).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a (B, C, *grid) float tensor, got "
                         f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}"
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
    b = x.shape[0]
    if isinstance(t, numbers.Real) and not isinstance(t, bool):
        t = torch.full((b,), float(t), dtype=x.dtype, device=x.device)
    elif not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise ValueError(f"t must be a float or a (B,) float tensor of flow times in [0, 1] "
                         f"(B = {b}), got {t.dtype if isinstance(t, torch.Tensor) else repr(t)}")
    elif t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
        raise ValueError(f"t must be a float or a (B,) tensor for a batch of B = {b}, got shape "
                         f"{tuple(t.shape)}; pass one time per sample (t.flatten() for (B, 1))")
    # one reduction over B values (NaN fails both comparisons)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in [0, 1] (flow time, 1 is pure noise), got "
                         f"{t.flatten()[:8].tolist()}")
    return t if t.ndim == 1 and t.shape[0] == b else t.reshape(-1).expand(b)


def vp_to_flow(x_vp: torch.Tensor, a, s):
    """VP state ``a x0 + s eps`` -> ``(x, t)`` in the flow frame (``x = x_vp / (a + s)``)."""
    return x_vp / (a + s), s / (a + s)


def flow_to_vp(x: torch.Tensor, t, a):
    """Flow state at ``t`` -> VP state with signal scale ``a`` (``s = a t / (1 - t)``)."""
    return x * a / (1 - t)


def ve_to_flow(x_ve: torch.Tensor, sigma):
    """VE / EDM state ``x0 + sigma eps`` -> ``(x / (1 + sigma), sigma / (1 + sigma))``."""
    return x_ve / (1 + sigma), sigma / (1 + sigma)


def flow_to_ve(x: torch.Tensor, t):
    """Flow state at ``t < 1`` -> EDM state ``x / (1 - t)`` with ``sigma = t / (1 - t)``."""
    return x / (1 - t), t / (1 - t)


class FlowDenoiser:
    """Wrap a flow-frame network ``model(x, t, **cond)`` as a ``Denoiser``.

    Args:
        model: callable taking the state (cast to ``dtype``), the flow time
            (mapped by ``time_scale``, e.g. 1000 for diffusers transformers) and
            the conditioning.
        prediction: ``"flow"`` (velocity ``eps - x0``, FLUX/SD3/Wan and the
            embedded model) or ``"x0"``.
        dtype: network dtype (e.g. bfloat16); solver state stays float32 and
            only the network call is cast.
    """

    def __init__(self, model: Callable[..., torch.Tensor], prediction: str = "flow", *,
                 time_scale: float = 1.0, dtype: torch.dtype | None = None):
        if prediction not in ("flow", "x0"):
            raise ValueError(f"prediction must be 'flow' or 'x0' for a flow model, got {prediction!r}")
        self.model = model
        self.prediction = prediction
        self.time_scale = float(time_scale)
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        t = check_call(x, t)
        dt = self.dtype or x.dtype
        out = self.model(x.to(dt), (t * self.time_scale).to(dt), **cond).to(x.dtype)
        if self.prediction == "x0":
            return out
        return x - broadcast_time(t, x) * out


class VPDenoiser:
    """Wrap a variance-preserving discrete-time model (DDPM/SDXL) as a flow ``Denoiser``.

    The model is called as ``model(x_vp, timestep, **cond)`` with
    ``x_vp = sqrt(abar) / (1 - t) * x`` and a continuous ``timestep`` obtained by
    interpolating ``log(sigma)`` over the training schedule, where the VE sigma
    is ``t / (1 - t)`` (k-diffusion's ``DiscreteSchedule.sigma_to_t``).

    Args:
        model: eps- or v-prediction network.
        alphas_cumprod: ``(T,)`` training schedule (``scheduler.alphas_cumprod``).
        prediction: ``"eps"`` or ``"v"``.
    """

    def __init__(self, model: Callable[..., torch.Tensor], alphas_cumprod: torch.Tensor,
                 prediction: str = "eps", *, dtype: torch.dtype | None = None):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v' for a VP model, got {prediction!r}")
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ac.ndim != 1 or (ac <= 0).any() or (ac >= 1).any():
            raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1)")
        self.model = model
        self.prediction = prediction
        self.dtype = dtype
        self.log_sigmas = torch.log(torch.sqrt((1 - ac) / ac))
        self.t_min = float(self.flow_time_of(0))
        self.t_max = float(self.flow_time_of(len(ac) - 1))

    def flow_time_of(self, timestep) -> torch.Tensor:
        """Flow time of a (possibly fractional) training timestep."""
        ts = torch.as_tensor(timestep, dtype=torch.float64)
        lo = ts.floor().long().clamp(0, len(self.log_sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.log_sigmas) - 1)
        w = ts - lo
        sigma = torch.exp((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi])
        return sigma / (1 + sigma)

    def timestep_of(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous training timestep whose VE sigma equals ``t / (1 - t)``."""
        t64 = t.to(torch.float64).cpu()
        if (t64 < self.t_min - 1e-9).any() or (t64 > self.t_max + 1e-9).any():
            raise ValueError(
                f"flow time {t64.tolist()} is outside this VP model's range "
                f"[{self.t_min:.4g}, {self.t_max:.4g}]; build the time grid from the model's "
                "own sigmas"
            )
        log_sigma = torch.log(t64 / (1 - t64))
        ls = self.log_sigmas
        idx = torch.searchsorted(ls, log_sigma).clamp(1, len(ls) - 1)
        lo, hi = ls[idx - 1], ls[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1).to(torch.float64) + w

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        t = check_call(x, t)
        tb = broadcast_time(t, x)
        timestep = self.timestep_of(t).to(device=x.device)
        sigma = tb / (1 - tb)
        a = 1 / torch.sqrt(1 + sigma**2)  # sqrt(abar) at this noise level
        x_vp = x * a / (1 - tb)
        dt = self.dtype or x.dtype
        out = self.model(x_vp.to(dt), timestep.to(torch.float32), **cond).to(x.dtype)
        if self.prediction == "eps":
            return (x - tb * out) / (1 - tb)
        s = a * sigma
        return a * x_vp - s * out


def check_prediction(value: str) -> str:
    allowed = ("flow", "x0", "eps", "v")
    if value not in allowed:
        raise ValueError(f"prediction must be one of {allowed}, got {value!r}")
    return value


def vp_flow_time(alphas_cumprod_value: float) -> float:
    """Flow time of a VP noise level given ``abar``: ``s / (a + s)``."""
    a = math.sqrt(alphas_cumprod_value)
    s = math.sqrt(1 - alphas_cumprod_value)
    return s / (a + s)
