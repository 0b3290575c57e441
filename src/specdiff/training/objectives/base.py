"""The plug-in contract between the training engine and an objective.

An objective is a class registered under the name ``TrainConfig.objective``
(:func:`specdiff.training.objectives.register`). The engine builds one per run
and asks it:

- :meth:`Objective.models`: the networks of the run by name, each either
  :class:`Trained` (its own optimiser, learning rate, update ratio, EMA and
  checkpoint entries) or :class:`Frozen` (eval mode, no gradients, no optimiser,
  nothing in the checkpoint: rebuilt from its source on resume, e.g. SPD's teacher);
- :meth:`Objective.batch`: the batch for one update, drawn on the CPU from the
  step's generator (never the global RNG: resuming needs it);
- :meth:`Objective.loss`: named scalar loss terms for that update; the engine
  back-propagates their sum into the model being updated, and logs and plots
  each term.

Each engine step runs, for every trained model in the order ``models()`` lists
them, ``updates`` optimiser updates (e.g. 5 critic updates, then 1 generator
update, as DMD/SwD-style distillation needs); the learning-rate schedule and
the EMA warm-up follow the engine step.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from pathlib import Path

    from ..config import TrainConfig
    from ..data import PhotoSet

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Trained:
    """A model the objective trains.

    Only its parameters with ``requires_grad`` are optimised, averaged and
    checkpointed (with its buffers): a peft LoRA or an added module on a frozen
    base trains, and saves, only that part; the frozen base must be rebuilt
    identically by :meth:`Objective.models` (e.g. from ``cfg.init``).

    Args:
        module: the network, freshly built (the engine seeds the global RNG with
            ``cfg.seed`` before :meth:`Objective.models`).
        lr: peak learning rate (``None``: ``cfg.lr``); every model follows the
            run's warm-up + cosine schedule scaled to its own peak.
        updates: optimiser updates per engine step (the update ratio).
        betas, weight_decay: AdamW's (``None``: ``cfg.weight_decay``).
        ema: keep an EMA copy (``cfg.ema_decay``); a critic does not need one.
    """

    module: torch.nn.Module
    lr: float | None = None
    updates: int = 1
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float | None = None
    ema: bool = True


@dataclass(frozen=True)
class Frozen:
    """A model the objective uses but never trains (a teacher, a feature network)."""

    module: torch.nn.Module


@dataclass(frozen=True)
class Update:
    """Which update of an engine step a batch or loss is for.

    ``model`` is the name of the trained model being updated and ``index`` its
    update number in this step (``0 .. updates - 1``).
    """

    model: str
    index: int = 0


class Objective:
    """Base class of the training objectives: subclass, set the hooks, register.

    Attributes:
        name: the registered name (set by :func:`~specdiff.training.objectives.register`).
        Options: a frozen dataclass of the settings this objective reads from
            ``TrainConfig.options`` (``None``: it takes none).
        exports: the trained model whose EMA weights :meth:`export` writes as
            ``model.safetensors`` (a network built from ``cfg.model``); ``None``:
            override :meth:`export`.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type | None] = None
    exports: ClassVar[str | None] = "net"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.options = self.parse_options(cfg)

    # -- config -------------------------------------------------------------------------

    @classmethod
    def parse_options(cls, cfg: TrainConfig):
        """``cfg.options`` as an ``Options`` instance (``None`` when the objective takes none)."""
        if cls.Options is None:
            if cfg.options:
                raise ValueError(f"objective {cls.name!r} takes no options, got "
                                 f"{sorted(cfg.options)}; remove them")
            return None
        known = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(cfg.options) - known)
        if unknown:
            raise ValueError(f"objective {cls.name!r} has no option(s) {unknown}; its options "
                             f"are {sorted(known)}")
        return cls.Options(**cfg.options)

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Raise ``ValueError`` for settings of ``cfg`` this objective cannot train with.

        Called by :meth:`TrainConfig.validate`; must not read files (a config is
        validated long before its run starts).
        """
        cls.parse_options(cfg)

    # -- the hooks the engine calls ---------------------------------------------------

    def models(self) -> dict[str, Trained | Frozen]:
        """The run's networks by name (identifiers), trained ones in update order."""
        raise NotImplementedError(f"objective {self.name!r} must define models()")

    def batch(self, nets: dict[str, torch.nn.Module], photos: PhotoSet, step: int,
              process: int, update: Update) -> Any:
        """The CPU tensors (a tensor, or a tuple/list/dict of them) for one update.

        ``nets`` maps every name of :meth:`models` to the module to call (trained
        ones as the engine prepared them, on the engine's device). Randomness
        must come from a generator that is a function of ``(cfg.seed, step,
        process, update)`` (see :func:`specdiff.training.batches.step_generator`).
        """
        raise NotImplementedError(f"objective {self.name!r} must define batch()")

    def loss(self, nets: dict[str, torch.nn.Module], batch: Any,
             update: Update) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for ``update`` (the batch moved to the device).

        Term names are unique across the objective's models (they are the
        history's and the loss plot's keys); the update back-propagates their sum.
        """
        raise NotImplementedError(f"objective {self.name!r} must define loss()")

    def export(self, weights: dict[str, torch.nn.Module], out: Path, history: list, *,
               photos: PhotoSet, command: str | None, spectrum_sizes=(64, 128)) -> Path | None:
        """Write the finished run's model; ``weights`` maps each trained model's name to its
        EMA copy (or the model itself where ``ema=False``). Returns the written path."""
        if self.exports is None:
            return None
        from ..export import export_model

        return export_model(self.cfg, weights[self.exports], out, history, photos=photos,
                            command=command, spectrum_sizes=spectrum_sizes)


def check_models(objective: Objective, specs) -> dict[str, Trained | Frozen]:
    """``specs`` from :meth:`Objective.models`, checked (``ValueError`` saying what to fix)."""
    who = f"objective {objective.name!r}"
    if not isinstance(specs, dict) or not specs:
        raise ValueError(f"{who}: models() must return a non-empty dict name -> Trained/Frozen")
    seen: set[int] = set()
    for name, spec in specs.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{who}: model name {name!r} must be an identifier (it prefixes "
                             "checkpoint entries)")
        if not isinstance(spec, Trained | Frozen) or not isinstance(spec.module, torch.nn.Module):
            raise ValueError(f"{who}: model {name!r} must be Trained(module) or Frozen(module)")
        if id(spec.module) in seen:
            raise ValueError(f"{who}: model {name!r} is listed twice; list each module once")
        seen.add(id(spec.module))
        if isinstance(spec, Trained):
            if spec.updates < 1 or (spec.lr is not None and not spec.lr > 0):
                raise ValueError(f"{who}: model {name!r} needs updates >= 1 and lr > 0")
            if not any(p.requires_grad for p in spec.module.parameters()):
                raise ValueError(f"{who}: trained model {name!r} has no parameter with "
                                 "requires_grad; mark it Frozen instead")
    trained = [n for n, s in specs.items() if isinstance(s, Trained)]
    if not trained:
        raise ValueError(f"{who}: models() lists no Trained model")
    if objective.exports is not None and objective.exports not in trained:
        raise ValueError(f"{who} exports {objective.exports!r}, which is not one of its trained "
                         f"models {trained}")
    return specs


def init_weights(cfg: TrainConfig):
    """The ``init`` checkpoint's ``(weights, config, meta)``, its config checked against ``cfg``."""
    from ...models import checkpoint_path
    from ...models.checkpoint import read_checkpoint
    from ...models.config import config_from_dict, config_to_dict

    tensors, config, meta = read_checkpoint(checkpoint_path(cfg.init))
    if config != config_from_dict(cfg.model):
        raise ValueError(f"init checkpoint {cfg.init!r} has model config {config_to_dict(config)}, "
                         f"not {cfg.model}; leave the model config to the checkpoint")
    return tensors, config, meta


__all__ = ["Objective", "Trained", "Frozen", "Update", "check_models", "init_weights"]
