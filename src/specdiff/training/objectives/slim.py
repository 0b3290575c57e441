"""Objective ``slim``: spectrum-aware distillation of a slim model from a large teacher.

"Diffusion Probabilistic Model Made Slim" (arXiv 2211.17106, methods.md section 3)
trains a small model with

    L = L_flow + lambda_s * L_spatial + lambda_f * L_freq

on the same noised crops the data loss uses:

- ``L_flow``: the rectified-flow velocity MSE against the data (``eps - x0``), as
  objective ``flow`` (the paper's ``L_DDPM``);
- ``L_spatial``: the student's decoder features at every scale both networks have,
  mapped to the teacher's widths by 1x1 convolutions (trained with the student, not
  exported), against the frozen teacher's; each level's MSE is divided by the mean
  square of the teacher's feature (so levels of any magnitude weigh alike and
  ``lambda_s`` does not depend on the teacher's activation scale), then averaged;
- ``L_freq``: the outputs (velocities) compared in the 2-D DFT with the paper's
  inverse-spectrum weight ``w = |F(x0)|^alpha`` (``alpha = -1``: low-energy, high-frequency
  bins weigh more) of the clean crop, per image and channel; ``F`` is orthonormal and ``w``
  is normalised to mean 1 over the bins, so with ``alpha = 0`` it is exactly the output
  MSE (Parseval) and ``lambda_f`` is on the scale of the other terms. The magnitude is
  floored at ``1e-3`` of its mean before the power, so an empty bin cannot take the weight.

Options (``TrainConfig.options``; CLI ``--teacher --lambda-spatial --lambda-freq
--freq-alpha``): ``teacher`` (shipped name or checkpoint, default ``"unet"``),
``lambda_spatial`` and ``lambda_freq`` (0.1 each, the paper's), ``alpha`` (-1). With both
lambdas 0 the teacher is not run: the data-only baseline of the ablation at the same
batches. The student is ``cfg.model`` (the slim ``wgunet`` by default,
:func:`slim_config`), from scratch or from ``cfg.init``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...models import build
from ...models.checkpoint import load_state_checked
from ...spectral import broadcast_time
from ..batches import draw_flow_step, step_generator
from . import register
from .base import Frozen, Objective, Trained, init_weights
from .flow import TERM

if TYPE_CHECKING:
    from ..config import TrainConfig

#: loss-term names (history and loss-plot keys), each already multiplied by its lambda
SPATIAL, FREQ = "spatial (x lambda_s)", "frequency (x lambda_f)"
#: model kinds with multi-scale decoder features (``forward_features``)
FEATURE_KINDS = ("unet", "wgunet")


@dataclass(frozen=True)
class SlimOptions:
    """The distillation's settings; defaults are the paper's (lambda_s = lambda_f = 0.1,
    alpha = -1)."""

    teacher: str = "unet"
    lambda_spatial: float = 0.1
    lambda_freq: float = 0.1
    alpha: float = -1.0

    def __post_init__(self):
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ValueError("the slim objective needs a teacher (--teacher): a shipped name "
                             "such as 'unet' or a checkpoint path")
        for name in ("lambda_spatial", "lambda_freq", "alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.lambda_spatial < 0 or self.lambda_freq < 0:
            raise ValueError(f"lambda_spatial and lambda_freq (--lambda-spatial, --lambda-freq) "
                             f"weigh loss terms: they must be >= 0 (0 turns a term off), got "
                             f"{self.lambda_spatial} and {self.lambda_freq}")

    @property
    def distills(self) -> bool:
        return self.lambda_spatial > 0 or self.lambda_freq > 0


def spectral_weights(x0: torch.Tensor, alpha: float, floor: float = 1e-3) -> torch.Tensor:
    """``|F(x0)|^alpha`` per image and channel, normalised to mean 1 over the DFT bins.

    ``x0``: ``(B, C, H, W)``; returns ``(B, C, H, W)`` (one weight per ``fft2`` bin). The
    magnitude is floored at ``floor`` times its mean over the bins before the power.
    """
    mag = torch.fft.fft2(x0.float(), norm="ortho").abs()
    mag = mag.clamp_min(floor * mag.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12))
    w = mag.pow(alpha)
    return w / w.mean(dim=(-2, -1), keepdim=True)


def frequency_loss(student: torch.Tensor, teacher: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """``mean(w * |F(student) - F(teacher)|^2)`` over batch, channels and bins (``F``: the
    orthonormal 2-D DFT). With ``w = 1`` this equals ``mse(student, teacher)``."""
    diff = torch.fft.fft2(student.float() - teacher.float(), norm="ortho")
    return (weights * (diff.real ** 2 + diff.imag ** 2)).mean()


def feature_loss(projected: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """Mean over levels of ``mse(p, f) / mean(f^2)``: relative feature error per scale."""
    terms = [F.mse_loss(p, f) / f.pow(2).mean().clamp_min(1e-12)
             for p, f in zip(projected, target, strict=True)]
    return torch.stack(terms).mean()


class SlimStudent(nn.Module):
    """The student network and the 1x1 convolutions that map its features to the teacher's.

    ``forward(x, t) -> (v, projected)``: the velocity and, per shared level, the
    student's feature projected to the teacher's width. Only ``net`` is exported.
    """

    def __init__(self, net: nn.Module, student_widths, teacher_widths):
        super().__init__()
        self.net = net
        self.proj = nn.ModuleList(nn.Conv2d(cs, ct, 1)
                                  for cs, ct in zip(student_widths, teacher_widths))

    def forward(self, x, t):
        v, feats = self.net.forward_features(x, t)
        return v, [p(f) for p, f in zip(self.proj, feats)]


def _widths(config) -> list[int]:
    return [config.base * m for m in config.mults]


def check_teacher(student_config, teacher_config, teacher_meta: dict, opts: SlimOptions) -> None:
    """``ValueError`` (saying what to do) when ``teacher`` cannot teach ``student``."""
    name = opts.teacher
    if teacher_config.channels != student_config.channels:
        raise ValueError(f"teacher {name!r} has {teacher_config.channels} channels, the student "
                         f"{student_config.channels}: distil from a teacher of the same images "
                         "(or set the student's channels with --model-config)")
    rng = teacher_meta.get("data_range", [-1, 1])
    if [float(v) for v in rng] != [-1.0, 1.0]:
        raise ValueError(f"teacher {name!r} was trained on data in {rng}, the student on [-1, 1] "
                         "images: use a teacher of [-1, 1] data (every specdiff model is)")
    if teacher_meta.get("prediction", "flow") != "flow":
        raise ValueError(f"teacher {name!r} predicts {teacher_meta['prediction']!r}, not the flow "
                         "velocity the student learns: use a flow model")
    if opts.lambda_spatial > 0:
        for who, c in (("teacher", teacher_config), ("student", student_config)):
            if c.kind not in FEATURE_KINDS:
                raise ValueError(f"feature distillation (lambda_spatial > 0) needs UNet features; "
                                 f"the {who} is a {c.kind}: use a unet/wgunet {who}, or "
                                 "--lambda-spatial 0")
        if teacher_config.multiple != student_config.multiple:
            raise ValueError(f"teacher {name!r} pads grids to a multiple of "
                             f"{teacher_config.multiple}, the student to {student_config.multiple}:"
                             " give the student as many levels as the teacher (len(mults)) so "
                             "their feature maps have the same sizes")


def make_slim_batch(cfg: TrainConfig, photos, step: int, teacher, opts: SlimOptions,
                    process: int = 0) -> dict:
    """One step's tensors: ``x`` (the noised crops), ``t``, ``v`` (data velocity), and with a
    teacher its velocity ``v_teacher``, its features ``features`` and the DFT weights of the
    clean crops ``weights``. Draws exactly objective ``flow``'s batch (same generator)."""
    _, x0, t, eps = draw_flow_step(cfg, photos, step_generator(cfg.seed, step, process))
    tb = broadcast_time(t, x0)
    xt = (1 - tb) * x0 + tb * eps
    batch = {"x": xt, "t": t, "v": eps - x0}
    if teacher is None:
        return batch
    dev = next(teacher.parameters()).device
    with torch.no_grad():
        v_t, feats = teacher.forward_features(xt.to(dev), t.to(dev))
    batch["v_teacher"] = v_t.cpu().float()
    if opts.lambda_spatial > 0:
        batch["features"] = [f.cpu().float() for f in feats]
    if opts.lambda_freq > 0:
        batch["weights"] = spectral_weights(x0, opts.alpha)
    return batch


@register("slim")
class Slim(Objective):
    """Student ``student`` (``cfg.model`` + feature projections), frozen ``teacher``."""

    Options = SlimOptions
    exports = None  # the student's ``net`` only: see export()

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        kind = cfg.model.get("kind") if isinstance(cfg.model, dict) else None
        if kind not in FEATURE_KINDS:
            raise ValueError(f"the slim student must be a 'wgunet' or 'unet' model (it returns "
                             f"multi-scale features), got kind {kind!r}")

    def models(self):
        from ...models import checkpoint_path
        from ...models.checkpoint import read_checkpoint
        from ...models.config import config_from_dict

        opts = self.options
        student_config = config_from_dict(self.cfg.model)
        net = build(student_config)
        if self.cfg.init:
            load_state_checked(net, init_weights(self.cfg)[0], self.cfg.init)
        t_state, t_config, t_meta = read_checkpoint(checkpoint_path(opts.teacher))
        check_teacher(student_config, t_config, t_meta, opts)
        levels = len(student_config.mults) if opts.lambda_spatial > 0 else 0
        student = SlimStudent(net, _widths(student_config)[:levels],
                              _widths(t_config)[:levels] if levels else [])
        specs = {"student": Trained(student)}
        if opts.distills:
            teacher = build(t_config)
            load_state_checked(teacher, t_state, opts.teacher)
            specs["teacher"] = Frozen(teacher)
        return specs

    def batch(self, nets, photos, step, process, update):
        return make_slim_batch(self.cfg, photos, step, nets.get("teacher"), self.options, process)

    def loss(self, nets, batch, update):
        opts = self.options
        v, projected = nets["student"](batch["x"], batch["t"])
        terms = {TERM: F.mse_loss(v, batch["v"])}
        if opts.lambda_spatial > 0:
            terms[SPATIAL] = opts.lambda_spatial * feature_loss(projected, batch["features"])
        if opts.lambda_freq > 0:
            terms[FREQ] = opts.lambda_freq * frequency_loss(v, batch["v_teacher"],
                                                            batch["weights"])
        return terms

    def export(self, weights, out, history, *, photos, command, spectrum_sizes=(64, 128)):
        from ..export import export_model

        return export_model(self.cfg, weights["student"].net, out, history, photos=photos,
                            command=command, spectrum_sizes=spectrum_sizes)


def slim_config(teacher: str = "unet", *, model: str | None = None,
                model_config: dict | None = None, **overrides):
    """The slim distillation recipe (a validated :class:`TrainConfig`).

    Student: ``model`` (default ``"wgunet"``, the shipped ``unet-slim``'s architecture;
    ``"unet"`` with ``model_config`` for a plain slim UNet) from scratch. Data, crop
    window, time shift and uniform-t share come from the teacher's training record, the
    crop sizes and their weights from the UNet's pre-training recipe (the student is
    sampled at the same grids as the teacher). ``overrides`` are TrainConfig fields
    (``options`` merged into the distillation's: ``lambda_spatial``, ...).
    """
    from ...models import checkpoint_path
    from ...models.checkpoint import read_checkpoint
    from ...models.config import WGUNetConfig, config_from_dict, config_to_dict
    from ..config import default_config, inherited_data_settings

    kind = model or "wgunet"
    if kind not in FEATURE_KINDS:
        raise ValueError(f"the slim student must be a 'wgunet' or a 'unet' (--model), got {kind!r}")
    if kind == "wgunet":
        arch = config_to_dict(WGUNetConfig())
    else:  # a plain UNet as slim as the default wgunet: the ablation's baseline
        arch = {**config_to_dict(WGUNetConfig()), "kind": "unet"}
        del arch["gate_ratio"]
    arch.update(model_config or {})
    config_from_dict(arch)
    _, _, meta = read_checkpoint(checkpoint_path(teacher))
    keep = inherited_data_settings(meta)
    options = {"teacher": str(teacher), **(overrides.pop("options", None) or {})}
    base = replace(default_config("unet"), model=arch, objective="slim", options=options, **keep)
    return replace(base, **overrides).validate()


__all__ = ["Slim", "SlimOptions", "SlimStudent", "make_slim_batch", "spectral_weights",
           "frequency_loss", "feature_loss", "check_teacher", "slim_config", "SPATIAL", "FREQ"]
