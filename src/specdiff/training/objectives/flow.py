"""Objective ``flow``: rectified flow / flow matching on data crops.

For a clean crop ``x0``, noise ``eps`` and time ``t``, the state is
``x_t = (1 - t) x0 + t eps`` and the network regresses the velocity
``v = eps - x0`` with a mean-squared error. ``t`` is drawn logit-normal (SD3's
``m = 0, s = 1``), mixed with ``cfg.uniform_t`` of uniform so both ends of
[0, 1] are trained; each step uses one crop size from ``cfg.sizes`` with the
batch scaled to a constant pixel budget, so the model sees every resolution it
will be sampled at (any-resolution SPD stages). With ``cfg.init`` the network
starts from that checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...models import build
from ...models.checkpoint import load_state_checked
from ...spectral import broadcast_time
from ..batches import draw_flow_step, step_generator
from . import register
from .base import Objective, Trained, init_weights

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data import PhotoSet

#: the name of the one loss term of ``flow`` and ``spd`` (history and loss plot key)
TERM = "velocity MSE"


def make_batch(cfg: TrainConfig, photos: PhotoSet, step: int, process: int = 0):
    """``(x_t, t, v)`` for step ``step``: crops at one size ``(B, C, S, S)``, times ``(B,)``,
    the target velocity ``eps - x0``."""
    _, x0, t, eps = draw_flow_step(cfg, photos, step_generator(cfg.seed, step, process))
    tb = broadcast_time(t, x0)
    return (1 - tb) * x0 + tb * eps, t, eps - x0


def velocity_mse(net: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    """``{TERM: mean((net(x, t) - v)^2)}`` for a batch ``(x, t, v)``."""
    x, t, v = batch
    return {TERM: torch.nn.functional.mse_loss(net(x, t), v)}


@register("flow")
class Flow(Objective):
    """One trained network ``net`` (built from ``cfg.model``), velocity regression on data."""

    def models(self):
        net = build(self.cfg.model)
        if self.cfg.init:
            load_state_checked(net, init_weights(self.cfg)[0], self.cfg.init)
        return {"net": Trained(net)}

    def batch(self, nets, photos, step, process, update):
        return make_batch(self.cfg, photos, step, process)

    def loss(self, nets, batch, update):
        return velocity_mse(nets["net"], batch)


__all__ = ["Flow", "make_batch", "velocity_mse", "TERM"]
