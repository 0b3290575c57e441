"""Export a finished run's network as a loadable model checkpoint, with its record."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..models import save_model
from ..models.config import config_from_dict
from .data import PhotoSet, fit_spectra

if TYPE_CHECKING:
    from .config import TrainConfig

MODEL_FILE = "model.safetensors"


def export_model(cfg: TrainConfig, ema: torch.nn.Module, out: Path, history, *, photos: PhotoSet,
                 command: str | None, spectrum_sizes=(64, 128)) -> Path:
    """Write ``ema``'s weights (a network built from ``cfg.model``) as ``out/model.safetensors``
    + ``model.json`` with the record: data spectrum fitted on the training photos at
    ``spectrum_sizes``, the config, the last logged loss and the command line."""
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
    return save_model(Path(out) / MODEL_FILE, ema.state_dict(), config_from_dict(cfg.model),
                      meta=meta, record=record)


__all__ = ["export_model", "MODEL_FILE"]
