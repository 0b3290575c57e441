"""Qwen-Image (``QwenImagePipeline``): packed 2x2 latents, ``img_shapes`` RoPE, true CFG
with the pipeline's norm rescale.

* Layout: VAE latents ``(B, 16, 1, h, w)`` (a one-frame video VAE) with
  ``h = 2 (H // 16)``; the transformer and the loop hold them packed as FLUX does,
  ``(B, (h/2)(w/2), 64)``. Our state drops the frame axis: ``(B, 16, h, w)``.
  ``latents=`` and ``output_type="latent"`` are packed; stage sides must be even.
* Schedule: ``sigmas = linspace(1, 1/N, N)`` with ``mu`` of the *full-resolution* token
  count (the pipeline computes it from the starting latents, which for SPD would be the
  coarse ones).
* Model call: ``timestep / 1000``; the positions are built by the transformer from
  ``img_shapes = [[(1, h/2, w/2)]] * batch`` of each stage's grid (native positions;
  ``"stretched"`` is not offered). True CFG (``true_cfg_scale > 1`` with a negative
  prompt) is a second call, combined as the pipeline does: ``neg + s (cond - neg)``
  rescaled per token to the conditional prediction's norm, in the packed layout.
* Spectrum: no published constants for its VAE; ``spectrum=None`` fits one on shipped
  photos once (:mod:`specdiff.integrations.auto_spectrum`, one-frame videos, per-channel
  ``latents_mean``/``latents_std`` normalisation).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Adapter, FolderLayout, full_resolution_mu, pack_2x2, unpack_2x2

__all__ = ["QwenImageAdapter", "ADAPTER"]


class QwenImageAdapter(Adapter):
    family = "Qwen-Image"
    pipeline_classes = ("QwenImagePipeline",)
    default_spectrum = None  # fitted on shipped photos (auto_spectrum)
    denoiser_attr = "transformer"
    callback_tensors = ("prompt_embeds",)
    packing = "Qwen-Image packs 2x2 latent patches into tokens"
    positions_supported = ("native",)

    @property
    def multiple(self) -> int:
        return int(self.pipe.transformer.config.patch_size)

    @classmethod
    def folder_layout(cls, config) -> FolderLayout:
        f = 2 ** len(config("vae").get("temperal_downsample", [False, True, True]))
        p = int(config("transformer").get("patch_size", 2))
        return FolderLayout(f, p, (128 * f, 128 * f), round_to_multiple=True)

    def prepare(self) -> None:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import retrieve_timesteps

        pipe, kw = self.pipe, self.kw
        height = kw["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = kw["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        self.height, self.width = height, width
        pipe.check_inputs(
            kw["prompt"], height, width, negative_prompt=kw["negative_prompt"],
            prompt_embeds=kw["prompt_embeds"], negative_prompt_embeds=kw["negative_prompt_embeds"],
            prompt_embeds_mask=kw["prompt_embeds_mask"],
            negative_prompt_embeds_mask=kw["negative_prompt_embeds_mask"],
            callback_on_step_end_tensor_inputs=kw["callback_on_step_end_tensor_inputs"],
            max_sequence_length=kw["max_sequence_length"])
        pipe._guidance_scale = kw["guidance_scale"]
        pipe._attention_kwargs = kw["attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False
        device = self.device = pipe._execution_device
        prompt = kw["prompt"]
        batch_size = self.batch_size()
        nipp = kw["num_images_per_prompt"]
        has_neg = kw["negative_prompt"] is not None or kw["negative_prompt_embeds"] is not None
        self.true_cfg = kw["true_cfg_scale"] > 1 and has_neg
        pe, pe_mask = pipe.encode_prompt(
            prompt=prompt, prompt_embeds=kw["prompt_embeds"],
            prompt_embeds_mask=kw["prompt_embeds_mask"], device=device,
            num_images_per_prompt=nipp, max_sequence_length=kw["max_sequence_length"])
        if self.true_cfg:
            self.neg, self.neg_mask = pipe.encode_prompt(
                prompt=kw["negative_prompt"], prompt_embeds=kw["negative_prompt_embeds"],
                prompt_embeds_mask=kw["negative_prompt_embeds_mask"], device=device,
                num_images_per_prompt=nipp, max_sequence_length=kw["max_sequence_length"])
        self.tensors = {"prompt_embeds": pe}
        self.pe_mask = pe_mask
        self.latent_dtype = pe.dtype
        self.prompts = batch_size  # img_shapes has one entry per prompt, as in the pipeline

        self.channels = pipe.transformer.config.in_channels // 4
        h = 2 * (int(height) // (pipe.vae_scale_factor * 2))
        w = 2 * (int(width) // (pipe.vae_scale_factor * 2))
        self.grid = (h, w)
        B = batch_size * nipp
        lat = kw["latents"]
        if lat is not None:
            want = (B, (h // 2) * (w // 2), self.channels * 4)
            if tuple(lat.shape) != want:
                raise ValueError(f"Qwen-Image latents= must be the packed full-resolution noise "
                                 f"of shape {want}; got {tuple(lat.shape)}")
            self.noise = self.unpack(lat.to(device=device, dtype=pe.dtype), self.grid).float()
        else:  # randn of (B, 1, C, h, w), which the pipeline then packs as (B, C, h, w)
            self.noise = self.draw_noise((B, 1, self.channels, h, w), pe.dtype).reshape(
                B, self.channels, h, w)

        n = kw["num_inference_steps"]
        sigmas = np.linspace(1.0, 1 / n, n) if kw["sigmas"] is None else kw["sigmas"]
        sched = self.fresh_scheduler()
        mu = full_resolution_mu(sched, (h // 2) * (w // 2))
        retrieve_timesteps(sched, n, device, sigmas=sigmas, mu=mu)
        self.set_schedule(sched)
        pipe._num_timesteps = self.num_steps
        if pipe.transformer.config.guidance_embeds:
            if kw["guidance_scale"] is None:
                raise ValueError("guidance_scale is required for guidance-distilled model.")
            self.guidance = torch.full([1], kw["guidance_scale"], device=device,
                                       dtype=torch.float32).expand(B)
        else:
            self.guidance = None
        if pipe.attention_kwargs is None:
            pipe._attention_kwargs = {}

    # --- layout (FLUX's packing) ---------------------------------------
    def pack(self, x):
        return pack_2x2(self.pipe, x)

    def unpack(self, latents, grid):
        return unpack_2x2(latents, grid)

    def check_grid(self, grid):
        if any(s % 2 for s in grid):
            raise ValueError(f"Qwen-Image needs even latent sides for its 2x2 packing, got {grid}")

    # --- the model -----------------------------------------------------
    def model_output(self, x_in, timestep, ev):
        pipe = self.pipe
        grid = tuple(x_in.shape[2:])
        packed = self.pack(x_in)
        shapes = [[(1, grid[0] // 2, grid[1] // 2)]] * self.prompts
        ts = (timestep.to(self.device).expand(packed.shape[0]).to(packed.dtype)) / 1000
        with self.cache_context("cond"):
            v = pipe.transformer(
                hidden_states=packed, timestep=ts, guidance=self.guidance,
                encoder_hidden_states_mask=self.pe_mask,
                encoder_hidden_states=self.tensors["prompt_embeds"], img_shapes=shapes,
                attention_kwargs=pipe.attention_kwargs, return_dict=False)[0]
        if self.true_cfg:
            with self.cache_context("uncond"):
                nv = pipe.transformer(
                    hidden_states=packed, timestep=ts, guidance=self.guidance,
                    encoder_hidden_states_mask=self.neg_mask, encoder_hidden_states=self.neg,
                    img_shapes=shapes, attention_kwargs=pipe.attention_kwargs,
                    return_dict=False)[0]
            comb = nv + self.kw["true_cfg_scale"] * (v - nv)
            v = comb * (torch.norm(v, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return self.unpack(v, grid)

    # --- output --------------------------------------------------------
    def decode(self, x):
        pipe = self.pipe
        latents = self.pack(x.to(self.latent_dtype))
        if self.kw["output_type"] == "latent":
            return latents
        latents = pipe._unpack_latents(latents, self.height, self.width, pipe.vae_scale_factor)
        latents = latents.to(pipe.vae.dtype)
        cfg = pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        latents = latents / inv_std + mean  # the pipeline's expression, bit for bit
        image = pipe.vae.decode(latents, return_dict=False)[0][:, :, 0]
        return pipe.image_processor.postprocess(image, output_type=self.kw["output_type"])

    def output_class(self):
        from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput

        return QwenImagePipelineOutput


ADAPTER = QwenImageAdapter
