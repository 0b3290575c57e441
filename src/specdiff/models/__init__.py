"""Embedded pixel-space flow models: build, save and load them as ``Denoiser``\\ s.

``specdiff.models.load("unet")`` (or ``"dit"``, or a path to a ``.safetensors``
file or a ``specdiff train`` output folder) returns an :class:`EmbeddedModel`:
a :class:`specdiff.denoisers.FlowDenoiser` (``(x, t) -> x0_hat`` in the frame
``x_t = (1 - t) x0 + t eps``) that also carries the network, its config, the
data spectrum measured at training time and the model's default time grid.
Nothing downloads: the shipped checkpoints live in ``specdiff/checkpoints``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..denoisers import FlowDenoiser
from ..plans import flow_times
from ..spectral import as_shape, as_size
from .checkpoint import is_temp_file, load_state_checked, read_checkpoint, save_model
from .config import DiTConfig, UNetConfig, WGUNetConfig, config_from_dict, config_to_dict
from .dit import DiT
from .unet import UNet

__all__ = [
    "EmbeddedModel", "UNetConfig", "WGUNetConfig", "DiTConfig", "UNet", "DiT", "build", "load", "save_model",
    "checkpoint_path", "SHIPPED", "default_times", "config_from_dict", "config_to_dict",
]

#: Names that ``load`` resolves to shipped checkpoints.
SHIPPED = ("unet", "unet-base", "dit", "unet-slim")
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"

#: The default time grid is the SD3 shift ``rho t / (1 + (rho - 1) t)`` with
#: ``rho = sqrt(H W) / BASE_SIDE`` (at least 1): the resolution shift that keeps the
#: low-frequency SNR of an ``H x W`` image at time ``t`` equal to that of a
#: ``BASE_SIDE^2`` one (SD3 section 5.3.2); 2.0 at 128^2, 1.0 at 64^2.
BASE_SIDE = 64


def default_shift(grid) -> float:
    h, w = grid[-2:]
    return max(1.0, math.sqrt(h * w) / BASE_SIDE)


def default_times(num_steps: int, grid, shift: float | None = None) -> torch.Tensor:
    """The embedded models' time grid for ``grid`` (float64, descending to 0)."""
    return flow_times(num_steps, default_shift(grid) if shift is None else float(shift))


def build(config) -> torch.nn.Module:
    """A freshly initialised network for a config (object or JSON dict)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    if isinstance(config, WGUNetConfig):  # before UNetConfig: it is a subclass
        from .wgunet import WGUNet

        return WGUNet(config)
    if isinstance(config, UNetConfig):
        return UNet(config)
    if isinstance(config, DiTConfig):
        return DiT(config)
    raise ValueError(f"config must be a UNetConfig, WGUNetConfig or DiTConfig, got "
                     f"{type(config).__name__}")


class EmbeddedModel(FlowDenoiser):
    """A velocity-prediction network wrapped as a ``Denoiser``, plus what benchmarks need.

    Attributes:
        net: the ``nn.Module`` (eval mode); ``net(x, t) -> v``.
        config: its frozen config; ``channels`` and ``multiple`` (grid sizes are
            padded internally to a multiple of it; any size works).
        meta: training record: data source, the data power spectrum fitted on
            training crops per size (``meta["spectrum"]["128"] = [A, beta]``), ...
        name: where it was loaded from.

    Calls run under ``torch.no_grad``; train ``net`` directly.
    """

    def __init__(self, net: torch.nn.Module, config, meta: dict | None = None, name: str = ""):
        super().__init__(net, prediction="flow")
        self.net = net.eval()
        self.config = config
        self.meta = dict(meta or {})
        self.name = name

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def multiple(self) -> int:
        return self.config.multiple

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> EmbeddedModel:
        self.net.to(device)
        return self

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if cond:
            raise ValueError(f"the embedded models are unconditional; got cond keys {sorted(cond)}")
        # FlowDenoiser.__call__ checks t (type, shape, [0, 1]) before the network runs
        with torch.no_grad():
            return super().__call__(x, t)

    def spectrum(self, size: int) -> tuple[float, float]:
        """``(A, beta)`` of the training data at ``size x size`` (fitted at train time).

        Sizes not recorded use the nearest recorded size with ``A`` scaled by
        ``(size / recorded)**2`` (the orthonormal-DCT convention of
        :class:`specdiff.testbeds.GaussianField`: ``N' / N`` times the power).
        """
        size = as_size(size, "size")
        if size < 1:
            # log(size) below would divide by zero or leave the real line
            raise ValueError(f"size must be a positive image side in pixels, e.g. 128; got {size}")
        spec = self.meta.get("spectrum") or {}
        if not spec:
            raise ValueError(
                f"model {self.name or ''} has no recorded data spectrum; fit one with "
                "specdiff.training.data.fit_spectrum(photos, size)"
            )
        sizes = sorted(int(k) for k in spec)
        near = min(sizes, key=lambda s: abs(math.log(s / size)))
        A, beta = spec[str(near)]
        return float(A) * (size / near) ** 2, float(beta)

    def times(self, num_steps: int, grid, shift: float | None = None) -> torch.Tensor:
        g = as_shape(grid, "grid")
        if len(g) < 2 or min(g) < 1:
            raise ValueError(f"grid must be the image's (..., H, W) with positive sizes, got {grid}")
        return default_times(num_steps, grid, shift)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        return f"EmbeddedModel({self.config.kind}, {n / 1e6:.2f}M params, from {self.name!r})"


def _folder_checkpoint(p: Path) -> Path:
    """A folder's model file: ``model.safetensors``, else another ``.safetensors`` file, else
    (a ``specdiff train`` run not finished yet) ``train_state.safetensors``, whose EMA weights
    are the model. Hidden files and the temporary files of interrupted writes never count."""
    cands = [p / "model.safetensors"] + sorted(p.glob("*.safetensors"))
    cands = [c for c in cands if c.is_file() and not c.name.startswith((".", "train_state"))]
    if cands:
        return cands[0]
    state = p / "train_state.safetensors"
    if state.is_file():
        return state
    raise FileNotFoundError(f"no model .safetensors file in folder {p}; give a folder that holds "
                            "model.safetensors or train_state.safetensors (a `specdiff train` "
                            "--out folder)")


def checkpoint_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a shipped name, a ``.safetensors`` file or a training folder to a file."""
    s = str(name_or_path)
    if s in SHIPPED:
        p = CHECKPOINT_DIR / f"{s}.safetensors"
        if not p.is_file():
            raise FileNotFoundError(
                f"the shipped checkpoint {p} is missing from this install; reinstall specdiff "
                f"or train one with `specdiff train --model {s}`"
            )
        return p
    p = Path(s).expanduser()
    if p.is_dir():
        return _folder_checkpoint(p)
    if not p.exists():
        raise FileNotFoundError(
            f"no model named {s!r}: use one of {list(SHIPPED)} or a path to a .safetensors "
            "checkpoint or a `specdiff train` output folder"
        )
    if is_temp_file(p):
        raise ValueError(f"{p} is the temporary file of an interrupted checkpoint write, not a "
                         "checkpoint; delete it and load the file without the '.tmp' name")
    return p


def load(name_or_path: str | os.PathLike = "unet", *, device: str | torch.device = "cpu",
         verify: bool = True) -> EmbeddedModel:
    """Load a shipped model by name (``"unet"``, ``"dit"``) or a checkpoint path as a Denoiser.

    A ``specdiff train`` folder loads its ``model.safetensors``, or mid-training (no
    model yet) the EMA weights of its ``train_state.safetensors``. Every checkpoint's
    recorded checksums are verified (``verify=False`` skips that); one with none loads
    with a warning.

    Raises ``FileNotFoundError`` when nothing is there and ``ValueError`` with
    the reason (truncated, corrupt, checksum, config/tensor mismatch) otherwise.
    """
    path = checkpoint_path(name_or_path)
    tensors, config, meta = read_checkpoint(path, verify=verify)
    net = build(config)
    load_state_checked(net, tensors, path)
    return EmbeddedModel(net.to(device), config, meta, name=str(name_or_path))
