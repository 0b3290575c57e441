"""Encode a folder of images with a local diffusers VAE, in the pipeline's normalised latent space.

``specdiff analyze --vae PATH --images DIR`` fits the power law ``P(w) = A w^-beta``
of these latents; the fit is the ``spectrum`` SPD needs for models without
published constants (SD3, SDXL, fine-tuned VAEs). The latents are normalised
the way the pipeline feeds them to its denoiser, because that is the space the
diffusion runs in:

* ``AutoencoderKL`` (FLUX, SD3, SDXL): ``(z - shift_factor) * scaling_factor``,
  or ``(z - latents_mean) * scaling_factor / latents_std`` when the config
  has per-channel statistics (the inverse of the SDXL pipeline's decode);
* ``AutoencoderKLWan`` (and other VAEs with ``latents_mean``/``latents_std`` and
  no ``scaling_factor``): ``(z - latents_mean) / latents_std`` per channel; images
  are encoded as one-frame videos.

``z`` is the posterior mean (``latent_dist.mode()``) by default: the spectrum
of the data, without the encoder's posterior noise, which would add a white
floor at high frequencies (``sample=True`` draws it instead, seeded).
"""

from __future__ import annotations

import json
import os

import torch

from ..images import IMAGE_EXTENSIONS, image_size, list_images, read_image

__all__ = ["encode_images", "encode_files", "load_vae", "normalise_latents", "spatial_factor"]


def _vae_folder(vae_path: str) -> str:
    if not os.path.exists(vae_path):
        raise FileNotFoundError(f"VAE folder not found: {vae_path}")
    for folder in (vae_path, os.path.join(vae_path, "vae")):
        cfg = os.path.join(folder, "config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as f:
                if "_class_name" in json.load(f):
                    return folder
    raise FileNotFoundError(
        f"{vae_path} holds no diffusers VAE: give the VAE folder (with config.json and weights) "
        "or a pipeline folder with a vae/ subfolder")


def load_vae(vae_path: str, device="cpu", dtype=torch.float32):
    """Load a local diffusers VAE (a VAE folder or a pipeline folder with ``vae/``)."""
    import diffusers

    folder = _vae_folder(vae_path)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        name = json.load(f)["_class_name"]
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "encode"):
        raise ValueError(f"{folder}: unknown VAE class {name!r} for this diffusers version")
    vae = cls.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return vae.to(device).eval()


def _is_video_vae(vae) -> bool:
    return type(vae).__name__ == "AutoencoderKLWan" or (
        getattr(vae.config, "z_dim", None) is not None
        and getattr(vae.config, "scaling_factor", None) is None)


def _is_patchified_vae(vae) -> bool:
    """FLUX.2's VAE: the pipeline patchifies its latents 2x2 and batch-normalises them."""
    return hasattr(vae, "bn") and hasattr(vae.config, "batch_norm_eps")


def normalise_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents ``(N, C, ...)`` -> the pipeline's normalised latent space (for FLUX.2's
    VAE ``(N, 4C, h/2, w/2)``: patchified 2x2, then its batch-norm statistics)."""
    cfg = vae.config
    if _is_patchified_vae(vae):
        n, c, h, w = z.shape
        z = z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(
            n, c * 4, h // 2, w // 2)  # Flux2Pipeline._patchify_latents
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + cfg.batch_norm_eps).to(z)
        return (z - mean) / std
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    shape = (1, -1) + (1,) * (z.ndim - 2)
    if _is_video_vae(vae):
        if mean is None or std is None:
            raise ValueError(f"{type(vae).__name__}: no latents_mean/latents_std in its config")
        return (z - torch.tensor(mean).view(shape).to(z)) / torch.tensor(std).view(shape).to(z)
    sf = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
    if mean is not None and std is not None:
        return (z - torch.tensor(mean).view(shape).to(z)) * sf / torch.tensor(std).view(shape).to(z)
    shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
    return (z - shift) * sf


def spatial_factor(vae) -> int:
    """Pixels per cell of the normalised latents of ``vae`` (its downsampling factor; twice
    that for FLUX.2's patchified latents)."""
    if _is_patchified_vae(vae):
        return 2 ** len(vae.config.block_out_channels)
    if _is_video_vae(vae):
        return 2 ** len(getattr(vae.config, "temperal_downsample", [0, 0, 0]))
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _list_images(images_dir: str) -> list[str]:
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    files = [str(f) for f in list_images(images_dir)]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    return files


def _load_square(path: str, side: int) -> torch.Tensor:
    """Centre square crop resized to ``side`` (Pillow's antialiased bicubic on the stored
    pixels), as ``(3, side, side)`` in [-1, 1]; grey images are repeated over RGB."""
    x = read_image(path, square=side)
    return (x.expand(3, -1, -1) if x.shape[0] == 1 else x) * 2 - 1


def encode_images(vae_path: str, images_dir: str, *, size: int | None = None, device="cpu",
                  max_images: int | None = None, batch_size: int = 4,
                  sample: bool = False, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Encode the images in ``images_dir`` with the VAE at ``vae_path``.

    Args:
        vae_path: local VAE folder, or a pipeline folder with a ``vae/`` subfolder.
        images_dir: folder of images (png, jpg, webp, ...), read in name order.
        size: centre-crop each image to a square and resize it to ``size`` pixels
            (default: the smallest side seen, at most 512), rounded down to a
            multiple of the VAE's downsampling factor. Fit the spectrum at the
            resolution you generate at: DCT power at a given frequency in cycles
            per image scales with the number of latent elements.
        device: where the VAE runs.
        max_images: use at most this many images (the first ones by name).
        sample: draw ``z`` from the posterior (seeded with ``seed``) instead of its mean.

    Returns:
        ``(N, C, h, w)`` float32 latents on the CPU, normalised as the pipeline's
        denoiser sees them.
    """
    files = _list_images(images_dir)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        files = files[:max_images]
    vae = load_vae(vae_path, device=device)
    f = spatial_factor(vae)
    if size is None:
        smallest = min(min(image_size(p)) for p in files)
        size = min(512, smallest)
    side = (int(size) // f) * f
    if side < f:
        raise ValueError(f"size {size} is smaller than the VAE's downsampling factor {f}")
    return encode_files(vae, files, side, batch_size=batch_size, sample=sample, seed=seed,
                        progress=progress)


def encode_files(vae, files, side: int, *, batch_size: int = 4, sample: bool = False,
                 seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Encode image ``files`` (centre squares resized to ``side`` pixels, a multiple of the
    VAE's factor) with a loaded ``vae``, on its device and in its dtype.

    Returns ``(N, C, side / f, side / f)`` float32 latents on the CPU, normalised as the
    pipeline's denoiser sees them (posterior mean, or a seeded draw with ``sample``).
    """
    from tqdm.auto import tqdm

    param = next(vae.parameters())
    video = _is_video_vae(vae)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(files), batch_size), disable=not progress, desc="encoding"):
            x = torch.stack([_load_square(p, side) for p in files[i:i + batch_size]])
            x = x.to(device=param.device, dtype=param.dtype)
            if video:
                x = x.unsqueeze(2)  # (B, 3, 1, H, W): one-frame videos
            dist = vae.encode(x).latent_dist
            if sample:
                eps = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
                z = dist.mean + dist.std * eps
            else:
                z = dist.mode()
            z = normalise_latents(vae, z.float())
            if video:
                z = z[:, :, 0]
            out.append(z.cpu())
    return torch.cat(out)
