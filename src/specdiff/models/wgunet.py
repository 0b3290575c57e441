"""The wavelet-gated UNet of slim spectral diffusion (arXiv 2211.17106; methods.md section 3).

:class:`WGUNet` is the embedded :class:`~specdiff.models.unet.UNet` with its
down- and up-sampling replaced by :class:`~specdiff.models.wavelet.WaveletGateDown`
and :class:`~specdiff.models.wavelet.WaveletGateUp`; blocks, time embedding,
padding (any grid size) and the velocity frame are the UNet's. Built from a
:class:`~specdiff.models.config.WGUNetConfig` (``kind="wgunet"``).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import WGUNetConfig
from .unet import UNet
from .wavelet import WaveletGateDown, WaveletGateUp


class WGUNet(UNet):
    """``forward(x, t) -> v`` like :class:`UNet`, resampling through gated Haar sub-bands."""

    def __init__(self, config: WGUNetConfig):
        if not isinstance(config, WGUNetConfig):
            raise ValueError(f"WGUNet needs a WGUNetConfig, got {type(config).__name__}")
        super().__init__(config)

    def make_downsampler(self, ch: int) -> nn.Module:
        return WaveletGateDown(ch, self.config.gate_ratio)

    def make_upsampler(self, cin: int, cout: int) -> nn.Module:
        return WaveletGateUp(cin, cout, self.config.gate_ratio)

    def upsample(self, j: int, h: torch.Tensor) -> torch.Tensor:
        return self.upsamplers[j](h)


__all__ = ["WGUNet"]
