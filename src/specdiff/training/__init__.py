"""Training: data (photos split by photo, multi-scale crops), one engine, objectives as plug-ins.

``train(cfg, out)`` runs the objective named ``cfg.objective`` (see
:mod:`specdiff.training.objectives`); :mod:`specdiff.training.partial` saves and
loads partly trained models (a LoRA, an added module) against a base recorded
by name and SHA-256.
"""

from .config import TrainConfig, default_config, spd_finetune_config
from .data import PhotoSet, eval_crops, fit_spectra, fit_spectrum, load_photos
from .engine import read_train_state, train
from .objectives import Frozen, Objective, Trained, Update, objective_names, register
from .objectives.flow import make_batch
from .objectives.spd import make_spd_batch

__all__ = ["PhotoSet", "load_photos", "eval_crops", "fit_spectrum", "fit_spectra",
           "TrainConfig", "default_config", "spd_finetune_config", "make_batch", "make_spd_batch",
           "train", "read_train_state", "Objective", "Trained", "Frozen", "Update", "register",
           "objective_names"]
