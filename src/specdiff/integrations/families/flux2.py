"""FLUX.2 (``Flux2Pipeline``): diffusion on patchified, batch-normalised VAE latents.

* Frame: the pipeline draws its noise as ``(B, 128, H/16, W/16)``: the VAE's 32 latent
  channels space-to-depth patchified 2x2 and normalised by the VAE's batch-norm running
  statistics, one token per position. SPD runs on that token grid (``multiple = 1``): a
  coarse stage is a coarser grid of 128-channel tokens, and the spectrum is fitted in the
  same frame (encode, patchify, batch-norm: ``vae_spectrum.normalise_latents``).
  ``latents=`` and ``output_type="latent"`` are the packed ``(B, HW, 128)`` tokens.
* Schedule: ``sigmas = linspace(1, 1/N, N)`` with ``mu = compute_empirical_mu`` of the
  *full-resolution* token count and ``N``.
* Model call: ``timestep / 1000``, the guidance embedding, 4-axis ids ``(t, row, col, l)``
  built per stage grid (native positions); no CFG.
* Reference images (``image=``, editing): their tokens are appended at their own
  resolution in every stage, with the pipeline's ids, and the model's output for them is
  dropped (see FLUX.1 Kontext for why the reference stays at full resolution).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Adapter, FolderLayout, vae_factor_from_config

__all__ = ["Flux2Adapter", "ADAPTER"]


class Flux2Adapter(Adapter):
    family = "FLUX.2"
    pipeline_classes = ("Flux2Pipeline",)
    default_spectrum = None  # no published constants for the FLUX.2 VAE: fitted
    denoiser_attr = "transformer"
    callback_tensors = ("prompt_embeds",)
    packing = "FLUX.2's latents are 2x2-patchified tokens"
    positions_supported = ("native",)

    @property
    def multiple(self) -> int:
        return 1

    @property
    def pixels_per_cell(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2  # a token is a 2x2 patch of latents

    @classmethod
    def folder_layout(cls, config) -> FolderLayout:
        # pixels per token: the VAE factor times the 2x2 patchify
        f = vae_factor_from_config(config("vae")) * 2
        return FolderLayout(f, 1, (64 * f, 64 * f))

    def prepare(self) -> None:
        from diffusers.pipelines.flux2.pipeline_flux2 import (
            compute_empirical_mu,
            retrieve_timesteps,
        )

        pipe, kw = self.pipe, self.kw
        if kw["caption_upsample_temperature"]:
            raise ValueError("FLUX.2: caption_upsample_temperature is not supported by "
                             "SpectralPipeline; call the pipeline itself for it")
        pipe.check_inputs(prompt=kw["prompt"], height=kw["height"], width=kw["width"],
                          prompt_embeds=kw["prompt_embeds"],
                          callback_on_step_end_tensor_inputs=kw["callback_on_step_end_tensor_inputs"])
        pipe._guidance_scale = kw["guidance_scale"]
        pipe._attention_kwargs = kw["attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False
        device = self.device = pipe._execution_device
        batch_size = self.batch_size()
        nipp = kw["num_images_per_prompt"]
        pe, text_ids = pipe.encode_prompt(
            prompt=kw["prompt"], prompt_embeds=kw["prompt_embeds"], device=device,
            num_images_per_prompt=nipp, max_sequence_length=kw["max_sequence_length"],
            text_encoder_out_layers=kw["text_encoder_out_layers"])
        self.tensors = {"prompt_embeds": pe}
        self.text_ids = text_ids
        self.latent_dtype = pe.dtype

        height, width = kw["height"], kw["width"]
        images = kw["image"]
        conditions = None
        if images is not None:
            images = images if isinstance(images, list) else [images]
            conditions = []
            for img in images:  # the pipeline's preprocessing, image by image
                pipe.image_processor.check_image_input(img)
                iw, ih = img.size
                if iw * ih > 1024 * 1024:
                    img = pipe.image_processor._resize_to_target_area(img, 1024 * 1024)
                    iw, ih = img.size
                m = pipe.vae_scale_factor * 2
                iw, ih = iw // m * m, ih // m * m
                conditions.append(pipe.image_processor.preprocess(img, height=ih, width=iw,
                                                                  resize_mode="crop"))
                height, width = height or ih, width or iw
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        self.height, self.width = height, width

        self.channels = pipe.transformer.config.in_channels
        h = int(height) // (pipe.vae_scale_factor * 2)
        w = int(width) // (pipe.vae_scale_factor * 2)
        self.grid = (h, w)
        B = self.batch = batch_size * nipp
        lat = kw["latents"]
        if lat is not None:
            want = (B, self.channels, h, w)
            if tuple(lat.shape) != want:
                raise ValueError(f"FLUX.2 latents= must be the full-resolution noise of shape "
                                 f"{want} (patchified latents); got {tuple(lat.shape)}")
            self.noise = lat.to(device=device, dtype=pe.dtype).float()
        else:
            self.noise = self.draw_noise((B, self.channels, h, w), pe.dtype)
        self.ref = self.ref_ids = None
        if conditions is not None and not self.dry:
            self.ref, self.ref_ids = pipe.prepare_image_latents(
                images=conditions, batch_size=B, generator=kw.get("generator"), device=device,
                dtype=pipe.vae.dtype)

        n = kw["num_inference_steps"]
        sigmas = np.linspace(1.0, 1 / n, n) if kw["sigmas"] is None else kw["sigmas"]
        sched = self.fresh_scheduler()
        if getattr(sched.config, "use_flow_sigmas", False):
            sigmas = None
        mu = compute_empirical_mu(image_seq_len=h * w, num_steps=n)  # full-resolution tokens
        retrieve_timesteps(sched, n, device, sigmas=sigmas, mu=mu)
        self.set_schedule(sched)
        pipe._num_timesteps = self.num_steps
        self.guidance = torch.full([1], kw["guidance_scale"], device=device,
                                   dtype=torch.float32).expand(B)
        self._ids: dict = {}

    # --- layout: tokens in row-major order -------------------------------
    def pack(self, x):
        return self.pipe._pack_latents(x)

    def unpack(self, latents, grid):
        b, _, c = latents.shape
        return latents.permute(0, 2, 1).reshape(b, c, *grid)

    def ids(self, x):
        grid = tuple(x.shape[2:])
        hit = self._ids.get(grid)
        if hit is None:
            hit = self._ids[grid] = self.pipe._prepare_latent_ids(x).to(self.device)
        return hit

    # --- the model -----------------------------------------------------
    def model_output(self, x_in, timestep, ev):
        pipe = self.pipe
        grid = tuple(x_in.shape[2:])
        packed = self.pack(x_in)
        ids = self.ids(x_in)
        hidden = packed.to(pipe.transformer.dtype)
        if self.ref is not None:
            hidden = torch.cat([packed, self.ref], dim=1).to(pipe.transformer.dtype)
            ids = torch.cat([ids, self.ref_ids], dim=1)
        ts = timestep.to(self.device).expand(packed.shape[0]).to(packed.dtype)
        v = pipe.transformer(
            hidden_states=hidden, timestep=ts / 1000, guidance=self.guidance,
            encoder_hidden_states=self.tensors["prompt_embeds"], txt_ids=self.text_ids,
            img_ids=ids, joint_attention_kwargs=pipe.attention_kwargs, return_dict=False)[0]
        return self.unpack(v[:, :packed.shape[1]], grid)

    # --- output --------------------------------------------------------
    def decode(self, x):
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.pipe
        latents = self.pack(x.to(self.latent_dtype))
        if self.kw["output_type"] == "latent":
            return latents
        lat = pipe._unpack_latents_with_ids(latents, self.ids(x))  # (B, 128, h, w)
        vae = pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(lat.device, lat.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1)
                         + vae.config.batch_norm_eps).to(lat.device, lat.dtype)
        lat = pipe._unpatchify_latents(lat * std + mean)
        image = vae.decode(lat.to(get_module_execution_device(vae)), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=self.kw["output_type"])

    def output_class(self):
        from diffusers.pipelines.flux2.pipeline_output import Flux2PipelineOutput

        return Flux2PipelineOutput


ADAPTER = Flux2Adapter
