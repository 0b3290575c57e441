"""Z-Image (``ZImagePipeline``): a single-stream DiT over a list of per-sample latents.

* Layout: plain ``(B, 16, H/8, W/8)`` float32 latents (sides rounded down to even, as
  ``prepare_latents`` does); the transformer takes a list of ``(C, 1, h, w)`` tensors,
  one per sample, and patchifies 2x2 itself (``all_patch_size``), so every stage's latent
  sides must be multiples of the patch (``multiple = 2``).
* Spectrum: the VAE is FLUX.1's (same architecture, scaling 0.3611, shift 0.1159), so
  FLUX's published constants apply by default.
* Schedule: the pipeline's scheduler with ``sigmas = linspace(1, 1/N, N)`` (unless
  ``sigmas=`` is given) and ``mu`` from the *full-resolution* token count (used when the
  scheduler shifts dynamically; Z-Image's own shifts statically by 3).
* Model call: the transformer sees ``1 - sigma`` (``(1000 - t) / 1000``) and predicts the
  negated velocity; CFG is true CFG on ``[cond; uncond]`` lists with the pipeline's
  ``cfg_truncation`` (no guidance once ``1 - sigma`` passes it) and ``cfg_normalization``
  (the guided prediction's norm capped at that multiple of the conditional one's),
  per sample as the pipeline does it.
* Positions: RoPE indices are built by the transformer from each input's own shape, so a
  coarse stage is seen as an image of its size (``"native"``); ``"stretched"`` is not
  offered.
"""

from __future__ import annotations

import torch

from .base import Adapter, FolderLayout, full_resolution_mu, vae_factor_from_config

__all__ = ["ZImageAdapter", "ADAPTER"]


class ZImageAdapter(Adapter):
    family = "Z-Image"
    pipeline_classes = ("ZImagePipeline",)
    default_spectrum = "flux"  # FLUX.1's VAE
    denoiser_attr = "transformer"
    callback_tensors = ("prompt_embeds", "negative_prompt_embeds")
    packing = "Z-Image's transformer embeds 2x2 latent patches"
    positions_supported = ("native",)

    @property
    def multiple(self) -> int:
        return int(self.pipe.transformer.config.all_patch_size[0])

    @classmethod
    def folder_layout(cls, config) -> FolderLayout:
        patch = config("transformer").get("all_patch_size", [2])
        return FolderLayout(vae_factor_from_config(config("vae")), int(patch[0]), (1024, 1024),
                            round_to_multiple=True)

    def prepare(self) -> None:
        from diffusers.pipelines.z_image.pipeline_z_image import (
            get_default_z_image_sigmas,
            retrieve_timesteps,
        )

        pipe, kw = self.pipe, self.kw
        height, width = kw["height"] or 1024, kw["width"] or 1024
        vae_scale = pipe.vae_scale_factor * 2
        for name, side in (("Height", height), ("Width", width)):
            if side % vae_scale != 0:  # the pipeline's own check and message
                raise ValueError(f"{name} must be divisible by {vae_scale} (got {side}). "
                                 f"Please adjust the {name.lower()} to a multiple of {vae_scale}.")
        pipe._guidance_scale = kw["guidance_scale"]
        pipe._joint_attention_kwargs = kw["joint_attention_kwargs"]
        pipe._interrupt = False
        pipe._cfg_normalization = kw["cfg_normalization"]
        pipe._cfg_truncation = kw["cfg_truncation"]
        device = self.device = pipe._execution_device

        prompt, pe, neg = kw["prompt"], kw["prompt_embeds"], kw["negative_prompt_embeds"]
        cfg = pipe.do_classifier_free_guidance
        if pe is not None and prompt is None:
            if cfg and neg is None:
                raise ValueError("When `prompt_embeds` is provided without `prompt`, "
                                 "`negative_prompt_embeds` must also be provided for "
                                 "classifier-free guidance.")
        else:
            pe, neg = pipe.encode_prompt(
                prompt=prompt, negative_prompt=kw["negative_prompt"],
                do_classifier_free_guidance=cfg, prompt_embeds=pe, negative_prompt_embeds=neg,
                device=device, max_sequence_length=kw["max_sequence_length"])
        batch_size = self.batch_size() if prompt is not None else len(pe)
        n_img = kw["num_images_per_prompt"] or 1
        if n_img > 1:
            pe = [p for p in pe for _ in range(n_img)]
            if cfg and neg:
                neg = [p for p in neg for _ in range(n_img)]
        self.tensors = {"prompt_embeds": list(pe), "negative_prompt_embeds": neg}
        self.latent_dtype = pipe.transformer.dtype

        C = pipe.transformer.in_channels
        h = 2 * (int(height) // vae_scale)
        w = 2 * (int(width) // vae_scale)
        self.grid = (h, w)
        B = batch_size * n_img
        lat = kw["latents"]
        if lat is not None:
            if tuple(lat.shape) != (B, C, h, w):
                raise ValueError(f"Unexpected latents shape, got {tuple(lat.shape)}, expected "
                                 f"{(B, C, h, w)}")
            self.noise = lat.to(device).float()
        else:
            self.noise = self.draw_noise((B, C, h, w), torch.float32)

        sched = self.fresh_scheduler()
        mu = full_resolution_mu(sched, (h // 2) * (w // 2))
        sigmas = kw["sigmas"]
        if sigmas is None:
            sigmas = get_default_z_image_sigmas(kw["num_inference_steps"])
        retrieve_timesteps(sched, kw["num_inference_steps"], device, sigmas=sigmas, mu=mu)
        self.set_schedule(sched)
        pipe._num_timesteps = self.num_steps

    def batch_size(self) -> int:
        prompt = self.kw["prompt"]
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list):
            return len(prompt)
        return len(self.kw["prompt_embeds"])

    def check_grid(self, grid):
        p = self.multiple
        if any(s % p for s in grid):
            raise ValueError(f"Z-Image needs latent sides divisible by the patch size {p}, "
                             f"got {grid}")

    def model_output(self, x_in, timestep, ev):
        pipe = self.pipe
        t_model = ((1000 - timestep) / 1000).to(self.device)  # what the transformer sees
        guidance = pipe.guidance_scale
        truncation = pipe._cfg_truncation
        if (pipe.do_classifier_free_guidance and truncation is not None
                and float(truncation) <= 1 and float(t_model) > truncation):
            guidance = 0.0
        apply_cfg = pipe.do_classifier_free_guidance and guidance > 0
        n = x_in.shape[0]
        pe = self.tensors["prompt_embeds"]
        if apply_cfg:
            inputs = x_in.repeat(2, 1, 1, 1)
            caps = pe + self.tensors["negative_prompt_embeds"]
            ts = t_model.expand(n).repeat(2)
        else:
            inputs, caps, ts = x_in, pe, t_model.expand(n)
        out = pipe.transformer(list(inputs.unsqueeze(2).unbind(dim=0)), ts, caps,
                               joint_attention_kwargs=pipe.joint_attention_kwargs,
                               return_dict=False)[0]
        if apply_cfg:
            preds = []
            norm_cap = pipe._cfg_normalization
            for j in range(n):
                pos, neg = out[j].float(), out[n + j].float()
                pred = pos + guidance * (pos - neg)
                if norm_cap and float(norm_cap) > 0.0:
                    pos_norm = torch.linalg.vector_norm(pos)
                    new_norm = torch.linalg.vector_norm(pred)
                    max_norm = pos_norm * float(norm_cap)
                    if new_norm > max_norm:
                        pred = pred * (max_norm / new_norm)
                preds.append(pred)
            pred = torch.stack(preds, dim=0)
        else:
            pred = torch.stack([o.float() for o in out], dim=0)
        return -pred.squeeze(2)  # the velocity eps - x0

    def to_latents(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return x  # the pipeline's loop keeps float32 latents

    def decode(self, x):
        pipe = self.pipe
        if self.kw["output_type"] == "latent":
            return x
        return self.decode_shifted(x.to(pipe.vae.dtype))

    def output_class(self):
        from diffusers.pipelines.z_image.pipeline_output import ZImagePipelineOutput

        return ZImagePipelineOutput


ADAPTER = ZImageAdapter
