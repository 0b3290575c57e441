"""The training run's config (saved in every checkpoint) and the shipped recipes.

``TrainConfig.objective`` names a registered objective (see
:mod:`specdiff.training.objectives`); the objective checks the settings it
uses (e.g. ``spd_*`` for ``"spd"``) and reads its own extra settings from
``options``, so a new objective needs no new field here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..models.config import config_from_dict, config_to_dict


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
    # a registered objective: "flow" (data targets), "spd" (SPD self-distillation), ...
    objective: str = "flow"
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
    # Settings of objectives that have more than the fields above (a critic's lr, an update
    # ratio, ...), as JSON; the objective parses and checks them. Empty for flow and spd.
    options: dict = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        from .objectives import objective_class

        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if len(self.sizes) != len(self.size_weights) or not self.sizes:
            raise ValueError("sizes and size_weights need the same (non-zero) length")
        if any(s < 8 for s in self.sizes) or any(w < 0 for w in self.size_weights):
            raise ValueError("crop sizes must be >= 8 and weights >= 0")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"crop sizes (--sizes) must be distinct, got {self.sizes}; weigh a "
                             "size with --size-weights instead")
        if self.window < 0:
            raise ValueError(f"window must be >= 0 (0: 1:1 crops allowed), got {self.window}")
        if not sum(self.size_weights) > 0:
            raise ValueError("size_weights must not all be zero")
        if self.shift_size < 0:
            raise ValueError(f"shift_size must be >= 0 (0: no resolution shift), got {self.shift_size}")
        if not (self.lr > 0 and 0 <= self.ema_decay < 1 and 0 <= self.uniform_t <= 1):
            raise ValueError("need lr > 0, 0 <= ema_decay < 1 and 0 <= uniform_t <= 1")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict (JSON object), got {type(self.options).__name__}")
        objective_class(self.objective).check(self)
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if self.pixels < max(self.sizes) ** 2:
            # batch_for would round a smaller budget up to one crop without saying so
            raise ValueError(f"pixels (--pixels, the pixel budget per step) must hold at least "
                             f"one crop of the largest size {max(self.sizes)}: >= "
                             f"{max(self.sizes) ** 2}, got {self.pixels}")
        config_from_dict(self.model)
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["options"]:
            # runs without options record exactly what they recorded before the field existed
            # (the shipped checkpoints' JSON and every train state stay byte-identical)
            del d["options"]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw).validate()

    def batch_for(self, size: int) -> int:
        return max(1, self.pixels // (size * size))


def default_config(kind: str = "unet", **overrides) -> TrainConfig:
    """The shipped recipe for ``kind`` ("unet" or "dit"), with overrides."""
    from ..models.config import DiTConfig, UNetConfig

    if kind not in ("unet", "dit"):
        raise ValueError(f"model kind must be 'unet' or 'dit', got {kind!r}")
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


def inherited_data_settings(meta: dict) -> dict:
    """The data settings a model trained from another one keeps from its training record
    (``meta["train"]``): data source, crop window, time shift and uniform-t share."""
    rec = meta.get("train") or {}
    return {k: rec[k] for k in ("data", "window", "shift_size", "uniform_t") if k in rec}


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
    base = replace(base, **inherited_data_settings(meta), init=str(init), objective="spd",
                   steps=1200, sizes=(64, 128),
                   size_weights=(0.3, 0.7), pixels=4 * 128 * 128, lr=1e-4, warmup=50)
    return replace(base, **overrides).validate()


__all__ = ["TrainConfig", "default_config", "spd_finetune_config"]


def _check_init_kind(init, arch: dict, model: str | None) -> None:
    if model is not None and model != arch["kind"]:
        raise ValueError(f"init checkpoint {init!r} is a {arch['kind']} model, not {model}: pass "
                         f"--model {arch['kind']} or leave --model out (the architecture is init's)")


def recipe_config(objective: str = "flow", *, model: str | None = None,
                  model_config: dict | None = None,
                  init: str | None = None, data: str | None = None, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` that ``specdiff train`` runs, from plain values (validated).

    ``objective="flow"``: :func:`default_config` for ``model`` with ``model_config``
    merged into its architecture, or ``init``'s architecture when fine-tuning from a
    checkpoint. ``objective="spd"``: :func:`spd_finetune_config` of ``init`` (default
    ``"unet-base"``); the architecture is ``init``'s, so ``model_config`` is refused.
    With ``init``, ``model`` (default: ``init``'s kind) must name ``init``'s architecture:
    a mismatch is a ``ValueError`` rather than a silently ignored choice.
    ``overrides`` are TrainConfig fields (``None`` values are ignored); giving ``sizes``
    without ``size_weights`` weighs the sizes equally. ``data`` defaults to the
    recipe's own (the shipped photos).
    """
    from ..models import checkpoint_path
    from ..models.checkpoint import read_checkpoint

    over = {k: v for k, v in overrides.items() if v is not None}
    spd_only = [k for k in ("spd_scales", "spd_mix", "spd_delta") if over.get(k)]
    if spd_only and objective != "spd":
        raise ValueError(f"{', '.join(spd_only)} (--spd-*) need objective spd (--objective spd)")
    if over.get("options") and objective != "slim":
        raise ValueError(f"{', '.join(sorted(over['options']))} (--teacher, --lambda-*, "
                         "--freq-alpha) need objective slim (--objective slim)")
    if objective == "slim":
        from .objectives.slim import slim_config

        opts = over.pop("options", {}) or {}
        if init and over.get("init") is None:
            over["init"] = str(init)
        if over.get("sizes") is not None and over.get("size_weights") is None:
            over["size_weights"] = tuple(1.0 for _ in over["sizes"])
        if data is not None and data != "skimage":
            over["data"] = str(data)
        return slim_config(opts.pop("teacher", "unet"), model=model, model_config=model_config,
                           options=opts, **over)
    if objective == "spd":
        if model_config:
            raise ValueError("model_config (--model-config) does not apply to objective spd: the "
                             "architecture is init's")
        cfg = spd_finetune_config(init or "unet-base")
        arch = cfg.model
        _check_init_kind(init or "unet-base", arch, model)
    else:
        if init:
            if model_config:
                raise ValueError("model_config (--model-config) does not apply with init "
                                 "(--init): the architecture is init's")
            arch = config_to_dict(read_checkpoint(checkpoint_path(init))[1])
            _check_init_kind(init, arch, model)
            cfg = replace(default_config(arch["kind"]), init=str(init))
        else:
            cfg = default_config(model or "unet")
            arch = dict(cfg.model)
            arch.update(model_config or {})
            config_from_dict(arch)
    if over.get("sizes") is not None and over.get("size_weights") is None:
        over["size_weights"] = tuple(1.0 for _ in over["sizes"])
    if data is not None and not (objective == "spd" and data == "skimage"):
        over["data"] = str(data)
    return replace(cfg, model=arch, objective=objective, **over).validate()
