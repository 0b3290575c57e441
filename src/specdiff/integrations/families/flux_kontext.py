"""FLUX.1 Kontext (``FluxKontextPipeline``): FLUX with a reference image's tokens appended.

Everything of :mod:`.flux` holds (packing, schedule with mu of the full-resolution target
tokens, guidance, true CFG, positions); on top, as the pipeline does:

* Size: ``height x width`` is rescaled to ``max_area`` at its aspect ratio and rounded
  down to multiples of 16 before anything else (so a 128^2 request with the default
  ``max_area = 1024^2`` generates 1024^2).
* Reference: ``image`` (or its latents, when it has the VAE's channel count) is resized
  to the preferred Kontext resolution nearest its aspect ratio (``_auto_resize``),
  encoded with the posterior mode (no generator draw), normalised, packed, and appended
  to the sequence with ids ``[1, row, col]``; the model's output for those tokens is
  dropped. The noise is drawn after the encoding, from the same generator, as in
  ``prepare_latents``.

Which resolution the reference tokens take in a coarse stage (``reference=``):

* ``"full"`` (default): the reference stays at its own resolution in every stage. It is
  a clean image, not noise: the time-dependent argument for a coarse grid (its high
  frequencies are still noise-dominated) does not apply to it, and the edit must copy
  its detail. The coarse stages then save only on the target's tokens.
* ``"stage"``: the reference latents are resized with the stage's scale (DCT, the same
  band-limited resize as the target), with ids of that grid. Cheaper coarse stages, but
  the coarse target attends to a blurred reference at a position layout the model saw
  only with a small reference. ``benchmarks/kontext_reference.py`` measures both.
"""

from __future__ import annotations

import torch

from ...spectral import resize
from .flux import FluxAdapter

__all__ = ["FluxKontextAdapter", "ADAPTER"]


class FluxKontextAdapter(FluxAdapter):
    family = "FLUX Kontext"
    pipeline_classes = ("FluxKontextPipeline",)
    reference_modes = ("full", "stage")

    @classmethod
    def folder_layout(cls, config):
        return None  # the size is rescaled to max_area at call time: checked after loading

    def prepare(self) -> None:
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        pipe, kw = self.pipe, self.kw
        height = kw["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = kw["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        aspect = width / height
        multiple_of = pipe.vae_scale_factor * 2
        kw["width"] = round((kw["max_area"] * aspect) ** 0.5) // multiple_of * multiple_of
        kw["height"] = round((kw["max_area"] / aspect) ** 0.5) // multiple_of * multiple_of
        image = kw["image"]
        self.ref = self.ref_ids = None
        self._refs: dict = {}
        latent_channels = getattr(pipe, "latent_channels", 16)
        if image is not None and not (isinstance(image, torch.Tensor)
                                      and image.size(1) == latent_channels):
            img = image[0] if isinstance(image, list) else image
            ih, iw = pipe.image_processor.get_default_height_width(img)
            if kw["_auto_resize"]:
                _, iw, ih = min((abs(iw / ih - w / h), w, h)
                                for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
            iw, ih = iw // multiple_of * multiple_of, ih // multiple_of * multiple_of
            image = pipe.image_processor.resize(image, ih, iw)
            image = pipe.image_processor.preprocess(image, ih, iw)
        self._image = image
        super().prepare()  # FLUX's preamble, noise and schedule for the adjusted size
        if self._image is not None and self.ref is None and not self.dry:  # latents= given
            self._encode_reference(self.batch, self.latent_dtype)

    def draw_noise(self, shape, dtype):
        # prepare_latents encodes the reference before drawing the noise (its posterior
        # mode draws nothing, so the order only matters for a sampled encoding)
        if self._image is not None and self.ref is None and not self.dry:
            self._encode_reference(shape[0], dtype)
        return super().draw_noise(shape, dtype)

    def _encode_reference(self, batch: int, dtype) -> None:
        pipe = self.pipe
        image = self._image.to(device=self.device, dtype=dtype)
        if image.shape[1] != getattr(pipe, "latent_channels", 16):
            lat = pipe._encode_vae_image(image=image, generator=self.kw.get("generator"))
        else:
            lat = image
        if batch > lat.shape[0]:
            if batch % lat.shape[0]:
                raise ValueError(f"Cannot duplicate `image` of batch size {lat.shape[0]} to "
                                 f"{batch} text prompts.")
            lat = torch.cat([lat] * (batch // lat.shape[0]), dim=0)
        self.ref = lat  # (B, 16, H, W) normalised latents, our layout

    def _reference_tokens(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = ref.shape
        ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.latent_dtype)
        ids[..., 0] = 1
        return self.pipe._pack_latents(ref, b, c, h, w), ids

    def extra_tokens(self, grid):
        if self.ref is None:
            return None, None
        key = tuple(grid) if self.reference == "stage" else "full"
        hit = self._refs.get(key)
        if hit is None:
            ref = self.ref
            if self.reference == "stage" and tuple(grid) != tuple(self.grid):
                r = grid[-1] / self.grid[-1]
                side = [max(2, 2 * round(s * r / 2)) for s in ref.shape[-2:]]
                # a clean image (t = 0): the band-limited DCT resize, no noise to add
                ref = resize(ref.float(), 0.0, tuple(side))[0].to(self.ref.dtype)
            hit = self._refs[key] = self._reference_tokens(ref)
        return hit

    def output_class(self):
        from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

        return FluxPipelineOutput


ADAPTER = FluxKontextAdapter
