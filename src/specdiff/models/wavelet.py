"""Wavelet-gated resampling of feature maps (Spectral Diffusion, arXiv 2211.17106, Fig. 5).

A small diffusion model is biased against high frequencies; the slim model of
"Diffusion Probabilistic Model Made Slim" replaces the UNet's down- and
up-sampling with an orthonormal one-level 2-D Haar transform whose sub-bands
are re-weighted by gates computed from the whole feature map, so every reverse
step can decide how much of each frequency band to pass on:

- :class:`WaveletGateDown` (WG-Down): ``X -> LL, LH, HL, HH`` (each ``(B, C, H/2, W/2)``),
  ``g = sigmoid(FFN(avgpool(X)))`` with one gate per channel and band, output
  ``sum_i g_i * X_i`` (paper: ``X' = sum_i g_i (.) X_i``);
- :class:`WaveletGateUp` (WG-Up): a 1x1 convolution to ``4 C_out`` channels, read as the
  four sub-bands, gated the same way, then the inverse transform: ``(B, C_out, 2H, 2W)``.

Sum or concatenation? The paper sums the gated bands, and so do we: the output keeps the
input's channel count (a drop-in for the stride-2 convolution) and costs ``O(C)`` per
output pixel instead of the convolution's ``9 C^2``; the next residual block's
convolution mixes the result. Concatenating (``4C`` channels) would keep every band
separate but quadruple the next block's input width, the opposite of slim.

Both need even sides: the Haar transform pairs pixels. The slim UNet pads its input to
a multiple of ``2**(levels - 1)`` (:attr:`~specdiff.models.config.UNetConfig.multiple`),
so every feature map it gates has even sides; called directly on an odd side, they raise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_S = 1.0 / 2.0  # orthonormal 2-D Haar: (1/sqrt 2)^2 per 2x2 block


def _check_even(x: torch.Tensor, who: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{who} expects a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"{who} needs even feature-map sides (the Haar transform pairs pixels), "
                         f"got {h}x{w}; pad the input to a multiple of 2 per wavelet level (the "
                         "slim UNet pads to a multiple of 2**(levels - 1) itself)")


def haar_dwt2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal one-level 2-D Haar DWT: ``(B, C, H, W)`` -> ``(LL, LH, HL, HH)``, each
    ``(B, C, H/2, W/2)``.

    For the 2x2 block ``[[a, b], [c, d]]``: ``LL = (a + b + c + d) / 2``,
    ``LH = (a + b - c - d) / 2`` (vertical detail: rows differ), ``HL = (a - b + c - d) / 2``
    (horizontal detail), ``HH = (a - b - c + d) / 2``. Orthonormal: energy is preserved and
    :func:`haar_idwt2` inverts it exactly. ``LL`` equals ``spectral.resize(basis="haar")``'s
    low band.
    """
    _check_even(x, "haar_dwt2")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return ((a + b + c + d) * _S, (a + b - c - d) * _S, (a - b + c - d) * _S,
            (a - b - c + d) * _S)


def haar_idwt2(ll: torch.Tensor, lh: torch.Tensor, hl: torch.Tensor,
               hh: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`haar_dwt2`: four ``(B, C, h, w)`` bands -> ``(B, C, 2h, 2w)``."""
    a = (ll + lh + hl + hh) * _S
    b = (ll + lh - hl - hh) * _S
    c = (ll - lh + hl - hh) * _S
    d = (ll - lh - hl + hh) * _S
    top = torch.stack((a, b), dim=-1).flatten(-2)  # (B, C, h, 2w): a b a b ...
    bottom = torch.stack((c, d), dim=-1).flatten(-2)
    return torch.stack((top, bottom), dim=-2).flatten(-3, -2)


class BandGates(nn.Module):
    """``g = sigmoid(FFN(avgpool(X)))``: one gate in (0, 1) per channel and sub-band.

    ``X`` is ``(B, cin, H, W)``; returns ``(B, 4, cout, 1, 1)``. The FFN is
    ``Linear(cin, hidden) - SiLU - Linear(hidden, 4 cout)``; its last layer starts at zero,
    so every gate starts at 0.5 (all bands pass alike, as an untrained Haar resampler would).
    """

    def __init__(self, cin: int, cout: int, hidden: int):
        super().__init__()
        self.cout = cout
        self.ffn = nn.Sequential(nn.Linear(cin, hidden), nn.SiLU(), nn.Linear(hidden, 4 * cout))
        nn.init.zeros_(self.ffn[2].weight)
        nn.init.zeros_(self.ffn[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.ffn(x.mean(dim=(-2, -1))))
        return g.reshape(x.shape[0], 4, self.cout, 1, 1)


def _hidden(ch: int, ratio: float) -> int:
    return max(4, math.ceil(ch * ratio))


class WaveletGateDown(nn.Module):
    """WG-Down: ``(B, C, H, W)`` -> ``(B, C, H/2, W/2)``, the gated sum of the Haar bands.

    The gates see the whole input map (``avgpool(X)``), so they can pass more
    detail where the image has it. With every gate at 1 the output is
    ``LL + LH + HL + HH`` = ``2 a``: the top-left pixel of each block, times 2.
    """

    def __init__(self, ch: int, gate_ratio: float = 0.25):
        super().__init__()
        self.gates = BandGates(ch, ch, _hidden(ch, gate_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_even(x, "WaveletGateDown")
        bands = torch.stack(haar_dwt2(x), dim=1)  # (B, 4, C, H/2, W/2)
        return (self.gates(x) * bands).sum(dim=1)


class WaveletGateUp(nn.Module):
    """WG-Up: ``(B, cin, H, W)`` -> ``(B, cout, 2H, 2W)``.

    A 1x1 convolution makes ``4 cout`` channels, split into the four sub-bands
    ``LL, LH, HL, HH`` (in that order); each is gated per channel (gates from
    ``avgpool`` of the split map) and the inverse Haar transform assembles the
    doubled grid. It costs ``cin cout`` multiply-adds per output pixel, where the
    nearest-neighbour upsampling and 3x3 convolution it replaces cost ``9 cin cout``.
    """

    def __init__(self, cin: int, cout: int, gate_ratio: float = 0.25):
        super().__init__()
        self.cout = cout
        self.proj = nn.Conv2d(cin, 4 * cout, 1)
        self.gates = BandGates(4 * cout, cout, _hidden(4 * cout, gate_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"WaveletGateUp expects (B, C, H, W), got shape {tuple(x.shape)}")
        y = self.proj(x)
        bands = y.reshape(y.shape[0], 4, self.cout, *y.shape[-2:]) * self.gates(y)
        return haar_idwt2(*bands.unbind(1))


__all__ = ["haar_dwt2", "haar_idwt2", "BandGates", "WaveletGateDown", "WaveletGateUp"]
