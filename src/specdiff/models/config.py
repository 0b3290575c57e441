"""Frozen configs of the embedded pixel-space flow models (nanoGPT style).

Both models predict the flow velocity ``v = eps - x0`` of the rectified-flow
state ``x_t = (1 - t) x0 + t eps`` (``t = 1`` noise) for images in ``[-1, 1]``,
and accept any grid size: the UNet pads internally to a multiple of its total
downsampling, the DiT rebuilds its 2-D RoPE positions per grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class UNetConfig:
    """A small convolutional UNet: cost proportional to pixels.

    Defaults are sized so that training to the quality bar fits in about an
    hour on a 2-core CPU (docs/embedded-model.md) while the 64^2 -> 128^2 cost
    ratio stays close to 1/4, which is what SPD's speed-up relies on.
    ``mid_attention`` heads of self-attention at the lowest level give every
    grid size an image-wide receptive field (the 3x3 convolutions alone see a
    smaller fraction of a 128^2 image than of a 64^2 one). At 128^2 it attends
    over 256 positions: under 1% of a call's FLOPs, so the cost stays
    proportional to the pixels.
    """

    kind: str = "unet"
    channels: int = 3  # RGB in [-1, 1]
    base: int = 32  # width of the first level
    mults: tuple[int, ...] = (1, 2, 3, 4)  # width multiplier per level; 3 downsamplings
    blocks: int = 1  # residual blocks per level (encoder); decoder uses blocks + 1
    time_dim: int = 128  # sinusoidal time embedding width
    groups: int = 8  # GroupNorm groups
    mid_attention: int = 0  # heads of self-attention between the middle blocks (0: none)

    @property
    def multiple(self) -> int:
        """Grid sizes are padded internally to a multiple of this."""
        return 2 ** (len(self.mults) - 1)

    def validate(self) -> UNetConfig:
        if self.kind != "unet":
            raise ValueError(f"UNetConfig.kind must be 'unet', got {self.kind!r}")
        if self.channels < 1 or self.base < 1 or self.blocks < 1 or not self.mults:
            raise ValueError("UNet channels, base, blocks and mults must be positive")
        if any(self.base * m % self.groups for m in self.mults):
            raise ValueError(f"every level width base*mult must be divisible by groups={self.groups}")
        if self.mid_attention < 0 or (self.mid_attention
                                      and self.base * self.mults[-1] % self.mid_attention):
            raise ValueError(f"mid_attention={self.mid_attention} heads must divide the lowest "
                             f"level width {self.base * self.mults[-1]} (0 turns attention off)")
        return self


@dataclass(frozen=True)
class WGUNetConfig(UNetConfig):
    """The UNet with wavelet-gated down- and up-sampling (slim spectral diffusion).

    Same fields as :class:`UNetConfig` plus ``gate_ratio``, the width of the gates'
    hidden layer relative to their input channels (the gates are a few thousand
    parameters and well under 1% of a call's FLOPs). The defaults are the shipped
    ``unet-slim``: widths 12, 24, 36, 48 (the teacher ``unet``'s 32 .. 128 times 3/8),
    at least 8x fewer FLOPs per evaluation than the teacher (docs/slim.md).
    """

    kind: str = "wgunet"
    base: int = 12
    groups: int = 4
    mid_attention: int = 4
    gate_ratio: float = 0.25

    def validate(self) -> WGUNetConfig:
        if self.kind != "wgunet":
            raise ValueError(f"WGUNetConfig.kind must be 'wgunet', got {self.kind!r}")
        if not self.gate_ratio > 0:
            raise ValueError(f"gate_ratio must be > 0 (the gates' hidden width per input "
                             f"channel), got {self.gate_ratio}")
        UNetConfig.validate(replace(self, kind="unet"))
        return self


@dataclass(frozen=True)
class DiTConfig:
    """A small pixel DiT with adaLN-Zero blocks and 2-D rotary positions.

    ``patch`` x ``patch`` pixels make one token, so a 128^2 image is 1024
    tokens and attention costs ``tokens^2`` like FLUX. RoPE positions are
    *extent-normalised*: token ``i`` of ``n`` along an axis sits at
    ``(i + 0.5) * rope_extent / n``, so every grid spans the same extent and a
    coarse SPD stage (64^2 of a 128^2 image) sees the image it really is, the
    same picture sampled at half the density (docs/embedded-model.md).
    """

    kind: str = "dit"
    channels: int = 3
    patch: int = 4
    dim: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    time_dim: int = 128
    rope_extent: float = 32.0  # position range every grid is mapped onto
    rope_theta: float = 100.0  # longest RoPE wavelength scale (positions span 0..rope_extent)

    @property
    def multiple(self) -> int:
        return self.patch

    def validate(self) -> DiTConfig:
        if self.kind != "dit":
            raise ValueError(f"DiTConfig.kind must be 'dit', got {self.kind!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if (self.dim // self.heads) % 4:
            raise ValueError("head width must be divisible by 4 (2-D RoPE uses pairs per axis)")
        if self.patch < 1 or self.depth < 1 or self.channels < 1:
            raise ValueError("DiT patch, depth and channels must be positive")
        return self


CONFIGS = {"unet": UNetConfig, "wgunet": WGUNetConfig, "dit": DiTConfig}


def config_to_dict(cfg) -> dict:
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def config_from_dict(d: dict):
    """Rebuild a config from its JSON dict; unknown keys or kinds raise ``ValueError``."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"model config must be a JSON object with a 'kind' (one of {sorted(CONFIGS)})")
    cls = CONFIGS.get(d["kind"])
    if cls is None:
        raise ValueError(f"unknown model kind {d['kind']!r}; expected one of {sorted(CONFIGS)}")
    names = {f.name for f in fields(cls)}
    extra = set(d) - names
    if extra:
        raise ValueError(f"model config has unknown keys {sorted(extra)} for kind {d['kind']!r}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**kw).validate()
