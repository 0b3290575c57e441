"""Small any-resolution UNet predicting flow velocity (the embedded default model).

Frame: rectified flow ``x_t = (1 - t) x0 + t eps``; the network maps
``(x_t, t)`` to ``v = eps - x0`` (wrap with :class:`specdiff.denoisers.FlowDenoiser`).
Shapes: ``x`` is ``(B, C, H, W)`` with any ``H, W``; inputs are padded
(reflect) to a multiple of ``2**(levels - 1)`` and the output is cropped back,
so the model runs on every SPD stage grid. Convolutions, plus optional
self-attention at the lowest level (``mid_attention`` heads, for an image-wide
receptive field at every size): the cost of one call stays proportional to the
number of pixels, the property SPD's speed-up assumes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t`` in [0, 1] (scaled by 1000, as in DDPM/DiT): ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                            device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeMLP(nn.Module):
    def __init__(self, time_dim: int, out_dim: int):
        super().__init__()
        self.time_dim = time_dim
        self.net = nn.Sequential(nn.Linear(time_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t):
        return self.net(timestep_embedding(t, self.time_dim))


class ResBlock(nn.Module):
    """GN-SiLU-conv, time scale/shift (AdaGN), GN-SiLU-conv (zero-init), residual."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class MidAttention(nn.Module):
    """Pre-norm multi-head self-attention over all positions of a feature map, residual
    with a zero-initialised output projection (starts as the identity)."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (B, heads, tokens, head_dim)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                           v.transpose(-1, -2))
        return x + self.proj(o.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """``forward(x, t) -> v``: ``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` flow time in [0, 1]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        widths = [c.base * m for m in c.mults]
        emb_dim = 4 * c.base
        self.time = TimeMLP(c.time_dim, emb_dim)
        self.stem = nn.Conv2d(c.channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(c.blocks):
                blocks.append(ResBlock(ch, w, emb_dim, c.groups))
                ch = w
            self.down_blocks.append(blocks)
            if i < len(widths) - 1:
                self.downsamplers.append(self.make_downsampler(ch))
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, c.groups) for _ in range(2)])
        self.mid_attn = MidAttention(ch, c.mid_attention, c.groups) if c.mid_attention else None
        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            blocks = nn.ModuleList([ResBlock(ch + w, w, emb_dim, c.groups)])
            blocks.extend(ResBlock(w, w, emb_dim, c.groups) for _ in range(c.blocks))
            ch = w
            self.up_blocks.append(blocks)
            if i > 0:
                self.upsamplers.append(self.make_upsampler(ch, widths[i - 1]))
                ch = widths[i - 1]
        self.out_norm = nn.GroupNorm(c.groups, ch)
        self.out = nn.Conv2d(ch, c.channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    # -- resampling: the seams a variant replaces (models/wgunet.py: wavelet gating) --------

    def make_downsampler(self, ch: int) -> nn.Module:
        """Halve the grid, ``ch`` channels in and out: a stride-2 3x3 convolution."""
        return nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def make_upsampler(self, cin: int, cout: int) -> nn.Module:
        """The convolution of :meth:`upsample` (``cin`` -> ``cout`` channels)."""
        return nn.Conv2d(cin, cout, 3, padding=1)

    def upsample(self, j: int, h: torch.Tensor) -> torch.Tensor:
        """Double the grid with upsampler ``j``: nearest-neighbour, then its convolution."""
        return self.upsamplers[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, t)[0]

    def forward_features(self, x: torch.Tensor, t: torch.Tensor):
        """``(v, features)``: the output and the decoder's feature map at every level.

        ``features[k]`` is the last decoder block's output at downsampling factor ``2**k``
        (``(B, base * mults[k], H_pad / 2**k, W_pad / 2**k)`` on the padded grid, finest
        first): what feature distillation aligns (``training/objectives/slim.py``).
        """
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise ValueError(
                f"UNet expects (B, {self.config.channels}, H, W), got {tuple(x.shape)}"
            )
        h0, w0 = x.shape[-2:]
        m = self.config.multiple
        ph, pw = (-h0) % m, (-w0) % m
        if ph or pw:
            # reflect keeps image statistics at the border; tiny grids fall back to replicate
            mode = "reflect" if ph < h0 and pw < w0 else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        t = t.reshape(-1).to(x.dtype).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        emb = self.time(t).to(x.dtype)
        h = self.stem(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
        h = self.mid[0](h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid[1](h, emb)
        features = []
        for j, blocks in enumerate(self.up_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
            features.append(h)
            if j < len(self.upsamplers):
                h = self.upsample(j, h)
        out = self.out(F.silu(self.out_norm(h)))
        return out[..., :h0, :w0], features[::-1]
