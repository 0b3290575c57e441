"""A latent spectrum for any VAE, without asking: fitted once on shipped photos, cached on disk.

SPD's switch times need the power law ``P(w) = A w^-beta`` of the model's clean
latents (paper Eq. 9-10). FLUX's and Wan's VAEs have published constants; for
any other VAE (SD3, SDXL, a fine-tuned one) ``SpectralPipeline(..., spectrum=None)``
calls :func:`auto_spectrum`, which fits one exactly as
``specdiff analyze --vae PIPE --images DIR --size S`` does:

* Images: the natural photographs scikit-image ships (:data:`PHOTOS`, a
  dependency already installed), each centre-cropped to a square and resized
  to ``S`` pixels. ``S`` is the call's resolution (``sqrt(H W)``) when every
  photo is at least that large, else the smallest photo side (400 px): the
  photos are never upsampled, since an enlarged photo has no high frequencies
  and would bias ``beta``. Both are rounded down to the VAE's downsampling
  factor.
* Latents: the posterior mean, normalised as the pipeline feeds its denoiser
  (:func:`specdiff.integrations.vae_spectrum.normalise_latents`); fit by
  :func:`specdiff.analysis.spectrum.fit_arrays` in float64.
* Another resolution: the fit at ``s x s`` latents serves an ``h x w`` latent
  grid with ``A * (h w) / s^2`` (the orthonormal-DCT convention of
  :class:`specdiff.testbeds.GaussianField`, also used by the embedded models'
  ``spectrum(size)``); ``beta`` is kept.

Cache: one JSON file per (VAE, fit side), named by the SHA-256 of the VAE's
class, its config and the SHA-256 of its weights, the side and the photo set,
in ``$SPECDIFF_CACHE_DIR`` or else the platform's cache folder (``$XDG_CACHE_HOME``
or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on
Windows) under ``specdiff/spectra``. A file that does not parse or whose key does
not match is refitted and rewritten (atomically), never trusted. In a process,
fits are also kept per VAE module, so the weights are hashed once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import warnings
import weakref
from pathlib import Path

import torch

from ..fileio import atomic_write_json
from ..plans import PowerSpectrum

__all__ = ["PHOTOS", "CACHE_ENV", "cache_dir", "photo_files", "fit_side", "vae_fingerprint",
           "auto_spectrum"]

#: scikit-image's natural photographs (file names in ``skimage/data``); the smallest
#: side among them is 400 px (``coffee.png``)
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "coffee.png", "grass.png", "gravel.png",
          "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
          "motorcycle_right.png", "retina.jpg", "rocket.jpg")
#: environment variable that overrides the cache folder
CACHE_ENV = "SPECDIFF_CACHE_DIR"
#: bump when the fit changes, so old cache entries are not reused
FIT_VERSION = 1

# vae module -> {fit side: (key, A, beta)}: the weights are hashed once per process
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    """Where fitted spectra are cached (see the module docstring); created on first write."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    # hand-written rather than platformdirs: it is not among our dependencies, and these
    # three rules are all we need
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "specdiff" / "Cache" / "spectra"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "specdiff" / "spectra"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "specdiff" / "spectra"


def photo_files() -> list[Path]:
    """The :data:`PHOTOS` on disk (scikit-image's data folder), in :data:`PHOTOS` order."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    files = [folder / name for name in PHOTOS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-image's data folder {folder} lacks {missing}; reinstall "
                                "scikit-image, or pass spectrum=(A, beta) from `specdiff analyze`")
    return files


def fit_side(height: int, width: int, factor: int, smallest_photo: int = 400) -> int:
    """The square side (pixels) the spectrum is fitted at for an ``height x width`` call:
    ``sqrt(height * width)``, at most ``smallest_photo``, rounded down to ``factor``."""
    side = min(int(math.sqrt(int(height) * int(width))), int(smallest_photo))
    side = (side // factor) * factor
    if side < factor:
        raise ValueError(f"a {height}x{width} image is smaller than one latent cell "
                         f"({factor} pixels); give a larger height/width")
    return side


def vae_fingerprint(vae) -> str:
    """SHA-256 of the VAE's class, config and weights (names, dtypes, shapes, bytes)."""
    from ..models.checkpoint import payload_sha256

    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    h = hashlib.sha256()
    h.update(type(vae).__name__.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(payload_sha256(vae.state_dict()).encode())
    return h.hexdigest()


def _cache_key(fingerprint: str, side: int) -> str:
    h = hashlib.sha256(f"{fingerprint}|{side}|{','.join(PHOTOS)}|{FIT_VERSION}".encode())
    return h.hexdigest()


def _read_cache(path: Path, key: str) -> dict | None:
    """The cached record (``key``, ``A``, ``beta``, ``side`` in pixels, ``latent_side``,
    ``vae``, ``images``, ``fit_version``), or ``None`` (with a warning) when the file is
    unusable."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        ok = (isinstance(rec, dict) and rec.get("key") == key
              and PowerSpectrum(float(rec["A"]), float(rec["beta"])) is not None
              and int(rec["latent_side"]) >= 1)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        warnings.warn(f"spectrum cache file {path} is corrupt or not this VAE's; fitting again",
                      stacklevel=3)
        return None
    return rec


def _fit(vae, side: int, progress: bool) -> tuple[float, float, int]:
    from ..analysis.spectrum import fit_arrays
    from .vae_spectrum import encode_files

    z = encode_files(vae, [str(f) for f in photo_files()], side, progress=progress)
    fit = fit_arrays([z.to(torch.float64)])
    return float(fit.A), float(fit.beta), int(z.shape[-1])


def auto_spectrum(vae, height: int, width: int, latent_grid=None, *, progress: bool = True,
                  use_cache: bool = True) -> PowerSpectrum:
    """The latent spectrum of ``vae`` for an ``height x width`` call (see the module docstring).

    ``latent_grid``: the call's ``(h, w)`` latent grid (default: ``height, width`` divided by
    the VAE's factor); ``A`` is scaled from the fit's ``s x s`` latents to it. A fit says so
    in one line on stderr; ``progress`` adds its encoding bar. ``use_cache=False`` always fits.
    """
    from .vae_spectrum import spatial_factor

    if vae is None:
        raise ValueError("this pipeline has no VAE to fit a latent spectrum with; pass "
                         "spectrum=(A, beta) from `specdiff analyze`")
    f = spatial_factor(vae)
    side = fit_side(height, width, f)
    hw = tuple(latent_grid) if latent_grid is not None else (int(height) // f, int(width) // f)
    memo = _MEMO.setdefault(vae, {})
    if side not in memo or not use_cache:
        memo[side] = _fit_or_read(vae, side, progress, use_cache)
    A, beta, s = memo[side]
    return PowerSpectrum(A * (hw[-2] * hw[-1]) / (s * s), beta,
                         f"{type(vae).__name__} fitted at {side}px")


def _fit_or_read(vae, side: int, progress: bool, use_cache: bool) -> tuple[float, float, int]:
    key = _cache_key(vae_fingerprint(vae), side)
    path = cache_dir() / f"{key[:32]}.json"
    rec = _read_cache(path, key) if use_cache else None
    if rec is not None:
        return float(rec["A"]), float(rec["beta"]), int(rec["latent_side"])
    # said whatever ``progress``: a fit takes up to a minute, once, and a silent minute in a
    # pipeline call would look like a hang; ``progress`` only adds the encoding bar
    print(f"specdiff: fitting the latent spectrum of this {type(vae).__name__} on "
          f"{len(PHOTOS)} photos at {side}x{side} (once; cached in {path})",
          file=sys.stderr, flush=True)
    A, beta, s = _fit(vae, side, progress)
    if use_cache:
        try:
            atomic_write_json(path, {"key": key, "A": A, "beta": beta, "side": side,
                                     "latent_side": s, "vae": type(vae).__name__,
                                     "images": len(PHOTOS), "fit_version": FIT_VERSION})
        except OSError as e:  # a read-only home: fit again next time, say why
            warnings.warn(f"could not cache the fitted spectrum in {path} ({e}); set "
                          f"{CACHE_ENV} to a writable folder", stacklevel=3)
    return A, beta, s
