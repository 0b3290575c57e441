"""Model presets: latent geometry, token counts and each family's own time grid."""

import math

import pytest
import torch

from specdiff.presets import get_preset


def test_flux_geometry_and_schedule():
    flux = get_preset("flux")
    grid = flux.latent_grid(1024, 1024)
    assert grid == (128, 128)  # 8x VAE
    assert flux.tokens(grid) == 4096  # 2x2 packing: 64 * 64 tokens
    t = flux.times(50, grid)
    # diffusers FluxPipeline: sigmas = linspace(1, 1/50, 50) warped by mu = 1.15 at 4096 tokens
    # (calculate_shift: 0.5 + (1.15 - 0.5) * (4096 - 256) / (4096 - 256)), then a final 0
    s = torch.linspace(1, 1 / 50, 50, dtype=torch.float64)
    em = math.exp(1.15)
    assert torch.allclose(t[:-1], em / (em + 1 / s - 1)) and t[-1] == 0
    with pytest.raises(ValueError, match="multiples of 16"):
        flux.latent_grid(1000, 1024)
    with pytest.raises(ValueError, match="image model"):
        flux.latent_grid(1024, 1024, frames=5)


def test_wan_video_geometry():
    wan = get_preset("wan")
    # Wan 2.1 VAE: 4x temporal compression with the first frame alone, 8x spatial
    assert wan.latent_grid(720, 1280, 81) == (21, 90, 160)
    assert wan.tokens((21, 90, 160)) == 21 * 45 * 80
    with pytest.raises(ValueError, match="4k\\+1"):
        wan.latent_grid(720, 1280, 80)
    t = wan.times(10, (21, 90, 160))
    u = torch.linspace(1, 1 / 1000, 11, dtype=torch.float64)[:-1]
    assert torch.allclose(t[:-1], 5 * u / (1 + 4 * u))  # flow shift 5
    with pytest.raises(ValueError, match="FLUX only"):
        wan.times(10, (21, 90, 160), mu=1.0)


def test_unknown_preset():
    with pytest.raises(ValueError, match="choose one of"):
        get_preset("sdxl")
