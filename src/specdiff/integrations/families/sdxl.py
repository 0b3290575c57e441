"""SDXL (``StableDiffusionXLPipeline``): a VP eps/v UNet, converted to the flow frame at the boundary.

* Frame: the pipeline's loop holds the VE state ``x_ve = x0 + s eps``; our
  state is the flow state ``x = x_ve / (1 + s)`` at ``t = s / (1 + s)``. The
  UNet sees ``x_ve / sqrt(1 + s^2)`` (``scale_model_input``) and its eps (or v)
  output becomes ``x0`` (DESIGN.md section 2). Euler in the flow frame is
  exactly the pipeline's Euler in sigma (both are DDIM), so ``scales=(1.0,)``
  reproduces ``pipe(...)``.
* Start: the pipeline multiplies the unit noise (drawn or ``latents=``) by
  ``init_noise_sigma``, i.e. the flow state starts at
  ``c = init_noise_sigma / (1 + sigma_max)`` times the noise (for "leading"
  spacing ``c^2 = t0^2 + (1 - t0)^2``, not ``t0``). Only the first stage's band is
  scaled; expansions still fill new bins with exactly ``t * noise``.
* Schedule: the pipeline's scheduler, ``set_timesteps`` as the pipeline calls
  it (``timesteps=``/``sigmas=`` honoured); the noise schedule does not depend on
  the resolution. The shifted entry time after a transition maps to a
  fractional training timestep (log-sigma interpolation).
* Conditioning: ``add_time_ids`` (original/crop/target size in pixels) stay
  those of the full-resolution call in every stage, as the pipeline builds
  them once per call: every stage is told the same target image.
* Positions: none (convolutions + cross-attention). Stage sides must be
  multiples of ``2 ** (number of downsamplers)`` so the UNet's skips line up.
"""

from __future__ import annotations

import torch

from .base import Adapter, FolderLayout, unsupported, vae_factor_from_config

__all__ = ["SDXLAdapter", "ADAPTER"]


class SDXLAdapter(Adapter):
    family = "SDXL"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    default_spectrum = None  # no published constants for the SDXL VAE: fit with `specdiff analyze`
    denoiser_attr = "unet"
    callback_tensors = ("prompt_embeds", "add_text_embeds", "add_time_ids")
    packing = "the UNet halves the latent at each of its downsamplers"
    positions_supported = ("native", "stretched")  # no positions: both are the same

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)

    @classmethod
    def folder_layout(cls, config) -> FolderLayout | None:
        f, unet = vae_factor_from_config(config("vae")), config("unet")
        if not unet.get("block_out_channels"):
            return None
        side = int(unet.get("sample_size", 128)) * f
        return FolderLayout(f, 2 ** (len(unet["block_out_channels"]) - 1), (side, side))

    def prepare(self) -> None:
        from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
            retrieve_timesteps,
        )

        pipe, kw = self.pipe, self.kw
        unsupported(kw, {"ip_adapter_image": None, "ip_adapter_image_embeds": None,
                         "denoising_end": None}, self.family)
        height = kw["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = kw["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        original_size = kw["original_size"] or (height, width)
        target_size = kw["target_size"] or (height, width)
        pipe.check_inputs(
            kw["prompt"], kw["prompt_2"], height, width, None, kw["negative_prompt"],
            kw["negative_prompt_2"], kw["prompt_embeds"], kw["negative_prompt_embeds"],
            kw["pooled_prompt_embeds"], kw["negative_pooled_prompt_embeds"], None, None,
            kw["callback_on_step_end_tensor_inputs"])
        pipe._guidance_scale = kw["guidance_scale"]
        pipe._guidance_rescale = kw["guidance_rescale"]
        pipe._clip_skip = kw["clip_skip"]
        pipe._cross_attention_kwargs = kw["cross_attention_kwargs"]
        pipe._denoising_end = None
        pipe._interrupt = False

        prompt = kw["prompt"]
        batch_size = self.batch_size()
        device = self.device = pipe._execution_device
        cak = pipe.cross_attention_kwargs
        lora_scale = cak.get("scale", None) if cak is not None else None
        nipp = kw["num_images_per_prompt"]
        pe, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=kw["prompt_2"], device=device, num_images_per_prompt=nipp,
            do_classifier_free_guidance=pipe.do_classifier_free_guidance,
            negative_prompt=kw["negative_prompt"], negative_prompt_2=kw["negative_prompt_2"],
            prompt_embeds=kw["prompt_embeds"], negative_prompt_embeds=kw["negative_prompt_embeds"],
            pooled_prompt_embeds=kw["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=kw["negative_pooled_prompt_embeds"],
            lora_scale=lora_scale, clip_skip=pipe.clip_skip)

        sched = self.fresh_scheduler()
        retrieve_timesteps(sched, kw["num_inference_steps"], device, kw["timesteps"], kw["sigmas"])
        self.set_schedule(sched)

        C = pipe.unet.config.in_channels
        h, w = int(height) // pipe.vae_scale_factor, int(width) // pipe.vae_scale_factor
        self.grid = (h, w)
        B = batch_size * nipp
        lat = kw["latents"]
        if lat is not None:
            if tuple(lat.shape) != (B, C, h, w):
                raise ValueError(f"SDXL latents= must be the full-resolution unit noise of shape "
                                 f"{(B, C, h, w)} (the pipeline scales it by init_noise_sigma); "
                                 f"got {tuple(lat.shape)}")
            self.noise = lat.to(device).float()
        else:
            self.noise = self.draw_noise((B, C, h, w), pe.dtype)
        sigma_max = float(sched.sigmas[0])
        self.start_scale = float(sched.init_noise_sigma) / (1.0 + sigma_max)
        self.latent_dtype = pe.dtype

        add_text_embeds = pooled
        if pipe.text_encoder_2 is None:
            proj_dim = int(pooled.shape[-1])
        else:
            proj_dim = pipe.text_encoder_2.config.projection_dim
        add_time_ids = pipe._get_add_time_ids(original_size, kw["crops_coords_top_left"],
                                              target_size, dtype=pe.dtype,
                                              text_encoder_projection_dim=proj_dim)
        if kw["negative_original_size"] is not None and kw["negative_target_size"] is not None:
            neg_time_ids = pipe._get_add_time_ids(
                kw["negative_original_size"], kw["negative_crops_coords_top_left"],
                kw["negative_target_size"], dtype=pe.dtype, text_encoder_projection_dim=proj_dim)
        else:
            neg_time_ids = add_time_ids
        if pipe.do_classifier_free_guidance:
            pe = torch.cat([neg, pe], dim=0)
            add_text_embeds = torch.cat([neg_pooled, add_text_embeds], dim=0)
            add_time_ids = torch.cat([neg_time_ids, add_time_ids], dim=0)
        self.tensors = {
            "prompt_embeds": pe.to(device),
            "add_text_embeds": add_text_embeds.to(device),
            "add_time_ids": add_time_ids.to(device).repeat(B, 1),
        }
        self.timestep_cond = None
        if pipe.unet.config.time_cond_proj_dim is not None:
            g = torch.tensor(pipe.guidance_scale - 1).repeat(B)
            self.timestep_cond = pipe.get_guidance_scale_embedding(
                g, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=device,
                                                                         dtype=pe.dtype)
        pipe._num_timesteps = self.num_steps

    def check_grid(self, grid):
        m = self.multiple
        if any(s % m for s in grid):
            raise ValueError(f"SDXL's UNet needs latent sides divisible by {m}, got {grid}")

    def model_output(self, x_in, timestep, ev):
        from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
            rescale_noise_cfg,
        )

        pipe = self.pipe
        cfg = pipe.do_classifier_free_guidance
        lmi = torch.cat([x_in] * 2) if cfg else x_in
        added = {"text_embeds": self.tensors["add_text_embeds"],
                 "time_ids": self.tensors["add_time_ids"]}
        out = pipe.unet(lmi, timestep.to(self.device),
                        encoder_hidden_states=self.tensors["prompt_embeds"],
                        timestep_cond=self.timestep_cond,
                        cross_attention_kwargs=pipe.cross_attention_kwargs,
                        added_cond_kwargs=added, return_dict=False)[0]
        if cfg:
            uncond, text = out.chunk(2)
            out = uncond + pipe.guidance_scale * (text - uncond)
            if pipe.guidance_rescale > 0.0:
                out = rescale_noise_cfg(out, text, guidance_rescale=pipe.guidance_rescale)
        return out

    def decode(self, x):
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.pipe
        latents = x.to(self.latent_dtype)
        if self.kw["output_type"] == "latent":
            return latents
        vae = pipe.vae
        needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
        if needs_upcasting:
            vae.to(dtype=torch.float32)
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        has_mean = getattr(vae.config, "latents_mean", None) is not None
        has_std = getattr(vae.config, "latents_std", None) is not None
        if has_mean and has_std:
            mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1).to(latents)
            std = torch.tensor(vae.config.latents_std).view(1, 4, 1, 1).to(latents)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        latents = latents.to(get_module_execution_device(vae))
        image = vae.decode(latents, return_dict=False)[0]
        if needs_upcasting:
            vae.to(dtype=torch.float16)
        if pipe.watermark is not None:
            image = pipe.watermark.apply_watermark(image)
        return pipe.image_processor.postprocess(image, output_type=self.kw["output_type"])

    def output_class(self):
        from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

        return StableDiffusionXLPipelineOutput

ADAPTER = SDXLAdapter
