"""Per-step randomness shared by the flow-family objectives (flow, spd, ...).

Everything random in engine step ``k`` comes from a generator seeded by
``(seed, k, process)``, never from the global RNG: a run resumed at step ``k``
draws exactly the batches of one that never stopped, and process ``p`` of a
multi-GPU run draws its own shard. The order of the draws in :func:`draw_flow_step`
is part of every recorded training run (the shipped checkpoints' commands
reproduce them), so it never changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import PhotoSet


def step_generator(seed: int, step: int, process: int = 0) -> torch.Generator:
    """The generator for one step: a fixed function of (seed, step, process)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) * 1009 + int(process))


def sample_t(n: int, generator: torch.Generator, uniform: float = 0.1) -> torch.Tensor:
    """Logit-normal(0, 1) flow times mixed with ``uniform`` of U(0, 1), in (0, 1); shape ``(n,)``."""
    z = torch.randn(n, generator=generator)
    u = torch.rand(n, generator=generator)
    pick = torch.rand(n, generator=generator) < uniform
    t = torch.where(pick, u, torch.sigmoid(z))
    return t.clamp(1e-4, 1 - 1e-4)


def resolution_shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift ``s t / (1 + (s - 1) t)`` (SPD's time map, Eq. 6, with ``rho = s``)."""
    from ..spectral import resolution_shift

    return resolution_shift(t, shift).clamp(1e-4, 1 - 1e-4)


def draw_flow_step(cfg: TrainConfig, photos: PhotoSet, g: torch.Generator):
    """One step's ``(size, x0, t, eps)``: crop size, clean crops ``(B, C, S, S)``, times ``(B,)``
    and noise ``(B, C, S, S)``, in this order from ``g``.

    The size is drawn from ``cfg.size_weights``, the batch is ``cfg.batch_for(size)``
    (a constant pixel budget) and ``t`` is resolution-shifted for ``size`` when
    ``cfg.shift_size`` is set.
    """
    w = torch.tensor(cfg.size_weights, dtype=torch.float64)
    size = cfg.sizes[int(torch.multinomial(w / w.sum(), 1, generator=g))]
    n = cfg.batch_for(size)
    x0 = photos.crops(n, size, g, window=cfg.window)
    t = sample_t(n, g, cfg.uniform_t)
    if cfg.shift_size:
        t = resolution_shift_t(t, size / cfg.shift_size)
    return size, x0, t, torch.randn(x0.shape, generator=g)


__all__ = ["step_generator", "sample_t", "resolution_shift_t", "draw_flow_step"]
