"""Objective ``spd``: SPD fine-tuning on the states the progressive sampler visits.

The student ``net`` starts from ``cfg.init``; a frozen copy of ``cfg.init`` is
the teacher whose fine-grid predictions define the targets (see
:func:`make_spd_batch`). Settings: ``cfg.spd_scales``, ``cfg.spd_mix``,
``cfg.spd_delta`` (DESIGN.md section 8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...models import build
from ...models.checkpoint import load_state_checked
from ...spectral import broadcast_time
from ..batches import draw_flow_step, step_generator
from . import register
from .base import Frozen, Objective, Trained, init_weights
from .flow import velocity_mse

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data import PhotoSet


def make_spd_batch(cfg: TrainConfig, photos: PhotoSet, step: int, teacher, process: int = 0, *,
                   post_t_min: dict | None = None):
    """``(x, t, v)`` for SPD fine-tuning: a state the progressive sampler visits and its target.

    SPD is exact when the model's coarse-grid prediction equals its fine-grid
    prediction seen on the coarse grid (``resize`` of the flow state, SPD Eq. 5-6).
    A size-``S`` crop ``x0`` and noise give the fine state ``x_t``; the frozen
    ``teacher`` (the model before fine-tuning) predicts ``x0_hat = x_t - t v(x_t, t)``
    there. Each step builds one of three states (weights ``cfg.spd_mix``):

    - coarse: ``(x_c, t_c) = resize(x_t, t, S r)`` with ``r`` from ``spd_scales``;
      target ``(x_c - resize(x0_hat, 0, S r)) / t_c``, the teacher's clean image on the
      coarse grid as a velocity;
    - post-transition: ``x_p = resize(x_c, t_c, S)`` with fresh noise in the new bins
      (the state right after an SPD switch: no signal above the coarse Nyquist);
      target ``(x_p - x0_hat) / t``; ``t`` is mapped into ``[t_min, 1]`` with
      ``t_min = post_t_min[(S, S r)]`` (SPD's switch time, see :func:`spd_post_times`);
    - full: ``x_t`` itself with the teacher's velocity (keeps the fine-grid model,
      i.e. the baseline, where it was).

    The regression optimum on coarse states is ``E[x0_hat | x_c]``, the teacher's
    fine-grid answer averaged over the detail the coarse grid cannot see.
    """
    from ...spectral import resize

    g = step_generator(cfg.seed, step, process)
    size, x0, t, eps = draw_flow_step(cfg, photos, g)
    mix = torch.tensor(cfg.spd_mix, dtype=torch.float64)
    kind = int(torch.multinomial(mix / mix.sum(), 1, generator=g))
    side = round(size * cfg.spd_scales[int(torch.randint(len(cfg.spd_scales), (1,), generator=g))])
    fresh = torch.randn(x0.shape, generator=g)  # drawn every step: the stream stays aligned
    if kind == 1 and post_t_min:
        lo = float(post_t_min.get((size, side), 0.0))
        t = lo + (1 - lo) * t
    tb = broadcast_time(t, x0)
    xt = (1 - tb) * x0 + tb * eps
    dev = next(teacher.parameters()).device
    with torch.no_grad():
        v_teacher = teacher(xt.to(dev), t.to(dev)).cpu().float()
    if kind == 2:
        return xt, t, v_teacher
    x0_hat = xt - tb * v_teacher
    xc, tc = resize(xt, t, (side, side))
    if kind == 0:
        x0c, _ = resize(x0_hat, 0.0, (side, side))
        return xc, tc, (xc - x0c) / broadcast_time(tc, xc)
    xp, tp = resize(xc, tc, (size, size), noise=fresh)
    return xp, tp, (xp - x0_hat) / broadcast_time(tp, xp)


def spd_post_times(cfg: TrainConfig, spectrum) -> dict:
    """``{(S, S r): t*}``: SPD's switch time (Eq. 10, ``cfg.spd_delta``) for every size and scale.

    ``spectrum(S) -> (A, beta)`` is the data's power law at ``S x S`` (the init
    model's :meth:`~specdiff.models.EmbeddedModel.spectrum`).
    """
    from ...plans import spd_transition_time

    out = {}
    for size in cfg.sizes:
        A, beta = spectrum(size)
        for r in cfg.spd_scales:
            out[(size, round(size * r))] = spd_transition_time(A, beta, r, size, cfg.spd_delta)
    return out


@register("spd")
class SPD(Objective):
    """Student ``net`` and frozen ``teacher``, both from ``cfg.init``; velocity regression on
    :func:`make_spd_batch`'s states."""

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if not cfg.init:
            raise ValueError("objective 'spd' fine-tunes a trained model: pass init= (e.g. "
                             "'unet-base' or a checkpoint path)")
        if not cfg.spd_scales or any(not 0 < r < 1 for r in cfg.spd_scales):
            raise ValueError(f"spd_scales must be in (0, 1), got {cfg.spd_scales}")
        if any(round(s * r) < 8 for s in cfg.sizes for r in cfg.spd_scales):
            raise ValueError("every size x spd_scale must be >= 8 pixels")
        if not 0 < cfg.spd_delta < 1:
            raise ValueError(f"spd_delta must be in (0, 1), got {cfg.spd_delta}")
        if len(cfg.spd_mix) != 3 or min(cfg.spd_mix) < 0 or not sum(cfg.spd_mix) > 0:
            raise ValueError(f"spd_mix needs 3 weights >= 0 (coarse, post, full), got {cfg.spd_mix}")

    def models(self):
        from ...models import EmbeddedModel

        init_state, init_config, init_meta = init_weights(self.cfg)
        net = build(self.cfg.model)
        load_state_checked(net, init_state, self.cfg.init)
        teacher = build(init_config)
        load_state_checked(teacher, init_state, self.cfg.init)
        # EmbeddedModel reads the data spectrum from the init model's meta (the teacher
        # network also serves the lookup: no extra network is built for it)
        self.post_t_min = spd_post_times(
            self.cfg, EmbeddedModel(teacher, init_config, init_meta).spectrum)
        return {"net": Trained(net), "teacher": Frozen(teacher)}

    def batch(self, nets, photos, step, process, update):
        return make_spd_batch(self.cfg, photos, step, nets["teacher"], process,
                              post_t_min=self.post_t_min)

    def loss(self, nets, batch, update):
        return velocity_mse(nets["net"], batch)


__all__ = ["SPD", "make_spd_batch", "spd_post_times"]
