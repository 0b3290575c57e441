"""specdiff: spectral progressive sampling for diffusion and flow models.

Denoise on a coarse grid while high frequencies are still noise and grow the
grid as they emerge (Spectral Progressive Diffusion and related methods).

Quick start::

    import specdiff
    from specdiff.plans import flux_times, spd_plan
    plan = spd_plan(flux_times(50, 4096), (128, 128), (0.5, 1.0), spectrum="flux", delta=0.05)
    x = specdiff.sample(denoiser, plan, noise=torch.randn(1, 16, 128, 128))

A plan's stages may each have their own entering transition
(:mod:`specdiff.transitions`) and model key; ``sample`` then takes a mapping
from keys to denoisers.
"""

from __future__ import annotations

import importlib

# The public names, imported on first use (PEP 562): `import specdiff` and the CLI's
# `--help` and argument errors then start without importing torch (about a second).
_EXPORTS = {
    "Plan": "plans", "PlanMeta": "plans", "Stage": "plans", "full_plan": "plans",
    "spd_plan": "plans", "sample": "sampling", "Spectral": "transitions",
    "Pyramid": "transitions", "X0Renoise": "transitions",
}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'specdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
