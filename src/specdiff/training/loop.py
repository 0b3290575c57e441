"""The names that lived here before the training engine was split up, re-exported.

The CLI (``specdiff train``) and older code import from here; new code may use
the homes directly: :mod:`.config` (config and recipes), :mod:`.engine` (the
loop, checkpoints, loss plot), :mod:`.export`, :mod:`.batches` (per-step
randomness) and :mod:`.objectives` (``flow``, ``spd``, ... as plug-ins).
"""

from __future__ import annotations

from .batches import draw_flow_step, resolution_shift_t, sample_t, step_generator
from .config import TrainConfig, default_config, spd_finetune_config
from .engine import (
    STATE_FILE,
    TrainResult,
    ema_decay_at,
    lr_at,
    plot_loss,
    read_train_state,
    save_train_state,
    train,
)
from .export import MODEL_FILE, export_model
from .objectives.flow import make_batch
from .objectives.spd import make_spd_batch, spd_post_times

__all__ = ["TrainConfig", "train", "make_batch", "make_spd_batch", "default_config",
           "spd_finetune_config", "export_model", "plot_loss", "STATE_FILE", "MODEL_FILE",
           "TrainResult", "read_train_state", "save_train_state", "lr_at", "ema_decay_at",
           "step_generator", "sample_t", "resolution_shift_t", "draw_flow_step",
           "spd_post_times"]
