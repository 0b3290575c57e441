"""Small pixel-space DiT with 2-D rotary positions (velocity prediction, any resolution).

Frame: rectified flow ``x_t = (1 - t) x0 + t eps``; ``forward(x, t) -> v = eps - x0``.
Shapes: ``x`` ``(B, C, H, W)``; ``patch x patch`` pixels form one token (inputs
are reflect-padded to a multiple of ``patch`` and the output cropped back).

Blocks are DiT's adaLN-Zero (Peebles & Xie 2023) with RMS-normalised queries
and keys (as in FLUX). Self-attention over all tokens makes one call cost
``~ tokens^2`` like FLUX and Wan, so a coarse SPD stage saves more than the
pixel ratio.

Positions (2-D RoPE): half of every head's pairs rotate with the row
coordinate, half with the column coordinate, at frequencies
``theta ** (-k / K)``, ``k = 0..K-1``. Coordinates are *extent-normalised*:
token ``i`` of ``n`` along an axis sits at ``(i + 0.5) * rope_extent / n``.
So the position ids are rebuilt for every grid (as the FLUX/Wan adapters
rebuild ``img_ids``), every grid spans the same extent, and an SPD coarse
stage, whose state is the low-pass of the full image, is presented to the
model as exactly that: the same picture at a lower sampling density. Training
on crops of 32..128 pixels teaches the model every density it meets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig
from .unet import TimeMLP


def _register_cpu_sdpa_flops() -> None:
    """Count CPU attention FLOPs in ``torch.utils.flop_counter``.

    torch 2.13 registers formulas for the CUDA SDPA kernels only; on CPU
    ``F.scaled_dot_product_attention`` dispatches to
    ``aten._scaled_dot_product_flash_attention_for_cpu``, which would count as
    0 FLOPs and make the DiT's measured cost (and ``measure_eval_cost``) miss
    the ``tokens^2`` term. Same formula as the CUDA kernels: ``4 B H N M D``.
    """
    from torch.utils import flop_counter as fc

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in fc.flop_registry or op.default in fc.flop_registry:
        return

    @fc.register_flop_formula(op)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_sdpa_flops()


def rope_angles(nh: int, nw: int, head_dim: int, extent: float, theta: float,
                device=None) -> torch.Tensor:
    """Rotation angles ``(nh * nw, head_dim // 2)`` for a ``nh x nw`` token grid.

    Pairs ``[0, K)`` rotate with the row position, ``[K, 2K)`` with the column
    position, ``K = head_dim // 4``; positions are ``(i + 0.5) * extent / n``.
    """
    k = head_dim // 4
    freqs = theta ** (-torch.arange(k, dtype=torch.float32, device=device) / k)
    py = (torch.arange(nh, dtype=torch.float32, device=device) + 0.5) * (extent / nh)
    px = (torch.arange(nw, dtype=torch.float32, device=device) + 0.5) * (extent / nw)
    gy, gx = torch.meshgrid(py, px, indexing="ij")
    ang_y = gy.reshape(-1, 1) * freqs[None]
    ang_x = gx.reshape(-1, 1) * freqs[None]
    return torch.cat([ang_y, ang_x], dim=1)


def apply_rope(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the last axis of ``q`` ``(B, heads, N, D)`` by the angles."""
    q2 = q.unflatten(-1, (-1, 2))
    a, b = q2[..., 0], q2[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c, cos, sin):
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + sc1) + sh1
        b, n, d = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + g1 * self.proj(a.transpose(1, 2).reshape(b, n, d))
        h = self.norm2(x) * (1 + sc2) + sh2
        return x + g2 * self.mlp(h)


class DiT(nn.Module):
    """``forward(x, t) -> v``: ``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` flow time in [0, 1]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        self.embed = nn.Conv2d(c.channels, c.dim, c.patch, stride=c.patch)
        self.time = TimeMLP(c.time_dim, c.dim)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(c.dim, 2 * c.dim)
        self.out = nn.Linear(c.dim, c.patch * c.patch * c.channels)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self._rope_cache: dict = {}

    def rope(self, nh: int, nw: int, device, dtype):
        key = (nh, nw, str(device), dtype)
        if key not in self._rope_cache:
            c = self.config
            ang = rope_angles(nh, nw, c.dim // c.heads, c.rope_extent, c.rope_theta, device)
            if len(self._rope_cache) > 32:
                self._rope_cache.clear()
            self._rope_cache[key] = (ang.cos().to(dtype), ang.sin().to(dtype))
        return self._rope_cache[key]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.channels:
            raise ValueError(f"DiT expects (B, {c.channels}, H, W), got {tuple(x.shape)}")
        h0, w0 = x.shape[-2:]
        ph, pw = (-h0) % c.patch, (-w0) % c.patch
        if ph or pw:
            mode = "reflect" if ph < h0 and pw < w0 else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        nh, nw = x.shape[-2] // c.patch, x.shape[-1] // c.patch
        t = t.reshape(-1).to(x.dtype).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        cond = self.time(t).to(x.dtype)
        tok = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cos, sin = self.rope(nh, nw, x.device, x.dtype)
        for blk in self.blocks:
            tok = blk(tok, cond, cos, sin)
        sh, sc = self.ada_out(F.silu(cond))[:, None].chunk(2, dim=-1)
        tok = self.out(self.norm_out(tok) * (1 + sc) + sh)  # (B, N, p*p*C)
        out = tok.reshape(x.shape[0], nh, nw, c.channels, c.patch, c.patch)
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(x.shape[0], c.channels, nh * c.patch,
                                                     nw * c.patch)
        return out[..., :h0, :w0]
