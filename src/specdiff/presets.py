"""Known model families: latent geometry, time grid and spectrum (methods.md section 1).

A preset turns a pixel size (and frame count) into the model's latent grid,
its own full-resolution time grid and the SPD spectrum constants, so
``specdiff schedule --model flux --size 1024x1024 --steps 50`` reproduces the
official SPD switch steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .plans import SPECTRA, PowerSpectrum, flow_times, flux_mu, flux_times, wan_times


@dataclass(frozen=True)
class ModelPreset:
    """Geometry and schedule of a model family.

    ``spatial_factor``: pixels per latent element per side (8 for the FLUX and
    Wan VAEs, 1 in pixel space); ``temporal_factor``: frames per latent frame
    (Wan: ``T_lat = (frames - 1) // 4 + 1``); ``multiple``: latent sizes must stay
    divisible by this (2x2 packing / patching); ``patch``: latent elements per
    token per side (for token counts).
    """

    name: str
    spectrum: PowerSpectrum
    spatial_factor: int
    multiple: int
    patch: int
    default_steps: int
    default_shift: float | None
    temporal_factor: int | None = None
    description: str = ""

    def latent_grid(self, height: int, width: int, frames: int | None = None) -> tuple[int, ...]:
        f = self.spatial_factor * self.multiple
        if height < f or width < f or height % f or width % f:
            raise ValueError(
                f"{self.name}: height and width must be positive multiples of {f} pixels, got "
                f"{height}x{width}"
            )
        hw = (height // self.spatial_factor, width // self.spatial_factor)
        if self.temporal_factor is None:
            if frames not in (None, 1):
                raise ValueError(f"{self.name} is an image model; drop --frames")
            return hw
        frames = 81 if frames is None else frames
        if frames < 1 or (frames - 1) % self.temporal_factor:
            raise ValueError(
                f"{self.name}: frames must be {self.temporal_factor}k+1 (e.g. 81), got {frames}"
            )
        return ((frames - 1) // self.temporal_factor + 1, *hw)

    def tokens(self, grid: tuple[int, ...]) -> int:
        n = 1
        for i, g in enumerate(grid):
            n *= g // self.patch if i >= len(grid) - 2 else g
        return n

    def times(self, num_steps: int, grid: tuple[int, ...], *, shift: float | None = None,
              mu: float | None = None) -> torch.Tensor:
        """The model's own full-resolution time grid."""
        if self.name == "flux" and shift is None:
            return flux_times(num_steps, self.tokens(grid), mu=mu)
        if mu is not None:
            raise ValueError(f"--mu applies to FLUX only; use --shift for {self.name}")
        s = self.default_shift if shift is None else shift
        if self.name == "wan":
            return wan_times(num_steps, s)
        return flow_times(num_steps, s)


PRESETS: dict[str, ModelPreset] = {
    "flux": ModelPreset("flux", SPECTRA["flux"], 8, 2, 2, 50, None,
                        description="FLUX.1-dev: 16-ch VAE latents, 2x2 packing, mu from tokens"),
    "wan": ModelPreset("wan", SPECTRA["wan"], 8, 2, 2, 50, 5.0, temporal_factor=4,
                       description="Wan 2.1 T2V: (F, H/8, W/8) latents, flow shift 5 (720p)"),
    "pixelgen": ModelPreset("pixelgen", SPECTRA["pixelgen"], 1, 1, 16, 25, 3.0,
                            description="PixelGen: pixel space, time shift 3"),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


TimesFn = Callable[[int], torch.Tensor]


def describe_mu(preset: ModelPreset, grid) -> str:
    if preset.name == "flux":
        return f"mu={flux_mu(preset.tokens(grid)):.3f}"
    return f"shift={preset.default_shift}"
