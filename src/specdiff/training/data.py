"""Training and evaluation images: natural photos, split by photo, random multi-scale crops.

Images are ``(B, 3, S, S)`` float32 in ``[-1, 1]`` (grey photos are repeated
over the three channels). The default source is the photographs that
scikit-image ships (no download). They are split *by photo*: crops for
evaluation come only from photos the model never saw in training, so quality
is measured on held-out content. A user's folder of images works the same way
(``source=DIR``): every ``EVAL_EVERY``-th file in sorted order is held out.

A crop picks a photo uniformly, a square source window whose side is
log-uniform between ``max(size, window)`` and the photo's short side (the
whole photo, downscaled), resizes it with an antialiased bilinear filter and
flips it horizontally with probability 1/2. Randomness comes only from the
``torch.Generator`` passed in, so a batch is a function of its seed.

Scale-consistent crops (``window``, default :data:`WINDOW` = 128): the source
window does not depend on the output size, so the crops at 64^2 are exactly
the crops at 128^2 seen at half the sampling density. One image law sampled
on grids of every size is what progressive sampling assumes (a coarse SPD
stage is the low-pass of the full-resolution image, and the extent-normalised
DiT positions say so); with ``window=None`` (or 0) a 64^2 crop can be a 1:1
window that no downsampled 128^2 crop resembles, and the model then learns
different pictures at different sizes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..images import IMAGE_EXTENSIONS, from_array, list_images, read_image
from ..spectral import fit_power_law, rapsd

#: scikit-image photographs used for training (the two stereo motorcycle views
#: count as one photo; ``cat`` is ``chelsea`` again and is not used).
SKIMAGE_TRAIN = ("astronaut", "chelsea", "hubble_deep_field", "retina", "immunohistochemistry",
                 "motorcycle", "camera", "grass", "brick", "moon", "clock", "cell")
#: Held out: never seen in training, used for every quality number.
SKIMAGE_EVAL = ("coffee", "rocket", "gravel", "coins")
EVAL_EVERY = 5
#: Smallest source window (pixels) of a crop, whatever its output size.
WINDOW = 128
SPLITS = ("train", "eval", "all")


def _photo(x: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` in [0, 1] (:mod:`specdiff.images`) -> ``(3, H, W)`` in [-1, 1]; grey
    photos are repeated over the three channels."""
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    return x * 2 - 1


def _skimage_photo(name: str) -> list[torch.Tensor]:
    import skimage.data as skd

    if name == "motorcycle":
        left, right, _ = skd.stereo_motorcycle()
        return [_photo(from_array(left)), _photo(from_array(right))]
    return [_photo(from_array(getattr(skd, name)()))]


@dataclass
class PhotoSet:
    """Photos as ``(3, H, W)`` tensors in [-1, 1]; :meth:`crops` draws training/eval crops."""

    photos: list[torch.Tensor]
    names: list[str]
    source: str = ""
    split: str = ""

    def __post_init__(self):
        if not self.photos:
            raise ValueError(f"no photos in {self.source or 'this set'} ({self.split} split)")

    @property
    def min_side(self) -> int:
        return min(min(p.shape[-2:]) for p in self.photos)

    def crops(self, n: int, size: int, generator: torch.Generator, *, flip: bool = True,
              window: int | None = WINDOW) -> torch.Tensor:
        """``(n, 3, size, size)`` random multi-scale crops in [-1, 1] (see module doc)."""
        size = int(size)
        lo = max(size, int(window or 0))
        usable = [p for p in self.photos if min(p.shape[-2:]) >= lo]
        if not usable:
            raise ValueError(
                f"no photo in {self.source} is at least {lo} pixels on its short side "
                f"(smallest short side: {self.min_side}); use smaller crop sizes or a smaller "
                "window (--window)"
            )
        out = torch.empty(n, 3, size, size)
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        for i in range(n):
            p = usable[min(int(u[i, 0] * len(usable)), len(usable) - 1)]
            h, w = p.shape[-2:]
            hi = min(h, w)
            side = int(round(math.exp(math.log(lo) + float(u[i, 1]) * (math.log(hi) - math.log(lo)))))
            side = max(lo, min(side, h, w))
            y = int(u[i, 2] * (h - side + 1))
            x = int(u[i, 3] * (w - side + 1))
            win = p[:, y : y + side, x : x + side]
            if side != size:
                win = F.interpolate(win[None], size=(size, size), mode="bilinear",
                                    antialias=True, align_corners=False)[0]
            if flip and u[i, 4] < 0.5:
                win = win.flip(-1)
            out[i] = win
        return out.clamp_(-1, 1)


def load_photos(source: str | os.PathLike = "skimage", split: str = "train") -> PhotoSet:
    """Load the ``split`` ("train", "eval" or "all") of scikit-image's photos or of a folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if str(source) == "skimage":
        names = {"train": SKIMAGE_TRAIN, "eval": SKIMAGE_EVAL,
                 "all": SKIMAGE_TRAIN + SKIMAGE_EVAL}[split]
        photos, labels = [], []
        for nm in names:
            for k, ph in enumerate(_skimage_photo(nm)):
                photos.append(ph)
                labels.append(nm if k == 0 else f"{nm}_{k}")
        return PhotoSet(photos, labels, "skimage", split)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder} is not a folder of images")
    files = list_images(folder, recursive=True)
    if len(files) < 2:
        raise ValueError(
            f"{folder} holds {len(files)} image(s) ({', '.join(IMAGE_EXTENSIONS)}); need at least 2 "
            "so that one can be held out for evaluation"
        )
    held = set(files[EVAL_EVERY - 1 :: EVAL_EVERY]) or {files[-1]}
    chosen = {"train": [f for f in files if f not in held], "eval": [f for f in files if f in held],
              "all": files}[split]
    # read_image names an unreadable file in its ValueError
    photos = [_photo(read_image(f)) for f in chosen]
    return PhotoSet(photos, [f.name for f in chosen], str(folder), split)


def eval_crops(n: int, size: int, *, source="skimage", seed: int = 1234,
               window: int | None = WINDOW) -> torch.Tensor:
    """A fixed set of ``n`` held-out crops at ``size`` (the reference for quality metrics)."""
    g = torch.Generator().manual_seed(int(seed))
    return load_photos(source, "eval").crops(n, size, g, window=window)


def fit_spectrum(images: torch.Tensor) -> tuple[float, float]:
    """``(A, beta)`` of ``P(w) = A w**-beta`` fitted to the images' DCT RAPSD.

    Frequencies are in cycles per image (``specdiff.spectral.rapsd``), the
    units :func:`specdiff.plans.spd_plan` and ``optimal_plan`` expect; DC (the
    images' means) is not part of the fit (``rapsd`` leaves it out).
    """
    f, p = rapsd(images)
    return fit_power_law(f, p)


def fit_spectra(photos: PhotoSet, sizes: Sequence[int], *, n: int = 256, seed: int = 0,
                window: int | None = WINDOW) -> dict[str, list[float]]:
    """Spectrum fits on ``n`` crops per size: ``{"64": [A, beta], ...}`` (recorded in checkpoints)."""
    g = torch.Generator().manual_seed(seed)
    return {str(int(s)): list(fit_spectrum(photos.crops(n, int(s), g, window=window)))
            for s in sizes}
