"""Training loop for the embedded flow models (accelerate; CPU here, many GPUs unchanged).

Objective (rectified flow / flow matching): for a clean crop ``x0``, noise
``eps`` and time ``t``, the state is ``x_t = (1 - t) x0 + t eps`` and the
network regresses the velocity ``v = eps - x0`` with a mean-squared error.
``t`` is drawn logit-normal (SD3's ``m = 0, s = 1``), mixed with 10% uniform
so both ends of [0, 1] are trained; each step uses one crop size from
``sizes`` with the batch scaled to a constant pixel budget, so the model sees
every resolution it will be sampled at (any-resolution SPD stages).

Reproducibility and resume: everything random in step ``k`` (crops, flips,
``t``, ``eps``) comes from a generator seeded by ``(seed, k, process)``, and
the checkpoint holds the model, EMA and optimizer tensors, so a run resumed
from step ``k`` is bit-identical to one that never stopped. Checkpoints are a
single safetensors file written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..fileio import save_figure
from ..models import build, save_model
from ..models.checkpoint import atomic_save_safetensors
from ..models.config import config_from_dict, config_to_dict
from .data import PhotoSet, fit_spectra, load_photos

STATE_FILE = "train_state.safetensors"
MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    Defaults: the recipe of the shipped UNet (docs/embedded-model.md).
    """

    model: dict = field(default_factory=lambda: {"kind": "unet"})  # a model config dict
    data: str = "skimage"  # "skimage" or a folder of images
    steps: int = 3000
    sizes: tuple[int, ...] = (32, 48, 64, 96, 128)  # crop sizes, one per step
    size_weights: tuple[float, ...] = (0.3, 0.2, 0.3, 0.1, 0.1)
    pixels: int = 8 * 64 * 64  # pixel budget per step: batch = pixels // size^2
    window: int = 128  # smallest source window of a crop, any size (scale-consistent; 0: 1:1)
    lr: float = 4e-4
    warmup: int = 100  # linear LR warm-up steps
    min_lr_frac: float = 0.1  # cosine decay to lr * min_lr_frac at the last step
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # with warm-up: min(decay, (1 + k) / (10 + k))
    uniform_t: float = 0.1  # fraction of uniform t in the logit-normal mix
    # Resolution shift of the training times (SD3): a size-S crop draws t' = s t / (1 + (s-1) t)
    # with s = S / shift_size (0: off). The DCT power of a frequency (cycles per image) grows
    # with the pixel count, so at 128^2 it emerges from the noise at a higher t than at 64^2
    # (by exactly this shift, s = 2); unshifted training starves the high-t range where a
    # 128^2 image's large-scale structure is decided, and the model then draws much less
    # large-scale power at 128^2 than at 64^2. 64 matches the sampler's default grid.
    shift_size: int = 0
    # SPD fine-tuning (DESIGN.md section 8): start from ``init`` (a shipped name or a
    # checkpoint path) and, with objective "spd", train on the states the progressive
    # sampler visits, with a frozen copy of ``init`` as the teacher (see make_spd_batch).
    init: str = ""
    objective: str = "flow"  # "flow": data targets; "spd": SPD self-distillation
    spd_scales: tuple[float, ...] = (0.5,)  # coarse grid side / fine grid side
    # coarse, post-transition, full-grid states; post-transition states are off by default:
    # with 0.2 of them the SPD SWD gap on the shipped UNet was +8.5% instead of +3.0%
    # (32 seeds each, docs/embedded-model.md)
    spd_mix: tuple[float, float, float] = (0.7, 0.0, 0.3)
    # Post-transition states are drawn at t >= SPD's switch time for this delta (paper Eq. 10
    # with the init model's data spectrum): SPD never visits a fine grid without its high
    # frequencies below that time, and there the missing signal is an error no model can
    # predict, growing like 1 / t. 0.1: covers the usual deltas 0.01-0.1.
    spd_delta: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25

    def validate(self) -> TrainConfig:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if len(self.sizes) != len(self.size_weights) or not self.sizes:
            raise ValueError("sizes and size_weights need the same (non-zero) length")
        if any(s < 8 for s in self.sizes) or any(w < 0 for w in self.size_weights):
            raise ValueError("crop sizes must be >= 8 and weights >= 0")
        if self.window < 0:
            raise ValueError(f"window must be >= 0 (0: 1:1 crops allowed), got {self.window}")
        if not sum(self.size_weights) > 0:
            raise ValueError("size_weights must not all be zero")
        if self.shift_size < 0:
            raise ValueError(f"shift_size must be >= 0 (0: no resolution shift), got {self.shift_size}")
        if not (self.lr > 0 and 0 <= self.ema_decay < 1 and 0 <= self.uniform_t <= 1):
            raise ValueError("need lr > 0, 0 <= ema_decay < 1 and 0 <= uniform_t <= 1")
        if self.objective not in ("flow", "spd"):
            raise ValueError(f"objective must be 'flow' or 'spd', got {self.objective!r}")
        if self.objective == "spd":
            if not self.init:
                raise ValueError("objective 'spd' fine-tunes a trained model: pass init= (e.g. "
                                 "'unet-base' or a checkpoint path)")
            if not self.spd_scales or any(not 0 < r < 1 for r in self.spd_scales):
                raise ValueError(f"spd_scales must be in (0, 1), got {self.spd_scales}")
            if any(round(s * r) < 8 for s in self.sizes for r in self.spd_scales):
                raise ValueError("every size x spd_scale must be >= 8 pixels")
            if not 0 < self.spd_delta < 1:
                raise ValueError(f"spd_delta must be in (0, 1), got {self.spd_delta}")
            if len(self.spd_mix) != 3 or min(self.spd_mix) < 0 or not sum(self.spd_mix) > 0:
                raise ValueError(f"spd_mix needs 3 weights >= 0 (coarse, post, full), got "
                                 f"{self.spd_mix}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        config_from_dict(self.model)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw).validate()

    def batch_for(self, size: int) -> int:
        return max(1, self.pixels // (size * size))


# ---------------------------------------------------------------------------
# per-step randomness
# ---------------------------------------------------------------------------


def step_generator(seed: int, step: int, process: int = 0) -> torch.Generator:
    """The generator for one step: a fixed function of (seed, step, process)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) * 1009 + int(process))


def sample_t(n: int, generator: torch.Generator, uniform: float = 0.1) -> torch.Tensor:
    """Logit-normal(0, 1) flow times mixed with ``uniform`` of U(0, 1), in (0, 1)."""
    z = torch.randn(n, generator=generator)
    u = torch.rand(n, generator=generator)
    pick = torch.rand(n, generator=generator) < uniform
    t = torch.where(pick, u, torch.sigmoid(z))
    return t.clamp(1e-4, 1 - 1e-4)


def resolution_shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift ``s t / (1 + (s - 1) t)`` (SPD's time map, Eq. 6, with ``rho = s``)."""
    from ..spectral import resolution_shift

    return resolution_shift(t, shift).clamp(1e-4, 1 - 1e-4)


def _draw(cfg: TrainConfig, photos: PhotoSet, g: torch.Generator):
    """One step's crop size, clean crops ``x0``, times ``t`` and noise ``eps`` (in this order
    from ``g``: the order is part of every recorded training run)."""
    w = torch.tensor(cfg.size_weights, dtype=torch.float64)
    size = cfg.sizes[int(torch.multinomial(w / w.sum(), 1, generator=g))]
    n = cfg.batch_for(size)
    x0 = photos.crops(n, size, g, window=cfg.window)
    t = sample_t(n, g, cfg.uniform_t)
    if cfg.shift_size:
        t = resolution_shift_t(t, size / cfg.shift_size)
    return size, x0, t, torch.randn(x0.shape, generator=g)


def make_batch(cfg: TrainConfig, photos: PhotoSet, step: int, process: int = 0):
    """``(x_t, t, v)`` for step ``step``: crops at one size, times, the target velocity."""
    _, x0, t, eps = _draw(cfg, photos, step_generator(cfg.seed, step, process))
    tb = t[:, None, None, None]
    return (1 - tb) * x0 + tb * eps, t, eps - x0


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
    from ..spectral import resize

    g = step_generator(cfg.seed, step, process)
    size, x0, t, eps = _draw(cfg, photos, g)
    mix = torch.tensor(cfg.spd_mix, dtype=torch.float64)
    kind = int(torch.multinomial(mix / mix.sum(), 1, generator=g))
    side = round(size * cfg.spd_scales[int(torch.randint(len(cfg.spd_scales), (1,), generator=g))])
    fresh = torch.randn(x0.shape, generator=g)  # drawn every step: the stream stays aligned
    if kind == 1 and post_t_min:
        lo = float(post_t_min.get((size, side), 0.0))
        t = lo + (1 - lo) * t
    tb = t[:, None, None, None]
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
        return xc, tc, (xc - x0c) / tc[:, None, None, None]
    xp, tp = resize(xc, tc, (size, size), noise=fresh)
    return xp, tp, (xp - x0_hat) / tp[:, None, None, None]


def spd_post_times(cfg: TrainConfig, spectrum) -> dict:
    """``{(S, S r): t*}``: SPD's switch time (Eq. 10, ``cfg.spd_delta``) for every size and scale.

    ``spectrum(S) -> (A, beta)`` is the data's power law at ``S x S`` (the init
    model's :meth:`~specdiff.models.EmbeddedModel.spectrum`).
    """
    from ..plans import spd_transition_time

    out = {}
    for size in cfg.sizes:
        A, beta = spectrum(size)
        for r in cfg.spd_scales:
            out[(size, round(size * r))] = spd_transition_time(A, beta, r, size, cfg.spd_delta)
    return out


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    return min(cfg.ema_decay, (1 + step) / (10 + step))


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def _optim_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    sd = opt.state_dict()
    out = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            out[f"optim.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return out


def _load_optim(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    sd = opt.state_dict()
    state: dict = {}
    for name, v in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = v.clone()
    sd["state"] = state
    for g_new, g_old in zip(sd["param_groups"], groups, strict=True):
        g_new.update({k: v for k, v in g_old.items() if k != "params"})
    opt.load_state_dict(sd)


def save_train_state(path: Path, cfg: TrainConfig, net, ema, opt, step: int,
                     history: list) -> None:
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update(_optim_tensors(opt))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]]
    meta = {"format": "specdiff-train-v1", "step": str(step), "config": json.dumps(cfg.to_dict()),
            "history": json.dumps(history), "param_groups": json.dumps(groups)}
    atomic_save_safetensors(path, tensors, meta)


def read_train_state(path: Path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as e:
        raise ValueError(
            f"training checkpoint {path} is truncated or corrupt ({e}); delete it to start over"
        ) from None
    if md.get("format") != "specdiff-train-v1":
        raise ValueError(f"{path} is not a specdiff training checkpoint")
    return tensors, md


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    history: list  # [step, loss (mean over log_every steps), seconds]
    model_path: Path | None = None


def _init_weights(cfg: TrainConfig):
    """The ``init`` checkpoint's ``(weights, config, meta)``, its config checked against ``cfg``."""
    from ..models import checkpoint_path
    from ..models.checkpoint import read_checkpoint

    tensors, config, meta = read_checkpoint(checkpoint_path(cfg.init))
    if config != config_from_dict(cfg.model):
        raise ValueError(f"init checkpoint {cfg.init!r} has model config {config_to_dict(config)}, "
                         f"not {cfg.model}; leave the model config to the checkpoint")
    return tensors, config, meta


def _split(tensors, prefix):
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = True,
          stop_after: int | None = None, progress: bool = True, cpu: bool = False,
          command: str | None = None, photos: PhotoSet | None = None,
          spectrum_sizes=(64, 128)) -> TrainResult:
    """Train (or resume) and write ``out_dir/{train_state,model}.safetensors``, ``loss.png``.

    Args:
        cfg: the run; when resuming, the saved config must equal it (else ``ValueError``).
        resume: continue from ``out_dir/train_state.safetensors`` when present.
        stop_after: stop (with a checkpoint) after this many steps in *this*
            call, e.g. to test resuming; the run continues next call.
        cpu: force CPU even when accelerate sees GPUs.
        command: the command line recorded in the exported model's JSON.
        photos: training photos (default: ``load_photos(cfg.data, "train")``).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cfg = cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(cpu=cpu)
    torch.manual_seed(cfg.seed)  # model init only; batches use step generators
    net = build(cfg.model)
    ema = build(cfg.model)
    teacher, post_t_min = None, None
    if cfg.init:
        from ..models import EmbeddedModel

        init_state, init_config, init_meta = _init_weights(cfg)
        net.load_state_dict(init_state)
        if cfg.objective == "spd":
            teacher = build(init_config)
            teacher.load_state_dict(init_state)
            teacher.requires_grad_(False)
            # EmbeddedModel puts the teacher in eval mode and reads the data spectrum from meta
            post_t_min = spd_post_times(cfg, EmbeddedModel(teacher, init_config, init_meta).spectrum)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                            weight_decay=cfg.weight_decay)
    step, history = 0, []
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        tensors, md = read_train_state(state_path)
        saved = TrainConfig.from_dict(json.loads(md["config"]))
        if saved != cfg:
            diff = [k for k in cfg.to_dict() if cfg.to_dict()[k] != saved.to_dict()[k]]
            raise ValueError(
                f"{state_path} was written by a run with other settings ({', '.join(diff)}); "
                "use the same arguments to resume, or another --out folder"
            )
        net.load_state_dict(_split(tensors, "model."))
        ema.load_state_dict(_split(tensors, "ema."))
        _load_optim(opt, tensors, json.loads(md["param_groups"]))
        step = int(md["step"])
        history = json.loads(md["history"])
    net, opt = acc.prepare(net, opt)
    ema.to(acc.device)
    if teacher is not None:
        teacher.to(acc.device)
    if photos is None:
        photos = load_photos(cfg.data, "train")
    end = cfg.steps if stop_after is None else min(cfg.steps, step + int(stop_after))
    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not (progress and acc.is_main_process),
               dynamic_ncols=True)
    run_loss, run_n, t_start = 0.0, 0, time.perf_counter()
    elapsed0 = history[-1][2] if history else 0.0
    net.train()
    try:
        while step < end:
            if teacher is None:
                xt, t, v = make_batch(cfg, photos, step, acc.process_index)
            else:
                xt, t, v = make_spd_batch(cfg, photos, step, teacher, acc.process_index,
                                          post_t_min=post_t_min)
            xt, t, v = xt.to(acc.device), t.to(acc.device), v.to(acc.device)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            loss = torch.nn.functional.mse_loss(net(xt, t), v)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            if cfg.grad_clip:
                acc.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                d = ema_decay_at(cfg, step)
                for pe, pn in zip(ema.parameters(), acc.unwrap_model(net).parameters(), strict=True):
                    pe.lerp_(pn.detach(), 1 - d)
                for be, bn in zip(ema.buffers(), acc.unwrap_model(net).buffers(), strict=True):
                    be.copy_(bn)
            lv = float(acc.gather(loss.detach()[None]).mean())
            if not math.isfinite(lv):
                raise ValueError(f"training diverged at step {step} (loss {lv}); lower --lr")
            run_loss += lv
            run_n += 1
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                history.append([step, run_loss / run_n,
                                elapsed0 + time.perf_counter() - t_start])
                bar.set_postfix(loss=f"{run_loss / run_n:.4f}")
                run_loss, run_n = 0.0, 0
            if acc.is_main_process and (step % cfg.checkpoint_every == 0 or step == end):
                save_train_state(state_path, cfg, acc.unwrap_model(net), ema, opt, step, history)
                plot_loss(history, out / "loss.png")
    finally:
        bar.close()
    acc.wait_for_everyone()
    result = TrainResult(out, step, history)
    if acc.is_main_process and step >= cfg.steps:
        result.model_path = export_model(cfg, ema, out, history, photos=photos, command=command,
                                         spectrum_sizes=spectrum_sizes)
    return result


def export_model(cfg: TrainConfig, ema, out: Path, history, *, photos: PhotoSet,
                 command: str | None, spectrum_sizes=(64, 128)) -> Path:
    """Write the EMA weights as ``out/model.safetensors`` + ``model.json`` with the record."""
    sizes = [s for s in spectrum_sizes if max(s, cfg.window) <= photos.min_side] \
        or [min(cfg.sizes)]
    meta = {
        "prediction": "flow", "frame": "x_t = (1 - t) x0 + t eps, t = 1 noise",
        "data": cfg.data, "data_range": [-1, 1], "window": cfg.window,
        "spectrum": fit_spectra(photos, sizes, window=cfg.window),
        "train": cfg.to_dict(), "steps": history[-1][0] if history else 0,
        "final_loss": history[-1][1] if history else None,
        "train_seconds": history[-1][2] if history else None,
    }
    record = {"command": command or " ".join(shlex.quote(a) for a in sys.argv),
              "torch": torch.__version__, "platform": sys.platform}
    return save_model(out / MODEL_FILE, ema.state_dict(), config_from_dict(cfg.model), meta=meta,
                      record=record)


def plot_loss(history, path: Path) -> None:
    """Loss curve (log scale) as a PNG, written atomically."""
    if not history:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [h[0] for h in history]
    v = [h[1] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(s, v, lw=1)
    if len(v) > 8:
        k = max(2, len(v) // 20)
        sm = [sum(v[max(0, i - k): i + 1]) / len(v[max(0, i - k): i + 1]) for i in range(len(v))]
        ax.plot(s, sm, lw=2, label=f"running mean ({k})")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("velocity MSE")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def default_config(kind: str = "unet", **overrides) -> TrainConfig:
    """The shipped recipe for ``kind`` ("unet" or "dit"), with overrides."""
    from ..models.config import DiTConfig, UNetConfig

    model = config_to_dict(UNetConfig() if kind == "unet" else DiTConfig())
    base = TrainConfig(model=model, shift_size=64)
    if kind == "unet":
        # the shipped UNet's recipe: attention at the lowest level, more weight on the
        # 64^2 and 128^2 grids SPD samples on
        base = replace(base, model={**model, "mid_attention": 4},
                       size_weights=(0.1, 0.1, 0.3, 0.2, 0.3))
    if kind == "dit":
        base = replace(base, lr=3e-4)
    return replace(base, **overrides).validate()


def spd_finetune_config(init: str = "unet-base", **overrides) -> TrainConfig:
    """The SPD fine-tuning recipe for the model ``init`` (name or path), with overrides.

    Model config, data, crop window and time shift come from ``init``'s own
    training record; steps on 64^2 and 128^2 crops (their coarse grids 32^2 and
    64^2 are the SPD stages of 64^2 and 128^2 sampling), a 4x larger batch than
    pre-training (the teacher's targets are cheap next to the student's backward
    pass) and a 4x lower learning rate (the student starts at the teacher).
    """
    from ..models import checkpoint_path
    from ..models.checkpoint import read_checkpoint

    _, config, meta = read_checkpoint(checkpoint_path(init))
    base = TrainConfig(model=config_to_dict(config))
    rec = meta.get("train") or {}
    keep = {k: rec[k] for k in ("data", "window", "shift_size", "uniform_t") if k in rec}
    base = replace(base, **keep, init=str(init), objective="spd", steps=1200, sizes=(64, 128),
                   size_weights=(0.3, 0.7), pixels=4 * 128 * 128, lr=1e-4, warmup=50)
    return replace(base, **overrides).validate()


__all__ = ["TrainConfig", "train", "make_batch", "make_spd_batch", "default_config",
           "spd_finetune_config", "export_model", "plot_loss", "STATE_FILE", "MODEL_FILE"]
