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

from .plans import Plan, PlanMeta, Stage, full_plan, spd_plan
from .sampling import sample
from .transitions import Pyramid, Spectral, X0Renoise

__all__ = ["Plan", "PlanMeta", "Stage", "full_plan", "spd_plan", "sample", "Spectral", "Pyramid",
           "X0Renoise"]
__version__ = "0.1.0"
