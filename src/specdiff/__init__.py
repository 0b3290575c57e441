"""specdiff: spectral progressive sampling for diffusion and flow models.

Denoise on a coarse grid while high frequencies are still noise and grow the
grid as they emerge (Spectral Progressive Diffusion and related methods).

Quick start::

    import specdiff
    from specdiff.plans import flux_times, spd_plan
    plan = spd_plan(flux_times(50, 4096), (128, 128), (0.5, 1.0), spectrum="flux", delta=0.05)
    x = specdiff.sample(denoiser, plan, noise=torch.randn(1, 16, 128, 128))
"""

from .plans import Plan, full_plan, spd_plan
from .sampling import sample

__all__ = ["Plan", "full_plan", "spd_plan", "sample"]
__version__ = "0.1.0"
