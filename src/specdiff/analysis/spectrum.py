"""Fit the data power spectrum of images, tensors or latents (``specdiff analyze``).

Inputs are read as data arrays: images through :func:`specdiff.images.read_image`,
mapped to ``[-1, 1]`` (the usual diffusion range) and centre-cropped to one
square side; ``.npy`` / ``.pt`` tensors as stored (``(N, C, H, W)``,
``(C, H, W)`` or ``(H, W)``). The fit is ``P(w) = A w^-beta`` on the DCT
RAPSD (:func:`specdiff.spectral.rapsd`, frequencies in cycles per image),
and the SPD switches it implies follow from :func:`specdiff.analysis.schedule.schedule_row`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..fileio import save_figure
from ..images import IMAGE_EXTENSIONS, list_images, read_image
from ..plans import PowerSpectrum, flow_times
from ..spectral import fit_power_law, rapsd
from .schedule import check_steps, schedule_row

__all__ = ["TENSOR_EXTENSIONS", "collect_files", "load_arrays", "SpectrumFit", "fit_arrays",
           "count_text", "implied_switches", "switch_table", "fit_record", "rapsd_plot"]

#: tensor files read as stored
TENSOR_EXTENSIONS = (".npy", ".pt")
#: the largest default square side of images (the smallest side seen, at most this)
MAX_SIDE = 512


def collect_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Files named in ``paths``; a folder contributes its images and tensors in name order."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += [str(f) for f in list_images(p, extensions=IMAGE_EXTENSIONS + TENSOR_EXTENSIONS)]
        elif os.path.exists(p):
            files.append(str(p))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    if not files:
        raise ValueError("no images (.png/.jpg/...) or tensors (.npy/.pt) found in the given paths")
    return files


def _read_tensor(f: str) -> torch.Tensor:
    if f.lower().endswith(".npy"):
        t = torch.from_numpy(np.load(f)).to(torch.float64)
    else:
        obj = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{f} does not hold a tensor")
        t = obj.to(torch.float64)
    t = t[None, None] if t.ndim == 2 else (t[None] if t.ndim == 3 else t)
    if t.ndim < 4:
        raise ValueError(f"tensors must be (N, C, H, W) or (C, H, W), got {tuple(t.shape)} in {f}")
    return t


def _square_batch(images: list[np.ndarray], side: int) -> torch.Tensor:
    """``(H, W, C)`` arrays -> ``(N, C, side, side)``: centre square, resized (antialiased
    bilinear) when its side differs; grey images are repeated over colour channels."""
    from skimage import transform

    batch = []
    for im in images:
        h, w = im.shape[:2]
        s = min(h, w)
        crop = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        if s != side:
            crop = transform.resize(crop, (side, side), anti_aliasing=True, order=1)
        batch.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))))
    chans = max(b.shape[0] for b in batch)
    return torch.stack([b.expand(chans, -1, -1) if b.shape[0] == 1 else b for b in batch])


def load_arrays(paths: Sequence[str | os.PathLike], size: int | None = None) -> list[torch.Tensor]:
    """Tensors as stored (float64) and, last, one ``(N, C, s, s)`` float64 batch of the images
    in ``[-1, 1]`` centre-cropped to side ``s = size`` (default: the smallest side seen, at
    most :data:`MAX_SIDE`)."""
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
        raise ValueError(f"size (--size) must be a positive side in pixels, got {size!r}")
    tensors, images = [], []
    for f in collect_files(paths):
        if f.lower().endswith(TENSOR_EXTENSIONS):
            tensors.append(_read_tensor(f))
        else:
            # float64 from the file's integers, so the [-1, 1] values are exact to the last bit
            x = read_image(f, dtype=torch.float64).numpy().transpose(1, 2, 0)
            images.append(x * 2 - 1)
    if images:
        side = size or min(MAX_SIDE, min(min(im.shape[:2]) for im in images))
        tensors.append(_square_batch(images, int(side)))
    return tensors


@dataclass(frozen=True)
class SpectrumFit:
    """RAPSD of the data and its power-law fit (frequencies in cycles per image)."""

    freqs: torch.Tensor
    power: torch.Tensor
    A: float
    beta: float
    grid: tuple[int, int]
    #: 2-D planes the RAPSD averages: every channel (and video frame) of every sample,
    #: e.g. 15 for 5 RGB images; not the number of images (that is ``samples``)
    frames: int
    #: samples fitted: images, or the leading axis ``N`` of each tensor (a ``(C, H, W)`` or
    #: ``(H, W)`` tensor is one)
    samples: int
    #: video frames of the ``(N, C, T, H, W)`` tensors (``N * T``), 0 when none is a video
    video_frames: int

    @property
    def spectrum(self) -> PowerSpectrum:
        return PowerSpectrum(self.A, self.beta)


def fit_arrays(arrays: Sequence[torch.Tensor]) -> SpectrumFit:
    """One RAPSD over every 2-D frame of ``arrays`` (all of one spatial size) and its
    ``A w^-beta`` fit above 1 cycle per image."""
    shapes = {tuple(a.shape[-2:]) for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"inputs have different spatial sizes {sorted(shapes)}; crop the images "
                         "to one side (load_arrays size=, --size) or analyse them separately")
    data = torch.cat([a.flatten(0, -3) for a in arrays])
    freqs, power = rapsd(data)
    A, beta = fit_power_law(freqs, power, fmin=1.0)
    h, w = data.shape[-2:]
    # a sample is the leading axis of (N, C, H, W); channels (axis 1) are not samples,
    # and the further axes of (N, C, T, H, W) are video frames
    samples = sum(int(a.shape[0]) if a.ndim >= 4 else 1 for a in arrays)
    video_frames = sum(int(a.shape[:-2].numel()) // int(a.shape[1]) for a in arrays if a.ndim >= 5)
    return SpectrumFit(freqs, power, A, beta, (int(h), int(w)), int(data.shape[0]), samples,
                       video_frames)


def count_text(fit: SpectrumFit, images: int = 0) -> str:
    """What ``fit`` averages, in words: ``"5 images"``, ``"8 samples"``, ``"2 samples,
    18 video frames"``, or images and samples together; ``images`` of ``fit.samples`` are
    images (decoded image files, or the images whose latents were fitted)."""

    def n(k: int, noun: str) -> str:
        return f"{k} {noun}" + ("" if k == 1 else "s")

    parts = [n(images, "image")] if images else []
    if fit.samples > images:
        parts.append(n(fit.samples - images, "tensor sample"))
    if fit.video_frames:
        parts.append(n(fit.video_frames, "video frame"))
    return ", ".join(parts)


def implied_switches(fit: SpectrumFit, steps: int, shift: float, scales: Sequence[float],
                     deltas: Sequence[float]) -> list[dict]:
    """SPD's switches on the fitted spectrum (SD3-shift grid of ``steps`` steps), one
    :func:`~specdiff.analysis.schedule.schedule_row` per delta, or ``{"delta", "error"}``
    where that delta gives no plan on this grid."""
    times = flow_times(check_steps(steps), shift)
    out = []
    for d in deltas:
        try:
            out.append(schedule_row(times, fit.grid, scales, fit.spectrum, d))
        except ValueError as e:
            out.append({"delta": d, "error": str(e)})
    return out


def switch_table(rows: Sequence[dict]) -> str:
    """Markdown: per delta and coarse stage, its grid, ``t*``, ``t_new``, switch step and
    the plan's token cost ratio."""
    lines = ["| delta | stage grid | t* | t_new | switch step | cost ratio (tokens) |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['delta']:g} | {r['error']} | | | | |")
            continue
        for i, st in enumerate(r["stages"][:-1]):
            g = st["grid"]
            lines.append(f"| {r['delta']:g} | {g[0]}x{g[1]} | {st['t_star']:.4f} | "
                         f"{st['t_new']:.4f} | {r['switch_steps'][i]} | "
                         f"{r['cost_ratio_tokens']:.3f} |")
    return "\n".join(lines)


def fit_record(fit: SpectrumFit, switches: Sequence[dict]) -> dict:
    """The fit, its RAPSD and the implied switches (deltas that gave a plan), JSON-ready."""
    spd = [{"delta": r["delta"], "t_star": [st["t_star"] for st in r["stages"][:-1]],
            "switch_steps": r["switch_steps"]} for r in switches if "error" not in r]
    return {"A": fit.A, "beta": fit.beta, "grid": list(fit.grid), "frames": fit.frames,
            "samples": fit.samples, "video_frames": fit.video_frames,
            "freqs": fit.freqs.tolist(), "power": fit.power.tolist(), "spd": spd}


def rapsd_plot(path, fit: SpectrumFit, title: str) -> None:
    """The RAPSD and its fit on log-log axes (a PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.loglog(fit.freqs.numpy(), fit.power.numpy(), ".", ms=3, label="RAPSD (DCT)")
    ax.loglog(fit.freqs.numpy(), (fit.A * fit.freqs ** (-fit.beta)).numpy(), "-",
              label=f"fit A={fit.A:.3g}, beta={fit.beta:.3f}")
    ax.set_xlabel("frequency (cycles per image)")
    ax.set_ylabel("power")
    ax.set_title(title[:60], fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
