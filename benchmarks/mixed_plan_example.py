"""A mixed-transition, two-model plan on the shipped models (README "Stages with their own
transition and model"): the UNet runs 32^2 and 64^2, the DiT 128^2."""

import torch

import specdiff
from specdiff import Spectral, X0Renoise
from specdiff.models import load
from specdiff.plans import staged_plan

unet, dit = load("unet"), load("dit")
# 32^2 -> 64^2 by the exact spectral carry, 64^2 -> 128^2 by an x0 re-noise to t = 0.6
plan = staged_plan(
    grids=[(32, 32), (64, 64), (128, 128)],
    spans=[(1.0, 0.85), (None, 0.55), (0.6, 0.0)],   # None: the carry sets the start
    steps=[6, 10, 20], profile=unet.times(50, (128, 128)),
    transition=[Spectral("dct"), X0Renoise("bicubic")],
    models=["unet", "unet", "dit"], name="unet 32->64, dit 128")
for row in plan.describe():
    print(row["stage"], row["grid"], row["transition"], row["model"], row["evaluations"],
          f"{row['t_start']:.3f}->{row['t_end']:.3f}", f"{row['cost']:.3f}")
bound = plan.speedup_bound(baseline_evaluations=50)
print(f"cost {plan.cost():.2f} full-res evaluations, bound {bound:.2f}x vs 50 steps")
noise = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
images = specdiff.sample({"unet": unet, "dit": dit}, plan, noise=noise,
                         generator=[torch.Generator().manual_seed(i) for i in range(2)])
print(tuple(images.shape), float(images.min()), float(images.max()))
