"""Image files in and out: the one reader, the one list of extensions, PNG output.

Reading (:func:`read_image`): Pillow decodes the file; the result is a
``(C, H, W)`` float tensor in ``[0, 1]`` with ``C = 1`` for grey images and
``C = 3`` for colour ones. That is the one normalisation: integer pixels are
divided by their type's maximum (255 for 8-bit, 65535 for 16-bit), an alpha
channel is dropped (not composited), palette and CMYK/YCbCr images are
converted to RGB, and float images are taken as stored (they must lie in
``[0, 1]``). Consumers that work in the diffusion range convert explicitly
with ``2 * x - 1``.

Writing: :func:`save_png` takes ``(C, H, W)`` in about ``[-1, 1]`` (the samplers'
range; samples are not clamped, 8 of the UNet reach -1.26 and 1.23), clamps it to
``[-1, 1]`` and writes an 8-bit PNG atomically; :func:`image_grid` lays batches
out as rows.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write_bytes

__all__ = ["IMAGE_EXTENSIONS", "list_images", "image_size", "read_image", "from_array",
           "to_uint8", "save_png", "image_grid"]

#: File suffixes read as images (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Pillow modes -> the mode decoded pixels are brought to before anything else. Alpha goes
# first: Pillow premultiplies alpha when it resizes RGBA, so dropping it later would change
# the colours of a resized image.
_TO_MODE = {"1": "L", "L": "L", "LA": "L", "La": "L", "P": "RGB", "PA": "RGB", "RGB": "RGB",
            "RGBA": "RGB", "RGBa": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB",
            "LAB": "RGB", "HSV": "RGB", "I;16": "I;16", "I;16L": "I;16", "I;16B": "I;16",
            "I;16N": "I;16", "F": "F"}


def list_images(folder: str | os.PathLike, *, recursive: bool = False,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files in ``folder`` (sub-folders too with ``recursive``), sorted by path.

    A file counts when its suffix, lower-cased, is in ``extensions``. Raises
    ``FileNotFoundError`` when ``folder`` is not a folder; an empty list is
    returned as is (each caller says how many it needs).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    exts = tuple(e.lower() for e in extensions)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.suffix.lower() in exts and p.is_file())


def _open(path) -> object:
    from PIL import Image

    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise ValueError(f"cannot read image {path}: {e}") from None
    return im


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header (no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise ValueError(f"cannot read image {path}: {e}") from None
    return int(h), int(w)


def _normalised_mode(im, path):
    target = _TO_MODE.get(im.mode)
    if target is None:
        raise ValueError(f"image {path} has Pillow mode {im.mode!r}, which specdiff does not "
                         "read; save it as 8- or 16-bit grey or RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the palette's transparent entry, then drop alpha below
    if im.mode.startswith("I;16"):
        return im  # Pillow resizes the 16-bit modes as they are
    return im if im.mode == target else im.convert(target)


def _centre_square(im, side: int):
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s))
    if s != side:
        # Pillow's bicubic widens its support when shrinking (antialiased)
        im = im.resize((side, side), Image.BICUBIC)
    return im


def read_image(path: str | os.PathLike, *, square: int | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An image file as a ``(C, H, W)`` tensor in ``[0, 1]`` (``C`` = 1 grey, 3 colour).

    ``square``: centre-crop the largest square and resize it to
    ``square x square`` (Pillow bicubic, antialiased when shrinking) on the
    stored pixels, before the scaling to ``[0, 1]``, so 8-bit images are
    resized as 8-bit images, as PIL-based pipelines do. ``dtype``: the
    scaling is computed in float64 and then cast (float32 results equal a
    float32 division; float64 keeps full precision). Unreadable files raise
    ``ValueError`` naming the file.
    """
    im = _normalised_mode(_open(path), path)
    if square is not None:
        if int(square) < 1:
            raise ValueError(f"square must be a positive side in pixels, got {square}")
        im = _centre_square(im, int(square))
    return from_array(np.asarray(im), dtype=dtype, what=f"image {path}")


def from_array(a, *, dtype: torch.dtype = torch.float32, what: str = "image") -> torch.Tensor:
    """An ``(H, W)`` or ``(H, W, C)`` pixel array -> ``(C, H, W)`` in ``[0, 1]``.

    Integers are divided by their type's maximum, booleans map to 0/1, floats
    are kept (and must lie in ``[0, 1]``). One channel stays grey; two (grey
    and alpha) keep the grey; three stay; four (RGBA) drop alpha.
    """
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"{what}: expected an H x W or H x W x C array with 1 to 4 channels, "
                         f"got shape {a.shape}")
    a = a[..., :1] if a.shape[2] == 2 else a[..., :3]
    if a.dtype == bool:
        x = a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.integer):
        x = a.astype(np.float64) / float(np.iinfo(a.dtype).max)
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float64)
        if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise ValueError(f"{what}: float pixels must lie in [0, 1] (got "
                             f"{np.nanmin(x):.4g} to {np.nanmax(x):.4g}); rescale it or save it "
                             "as 8- or 16-bit")
    else:
        raise ValueError(f"{what}: pixel type {a.dtype} is not an image type")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(dtype)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, H, W, C)`` uint8 (clamped, rounded)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(path: str | os.PathLike, img: torch.Tensor) -> None:
    """``(C, H, W)`` in about [-1, 1] -> an 8-bit PNG (clamped to [-1, 1]; grey for one
    channel), written atomically."""
    from PIL import Image

    arr = to_uint8(img[None])[0]
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def image_grid(rows: Sequence[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Equal-size batches ``(k, C, H, W)`` as the rows of one ``(C, H', W')`` image in
    [-1, 1] (white padding; shorter rows are left-aligned)."""
    k = max(r.shape[0] for r in rows)
    c, h, w = rows[0].shape[1:]
    out = torch.ones(c, len(rows) * (h + pad) + pad, k * (w + pad) + pad)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[:, y : y + h, x : x + w] = r[j].clamp(-1, 1)
    return out
