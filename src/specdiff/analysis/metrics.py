"""Image-quality metrics that need no download (DESIGN.md section 9).

All functions take image batches ``(N, C, H, W)`` (float, any range; pass
``data_range`` where it matters). The embedded models' samples are about
[-1, 1] and not clamped (8 seeds of the UNet reach -1.26 and 1.23); the feature extractors
below clamp to [-1, 1], the other metrics take the values as they are.

- :func:`swd` / :class:`SlicedWasserstein`: multi-scale sliced Wasserstein
  distance of an image set to a reference set on 7x7 patches of their
  Laplacian pyramids (Karras et al. 2018, "Progressive Growing of GANs",
  section 5): no network, sensitive to structure at every scale. Patch
  positions and projection directions come from a fixed seed, so
  ``swd(a, a) == 0`` exactly.
- :func:`rapsd_distance`: RMS log-spectral distance (dB) between the radially
  averaged power spectra (:func:`specdiff.spectral.rapsd`).
- :func:`psnr`, :func:`ssim`: paired fidelity (SSIM from scikit-image).
- :func:`frechet_distance`: FD between Gaussian fits of features from a
  pluggable extractor (:func:`load_feature_extractor` takes a local
  TorchScript Inception or a local Hugging Face CLIP folder; nothing downloads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..spectral import rapsd

__all__ = [
    "laplacian_pyramid", "swd", "SlicedWasserstein", "rapsd_distance", "psnr", "ssim", "gaussian_stats",
    "frechet_from_stats", "frechet_distance", "load_feature_extractor", "TorchScriptExtractor",
    "CLIPExtractor",
]


def _check_images(x, name="images", *, min_n: int = 1) -> torch.Tensor:
    """``x`` checked as an ``(N, C, H, W)`` finite batch; set metrics pass ``min_n=2``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{name} must be a (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[0] < min_n:
        # a distance between distributions needs samples of both: with one image SWD came
        # out 0.0 and a covariance is undefined; say so rather than return a number
        raise ValueError(f"{name} has {x.shape[0]} sample(s); this metric compares image sets and "
                         f"needs at least {min_n} (use many: hundreds for a stable score)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or inf")
    return x


# ---------------------------------------------------------------------------
# multi-scale sliced Wasserstein distance
# ---------------------------------------------------------------------------

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x)
    c = x.shape[1]
    pad = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode=pad), k.expand(c, 1, 5, 5), groups=c)


def _pyr_down(x):
    return _blur(x)[..., ::2, ::2]


def _pyr_up(x, shape):
    up = torch.zeros(*x.shape[:2], *shape, dtype=x.dtype, device=x.device)
    up[..., ::2, ::2] = x
    return _blur(up) * 4


def laplacian_pyramid(x: torch.Tensor, min_size: int = 16) -> list[torch.Tensor]:
    """Band-pass levels (finest first) and the low-pass residual last (5-tap binomial filter).

    The coarsest level has its short side ``>= min_size``; ``sum`` of the
    upsampled levels reconstructs ``x`` exactly.
    """
    x = _check_images(x).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    levels = []
    cur = x
    while min(cur.shape[-2:]) // 2 >= min_size:
        down = _pyr_down(cur)
        levels.append(cur - _pyr_up(down, cur.shape[-2:]))
        cur = down
    levels.append(cur)
    return levels


def _patches(level: torch.Tensor, n_per_image: int, patch: int, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = level.shape
    if h < patch or w < patch:
        raise ValueError(f"pyramid level {h}x{w} is smaller than the {patch}x{patch} patch")
    ys = torch.randint(0, h - patch + 1, (n, n_per_image), generator=gen)
    xs = torch.randint(0, w - patch + 1, (n, n_per_image), generator=gen)
    ar = torch.arange(patch)
    rows = (ys[..., None] + ar)[..., :, None].expand(n, n_per_image, patch, patch)
    cols = (xs[..., None] + ar)[..., None, :].expand(n, n_per_image, patch, patch)
    b = torch.arange(n)[:, None, None, None].expand_as(rows)
    out = level.permute(0, 2, 3, 1)[b, rows, cols]  # (n, k, p, p, c)
    return out.reshape(n * n_per_image, patch * patch, c)


def _quantiles(sorted_vals: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Linear-interpolated quantiles of rows sorted along the last axis."""
    n = sorted_vals.shape[-1]
    pos = probs * n - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo).clamp(0, 1).to(sorted_vals.dtype)
    return sorted_vals[..., lo] * (1 - w) + sorted_vals[..., hi] * w


def _probs(q: int) -> torch.Tensor:
    return (torch.arange(q, dtype=torch.float64) + 0.5) / q


def _resample(sorted_vals: torch.Tensor, q: int) -> torch.Tensor:
    """Sorted rows of any length -> their ``q`` quantiles at ``(i + 0.5) / q``."""
    return sorted_vals if sorted_vals.shape[-1] == q else _quantiles(sorted_vals, _probs(q))


def _normalise(d: torch.Tensor) -> torch.Tensor:
    """``(N, p*p, C)`` descriptors -> zero mean, unit std per channel over the set, flattened."""
    mean = d.mean(dim=(0, 1), keepdim=True)
    std = d.std(dim=(0, 1), keepdim=True).clamp_min(1e-8)
    return ((d - mean) / std).flatten(1)


class SlicedWasserstein:
    """Multi-scale sliced Wasserstein distance to a fixed reference set (e.g. real images).

    The reference's Laplacian pyramid (down to ``min_size``) is cut into
    ``patches_per_image`` random ``patch x patch`` descriptors per level and
    image; each set's descriptors are normalised per level and channel by that
    set's own mean and std, as in the ProGAN implementation (so a global
    per-channel brightness/contrast offset between the sets is not counted;
    :func:`rapsd_distance` measures amplitude); the distance
    per level is the mean over ``projections x repeats`` random unit directions
    of the 1-D Wasserstein-1 distance between projected descriptors (Karras et
    al. 2018 use the same sizes and report x1e3). The reference's sorted
    projections are kept as ``max_quantiles`` quantiles, so scoring many sets
    against one reference is cheap. Patch positions and directions come from
    ``seed``: scoring the reference itself gives exactly 0.
    """

    def __init__(self, reference: torch.Tensor, *, patch: int = 7, patches_per_image: int = 128,
                 projections: int = 512, repeats: int = 4, min_size: int = 16, seed: int = 0,
                 max_quantiles: int = 4096):
        ref = _check_images(reference, "reference", min_n=2)
        if min(ref.shape[-2:]) < max(patch, min_size):
            raise ValueError(
                f"images of {tuple(ref.shape[-2:])} are too small for SWD (min {min_size})")
        self.shape = tuple(ref.shape[1:])
        self.kw = dict(patch=patch, ppi=patches_per_image, min_size=min_size, seed=seed)
        self.projections, self.repeats, self.max_q = projections, repeats, max_quantiles
        self.levels = []  # per level: (mean, std, [dirs per repeat], [sorted quantiles per repeat])
        for k, lv in enumerate(laplacian_pyramid(ref, min_size)):
            flat = _normalise(self._descriptors(lv, k))
            q = min(flat.shape[0], max_quantiles)
            g = torch.Generator().manual_seed(seed * 104729 + k)
            dirs, qs = [], []
            for _ in range(repeats):
                dr = torch.randn(projections, flat.shape[1], generator=g, dtype=torch.float64)
                dr = (dr / dr.norm(dim=1, keepdim=True)).to(flat.dtype)
                dirs.append(dr)
                qs.append(_resample(torch.sort(dr @ flat.T, dim=1).values, q))
            self.levels.append((dirs, qs, int(min(lv.shape[-2:]))))

    def _descriptors(self, level, k):
        g = torch.Generator().manual_seed(self.kw["seed"] * 7919 + k)
        return _patches(level, self.kw["ppi"], self.kw["patch"], g)

    def __call__(self, images: torch.Tensor) -> dict:
        """``{"levels": [per-level SWD, finest first], "mean": average, "sizes": [...]}``."""
        x = _check_images(images, "images", min_n=2)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images must have the reference's (C, H, W) {self.shape}, got "
                             f"{tuple(x.shape[1:])}")
        out, sizes = [], []
        for k, lv in enumerate(laplacian_pyramid(x, self.kw["min_size"])):
            dirs, qs, size = self.levels[k]
            flat = _normalise(self._descriptors(lv, k))
            vals = []
            for dr, qref in zip(dirs, qs, strict=True):
                q = min(flat.shape[0], qref.shape[-1])
                mine = _resample(torch.sort(dr.to(flat.dtype) @ flat.T, dim=1).values, q)
                vals.append(float((mine - _resample(qref, q)).abs().double().mean()))
            out.append(sum(vals) / len(vals))
            sizes.append(size)
        return {"levels": out, "mean": sum(out) / len(out), "sizes": sizes}


def swd(a: torch.Tensor, b: torch.Tensor, **kwargs) -> dict:
    """Multi-scale sliced Wasserstein distance of ``b`` to the reference set ``a``.

    Same as ``SlicedWasserstein(a, **kwargs)(b)`` (see there); build the
    object once to score many sets against the same reference. Both sets need
    the same image size; their sizes may differ. ``swd(a, a) == 0`` exactly.
    """
    a, b = _check_images(a, "a", min_n=2), _check_images(b, "b", min_n=2)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"both sets need the same (C, H, W), got {tuple(a.shape[1:])} and "
                         f"{tuple(b.shape[1:])}")
    return SlicedWasserstein(a, **kwargs)(b)


# ---------------------------------------------------------------------------
# spectra and paired metrics
# ---------------------------------------------------------------------------


def rapsd_distance(a: torch.Tensor, b: torch.Tensor, *, basis: str = "dct",
                   fmin: float | None = None) -> float:
    """RMS over frequency of ``10 log10(P_a / P_b)`` in dB (RAPSD, DC excluded, mean removed).

    ``fmin``: only frequencies ``>= fmin`` cycles per image (e.g. ``min(H, W) / 4``, the
    upper half of the band to Nyquist: where slim models lose texture).
    """
    a, b = _check_images(a, "a", min_n=2), _check_images(b, "b", min_n=2)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError("rapsd_distance needs images of the same size")
    f, p = rapsd(a, basis=basis)
    _, q = rapsd(b, basis=basis)
    r = 10 * torch.log10(p.clamp_min(1e-30) / q.clamp_min(1e-30))
    if fmin is not None:
        keep = torch.as_tensor(f) >= fmin
        if not keep.any():
            raise ValueError(f"fmin={fmin} is above every frequency of these images (max "
                             f"{float(torch.as_tensor(f).max()):.1f} cycles per image)")
        r = r[keep]
    return float(torch.sqrt((r**2).mean()))


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 2.0,
         reduction: str = "mean") -> torch.Tensor | float:
    """Peak signal-to-noise ratio ``10 log10(range^2 / MSE)`` per image pair (dB).

    ``data_range`` is max - min of the pixel range (2 for [-1, 1]).
    ``reduction``: ``"mean"`` (a float) or ``"none"`` (an ``(N,)`` tensor).
    Identical pairs give ``inf``.
    """
    x, y = _check_images(x, "x"), _check_images(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1)
    val = 10 * torch.log10(data_range**2 / mse)
    if reduction == "none":
        return val
    if reduction != "mean":
        raise ValueError("reduction must be 'mean' or 'none'")
    return float(val.mean())


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 2.0,
         reduction: str = "mean") -> torch.Tensor | float:
    """Mean structural similarity per pair (``skimage.metrics.structural_similarity``,
    Gaussian-weighted 11x11 window as in Wang et al. 2004)."""
    from skimage.metrics import structural_similarity

    x, y = _check_images(x, "x"), _check_images(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    xs, ys = x.double().cpu().numpy(), y.double().cpu().numpy()
    vals = [structural_similarity(a, b, data_range=data_range, channel_axis=0,
                                  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            for a, b in zip(xs, ys, strict=True)]
    v = torch.tensor(vals, dtype=torch.float64)
    if reduction == "none":
        return v
    if reduction != "mean":
        raise ValueError("reduction must be 'mean' or 'none'")
    return float(v.mean())


# ---------------------------------------------------------------------------
# Frechet distance with a pluggable feature extractor
# ---------------------------------------------------------------------------


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of ``(N, D)`` features, float64."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` (Heusel et al. 2017).

    Uses the symmetric form, whose trace equals ``tr((S1 S2)^1/2)``, computed
    with eigendecompositions in float64 (no scipy).
    """
    mu1, mu2 = (torch.as_tensor(v, dtype=torch.float64) for v in (mu1, mu2))
    s1, s2 = (torch.as_tensor(v, dtype=torch.float64) for v in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError("frechet_from_stats: means (D,) and covariances (D, D) must agree")
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    val = ((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * torch.trace(cross)
    return float(val.clamp_min(0))


def frechet_distance(a: torch.Tensor, b: torch.Tensor,
                     extractor: Callable[[torch.Tensor], torch.Tensor] | str | os.PathLike,
                     *, batch_size: int = 32) -> float:
    """Frechet distance between the feature Gaussians of image sets ``a`` and ``b``.

    ``extractor`` maps ``(B, 3, H, W)`` images in approximately [-1, 1] (samples are
    not clamped; the extractors of :func:`load_feature_extractor` clamp) to ``(B, D)``
    features; a path is passed to :func:`load_feature_extractor`. Each set needs at
    least two images (a covariance); hundreds for a stable score.
    """
    # checked before any feature extraction: a covariance needs two samples per set
    a, b = _check_images(a, "a", min_n=2), _check_images(b, "b", min_n=2)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (images per extractor call), "
                         f"got {batch_size!r}")
    if not callable(extractor):
        extractor = load_feature_extractor(extractor)
    fa = _features(a, extractor, batch_size)
    fb = _features(b, extractor, batch_size)
    return frechet_from_stats(*gaussian_stats(fa), *gaussian_stats(fb))


def _features(x, extractor, batch_size):
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            f = extractor(x[i : i + batch_size])
            outs.append(torch.as_tensor(f).reshape(f.shape[0], -1).double().cpu())
    return torch.cat(outs)


class TorchScriptExtractor:
    """A local TorchScript (or ``torch.export`` ``.pt2``) feature network, e.g. the FID
    Inception ``pt_inception-2015-12-05``.

    Images in approximately [-1, 1] are clamped to it, resized (bilinear) to ``size``
    and mapped to ``input_range`` before the call; extra keyword arguments (such as
    ``return_features=True`` for the StyleGAN/clean-fid Inception) are passed
    through. Output is flattened to ``(B, D)``.
    """

    def __init__(self, path: str | os.PathLike, *, size: int | None = 299,
                 input_range: Sequence[float] = (0.0, 255.0), call_kwargs: dict | None = None,
                 device="cpu"):
        if str(path).endswith(".pt2"):  # a torch.export program
            self.model = torch.export.load(str(path)).module()
        else:
            import warnings

            with warnings.catch_warnings():  # TorchScript is how FID Inception weights ship
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        self.size, self.lo, self.hi = size, float(input_range[0]), float(input_range[1])
        self.kwargs = dict(call_kwargs or {})
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32).clamp(-1, 1)
        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = self.lo + (x + 1) * 0.5 * (self.hi - self.lo)
        out = self.model(x, **self.kwargs)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.reshape(out.shape[0], -1)


class CLIPExtractor:
    """Image embeddings of a local Hugging Face CLIP checkpoint folder (``local_files_only``)."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, folder: str | os.PathLike, device="cpu"):
        try:
            from transformers import CLIPVisionModelWithProjection
        except ImportError as e:  # pragma: no cover - transformers is an optional extra
            raise ValueError("a CLIP feature model needs `pip install specdiff[diffusers]`") from e
        self.model = CLIPVisionModelWithProjection.from_pretrained(
            str(folder), local_files_only=True).eval().to(device)
        self.size = int(self.model.config.image_size)
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32).clamp(-1, 1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.MEAN, device=x.device)[:, None, None]
        std = torch.tensor(self.STD, device=x.device)[:, None, None]
        x = ((x + 1) * 0.5 - mean) / std
        return self.model(pixel_values=x).image_embeds


def check_feature_model(spec: str | os.PathLike | Callable) -> None:
    """What :func:`load_feature_extractor` checks before loading: a callable, a local
    TorchScript file, or a folder with ``config.json``. For a run's arguments, so a wrong
    path fails before the work and not at its end."""
    if callable(spec):
        return
    p = Path(spec).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"feature model {p} not found; pass a local TorchScript Inception file or a local "
            "CLIP folder (nothing is downloaded)"
        )
    if p.is_dir() and not (p / "config.json").is_file():
        raise ValueError(f"{p} has no config.json; expected a Hugging Face CLIP folder")


def load_feature_extractor(spec: str | os.PathLike | Callable, *, device="cpu") -> Callable:
    """A feature extractor from a local model: a TorchScript file (``.pt``/``.pth``/``.jit``,
    e.g. an FID Inception) or a Hugging Face CLIP folder (with ``config.json``).

    A callable is returned unchanged. Nothing is downloaded: a missing path
    raises ``FileNotFoundError``.
    """
    if callable(spec):
        return spec
    check_feature_model(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        return CLIPExtractor(p, device=device)
    try:
        return TorchScriptExtractor(p, device=device,
                                    call_kwargs={"return_features": True}
                                    if "inception" in p.name.lower() else None)
    except RuntimeError as e:
        raise ValueError(f"{p} is not a TorchScript model ({str(e).splitlines()[0]})") from None

