"""Wan 2.1 image-to-video (``WanImageToVideoPipeline``): Wan's text-to-video adapter plus the
first-frame conditioning, which follows each stage's grid.

Everything of :mod:`.wan` holds (UniPC, CFG as two calls, positions); on top, as the
pipeline does it after drawing the noise:

* ``image`` (and optionally ``last_image``) is preprocessed to ``height x width``, put in
  frame 0 (and the last frame) of an otherwise black video, encoded with the posterior mode
  and normalised with ``latents_mean``/``latents_std``: the latent condition ``(B, 16, F,
  h, w)``. A mask marks the given frames, ``(B, 4, F, h, w)`` (the VAE's 4 frames per latent
  frame). The transformer sees ``cat([x, mask, condition], channels)``, and, when it has an
  image projection (``image_dim``), the CLIP embedding of the image (``image_embeds=``, or
  the pipeline's ``encode_image``).
* In a coarse stage the condition must live on the stage's grid: the mask is constant over
  space, so any resize keeps it exact (it is taken at the stage size); the latent condition
  is a clean image latent, resized per frame with the band-limited DCT resize (the same
  transform as the state). Without that the channel concatenation would not even have
  matching shapes.
* Wan 2.2 (``expand_timesteps``, two transformers with ``boundary_ratio``) is refused, as
  for text-to-video.
"""

from __future__ import annotations

import torch

from ...spectral import resize
from .wan import WanAdapter

__all__ = ["WanI2VAdapter", "ADAPTER"]


class WanI2VAdapter(WanAdapter):
    family = "Wan I2V"
    pipeline_classes = ("WanImageToVideoPipeline",)

    def check_pipeline_inputs(self, height, width) -> None:
        kw = self.kw
        self.pipe.check_inputs(kw["prompt"], kw["negative_prompt"], kw["image"], height, width,
                               kw["prompt_embeds"], kw["negative_prompt_embeds"],
                               kw["image_embeds"], kw["callback_on_step_end_tensor_inputs"],
                               kw["guidance_scale_2"])

    def noise_channels(self) -> int:
        return int(self.pipe.vae.config.z_dim)

    def prepare_condition(self, height, width, num_frames, batch) -> None:
        from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe, kw = self.pipe, self.kw
        n_prompts = self.batch_size()
        image, last = kw["image"], kw["last_image"]
        embeds = kw["image_embeds"]
        if pipe.transformer.config.image_dim is not None:
            if embeds is None:
                embeds = pipe.encode_image(image if last is None else [image, last], self.device)
            embeds = embeds.repeat(n_prompts, 1, 1).to(self.model_dtype)
        self.image_embeds = embeds
        self._conditions: dict = {}
        if self.dry:
            self.condition = None
            return
        image = pipe.video_processor.preprocess(image, height=height, width=width).to(
            self.device, dtype=torch.float32).unsqueeze(2)
        frames = [image, image.new_zeros(image.shape[0], image.shape[1],
                                         num_frames - (1 if last is None else 2), height, width)]
        if last is not None:
            frames.append(pipe.video_processor.preprocess(last, height=height, width=width).to(
                self.device, dtype=torch.float32).unsqueeze(2))
        video = torch.cat(frames, dim=2).to(device=get_module_execution_device(pipe.vae),
                                            dtype=pipe.vae.dtype)
        vae = pipe.vae
        gen = kw.get("generator")
        if isinstance(gen, list):
            cond = torch.cat([retrieve_latents(vae.encode(video), sample_mode="argmax")
                              for _ in gen])
        else:
            cond = retrieve_latents(vae.encode(video), sample_mode="argmax").repeat(batch, 1, 1, 1, 1)
        cond = cond.to(device=self.device, dtype=torch.float32)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(cond)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(cond)
        cond = (cond - mean) * inv_std
        F, h, w = self.grid
        tsf = pipe.vae_scale_factor_temporal
        mask = torch.ones(batch, 1, num_frames, h, w)
        mask[:, :, 1:num_frames if last is None else num_frames - 1] = 0
        first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=tsf)
        mask = torch.cat([first, mask[:, :, 1:]], dim=2).view(batch, -1, tsf, h, w).transpose(1, 2)
        self.mask = mask.to(cond.device)  # (B, 4, F, h, w)
        self.condition = cond  # (B, 16, F, h, w)

    def condition_at(self, grid) -> torch.Tensor:
        """``cat([mask, condition])`` on ``grid`` (full size, or resized for a coarse stage)."""
        hit = self._conditions.get(tuple(grid))
        if hit is None:
            if tuple(grid) == tuple(self.grid):
                mask, cond = self.mask, self.condition
            else:
                # the mask is constant over space: its value at any one position is exact
                mask = self.mask[..., :1, :1].expand(*self.mask.shape[:3], *grid[-2:])
                cond = resize(self.condition, 0.0, tuple(grid))[0]  # clean latent (t = 0)
            hit = self._conditions[tuple(grid)] = torch.cat([mask, cond], dim=1)
        return hit

    def model_inputs(self, x_in):
        cond = self.condition_at(tuple(x_in.shape[2:]))
        lmi = torch.cat([x_in, cond.to(x_in.dtype)], dim=1).to(self.model_dtype)
        return lmi, {"encoder_hidden_states_image": self.image_embeds}


ADAPTER = WanI2VAdapter
