"""Training the embedded models: data (photos split by photo, multi-scale crops) and the loop."""

from .data import PhotoSet, eval_crops, fit_spectra, fit_spectrum, load_photos
from .loop import TrainConfig, default_config, make_batch, spd_finetune_config, train

__all__ = ["PhotoSet", "load_photos", "eval_crops", "fit_spectrum", "fit_spectra",
           "TrainConfig", "default_config", "spd_finetune_config", "make_batch", "train"]
