"""SD3 / SD3.5 (``StableDiffusion3Pipeline``): patch-2 MMDiT, true CFG, static or dynamic shift.

* Layout: plain ``(B, 16, H/8, W/8)`` latents; the transformer patchifies 2x2
  itself, so every stage's latent sides must be even (``multiple = 2``), and a
  side may not exceed ``pos_embed_max_size`` patches.
* Schedule: the pipeline's scheduler with its own ``set_timesteps`` (SD3's
  shift applied to already-shifted endpoints, ending at ~0.009 before 0); with
  ``use_dynamic_shifting`` mu comes from the *full-resolution* patch count
  unless ``mu=`` is passed, as the pipeline does.
* Prediction: velocity; CFG is one batched call on ``[uncond; cond]``;
  skip-layer guidance (SD3.5) adds the pipeline's extra call on the same steps
  (``start < i / N < stop`` with ``i`` the call's walk position from the sampler's
  ``StepInfo``: a Heun corrector at step ``k``'s end time is at ``k + 1``).
* Positions: a fixed 2-D sin-cos table over ``pos_embed_max_size``^2 patches of
  which the transformer takes the centre crop of the input's size.
  ``positions="native"`` (default) leaves it alone: a coarse stage is seen as
  an image of its own size, centred, exactly as when SD3 generates at that
  resolution. ``positions="stretched"`` temporarily adds a forward hook on
  ``transformer.pos_embed`` that replaces the crop by the table evaluated at the
  centres of the full-resolution blocks each coarse patch covers (the sin-cos
  table is analytic, so fractional positions are exact); the hook is removed
  when the call returns.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .base import (
    Adapter,
    FolderLayout,
    forward_hook,
    full_resolution_mu,
    unsupported,
    vae_factor_from_config,
)

__all__ = ["SD3Adapter", "ADAPTER"]


class SD3Adapter(Adapter):
    family = "SD3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    default_spectrum = None  # no published constants for the SD3 VAE: fit with `specdiff analyze`
    denoiser_attr = "transformer"
    callback_tensors = ("prompt_embeds", "pooled_prompt_embeds")
    packing = "SD3's transformer embeds 2x2 latent patches"
    positions_supported = ("native", "stretched")

    @property
    def multiple(self) -> int:
        return int(self.pipe.transformer.config.patch_size)

    @classmethod
    def folder_layout(cls, config) -> FolderLayout:
        f, tr = vae_factor_from_config(config("vae")), config("transformer")
        side = int(tr.get("sample_size", 128)) * f
        return FolderLayout(f, int(tr.get("patch_size", 2)), (side, side))

    def prepare(self) -> None:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            retrieve_timesteps,
        )

        pipe, kw = self.pipe, self.kw
        unsupported(kw, {"ip_adapter_image": None, "ip_adapter_image_embeds": None}, self.family)
        height = kw["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = kw["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(
            kw["prompt"], kw["prompt_2"], kw["prompt_3"], height, width,
            negative_prompt=kw["negative_prompt"], negative_prompt_2=kw["negative_prompt_2"],
            negative_prompt_3=kw["negative_prompt_3"], prompt_embeds=kw["prompt_embeds"],
            negative_prompt_embeds=kw["negative_prompt_embeds"],
            pooled_prompt_embeds=kw["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=kw["negative_pooled_prompt_embeds"],
            callback_on_step_end_tensor_inputs=kw["callback_on_step_end_tensor_inputs"],
            max_sequence_length=kw["max_sequence_length"],
        )
        pipe._guidance_scale = kw["guidance_scale"]
        pipe._skip_layer_guidance_scale = kw["skip_layer_guidance_scale"]
        pipe._clip_skip = kw["clip_skip"]
        pipe._joint_attention_kwargs = kw["joint_attention_kwargs"]
        pipe._interrupt = False

        prompt = kw["prompt"]
        batch_size = self.batch_size()
        device = self.device = pipe._execution_device
        jak = pipe.joint_attention_kwargs
        lora_scale = jak.get("scale", None) if jak is not None else None
        pe, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=kw["prompt_2"], prompt_3=kw["prompt_3"],
            negative_prompt=kw["negative_prompt"], negative_prompt_2=kw["negative_prompt_2"],
            negative_prompt_3=kw["negative_prompt_3"],
            do_classifier_free_guidance=pipe.do_classifier_free_guidance,
            prompt_embeds=kw["prompt_embeds"], negative_prompt_embeds=kw["negative_prompt_embeds"],
            pooled_prompt_embeds=kw["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=kw["negative_pooled_prompt_embeds"], device=device,
            clip_skip=pipe.clip_skip, num_images_per_prompt=kw["num_images_per_prompt"],
            max_sequence_length=kw["max_sequence_length"], lora_scale=lora_scale)
        self.skip_layers = kw["skip_guidance_layers"]
        if pipe.do_classifier_free_guidance:
            if self.skip_layers is not None:
                self.original_pe, self.original_pooled = pe, pooled
            pe = torch.cat([neg, pe], dim=0)
            pooled = torch.cat([neg_pooled, pooled], dim=0)
        self.tensors = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        self.latent_dtype = pe.dtype

        C = pipe.transformer.config.in_channels
        h, w = int(height) // pipe.vae_scale_factor, int(width) // pipe.vae_scale_factor
        self.grid = (h, w)
        B = batch_size * kw["num_images_per_prompt"]
        lat = kw["latents"]
        if lat is not None:
            if tuple(lat.shape) != (B, C, h, w):
                raise ValueError(f"SD3 latents= must be the full-resolution noise of shape "
                                 f"{(B, C, h, w)}; got {tuple(lat.shape)}")
            self.noise = lat.to(device=device, dtype=pe.dtype).float()
        else:
            self.noise = self.draw_noise((B, C, h, w), pe.dtype)

        sched = self.fresh_scheduler()
        sched_kwargs = {}
        mu = kw["mu"]
        if sched.config.get("use_dynamic_shifting", None) and mu is None:
            p = pipe.transformer.config.patch_size
            mu = full_resolution_mu(sched, (h // p) * (w // p), max_shift=1.16)  # SD3's default
            sched_kwargs["mu"] = mu
        elif mu is not None:
            sched_kwargs["mu"] = mu
        retrieve_timesteps(sched, kw["num_inference_steps"], device, sigmas=kw["sigmas"],
                           **sched_kwargs)
        self.set_schedule(sched)
        pipe._num_timesteps = self.num_steps

    def check_grid(self, grid):
        p = self.multiple
        if any(s % p for s in grid):
            raise ValueError(f"SD3 needs latent sides divisible by the patch size {p}, got {grid}")
        mx = self.pipe.transformer.config.pos_embed_max_size
        if mx and max(grid) // p > mx:
            raise ValueError(f"SD3's position table covers {mx} patches per side; grid {grid} "
                             "is too large")

    def model_output(self, x_in, timestep, ev):
        pipe = self.pipe
        cfg = pipe.do_classifier_free_guidance
        lmi = torch.cat([x_in] * 2) if cfg else x_in
        ts = timestep.to(self.device).expand(lmi.shape[0])
        out = pipe.transformer(
            hidden_states=lmi, timestep=ts, encoder_hidden_states=self.tensors["prompt_embeds"],
            pooled_projections=self.tensors["pooled_prompt_embeds"],
            joint_attention_kwargs=pipe.joint_attention_kwargs, return_dict=False)[0]
        if cfg:
            uncond, text = out.chunk(2)
            out = uncond + pipe.guidance_scale * (text - uncond)
            # the pipeline's rule on its loop index i: start < i / N < stop, with i the
            # walk position of this evaluation (a Heun corrector counts as step k + 1)
            i, n = ev.index, ev.num_steps
            kw = self.kw
            skip = (i > n * kw["skip_layer_guidance_start"]
                    and i < n * kw["skip_layer_guidance_stop"])
            if self.skip_layers is not None and skip:
                sk = pipe.transformer(
                    hidden_states=x_in, timestep=timestep.to(self.device).expand(x_in.shape[0]),
                    encoder_hidden_states=self.original_pe,
                    pooled_projections=self.original_pooled,
                    joint_attention_kwargs=pipe.joint_attention_kwargs, return_dict=False,
                    skip_layers=self.skip_layers)[0]
                out = out + (text - sk) * pipe._skip_layer_guidance_scale
        return out

    # --- positions -----------------------------------------------------
    def stretched_pos_embed(self, hp: int, wp: int) -> torch.Tensor:
        """The position table at the centres of the full-res patch blocks that an
        ``hp x wp`` patch grid covers: ``(1, hp*wp, D)`` float32."""
        from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

        pe = self.pipe.transformer.pos_embed
        P = pe.pos_embed_max_size
        Hf, Wf = self.grid[0] // pe.patch_size, self.grid[1] // pe.patch_size
        top, left = (P - Hf) // 2, (P - Wf) // 2
        rows = top + (torch.arange(hp, dtype=torch.float64) + 0.5) * (Hf / hp) - 0.5
        cols = left + (torch.arange(wp, dtype=torch.float64) + 0.5) * (Wf / wp) - 0.5
        scale = (P / pe.base_size) * pe.interpolation_scale  # table index -> coordinate
        gh, gw = torch.meshgrid(rows / scale, cols / scale, indexing="ij")
        grid = torch.stack([gw, gh]).reshape(2, 1, hp, wp)  # diffusers order: w first
        emb = get_2d_sincos_pos_embed_from_grid(pe.pos_embed.shape[-1], grid, output_type="pt")
        return emb.float().unsqueeze(0)

    @contextmanager
    def positions_context(self):
        if self.positions != "stretched":
            yield
            return
        module = self.pipe.transformer.pos_embed
        if module.pos_embed_max_size is None:
            raise ValueError("SD3 positions='stretched' needs a transformer with pos_embed_max_size")
        full = (self.grid[0] // module.patch_size, self.grid[1] // module.patch_size)
        cache: dict = {}

        def hook(mod, inputs, output):
            h, w = inputs[0].shape[-2:]
            hp, wp = h // mod.patch_size, w // mod.patch_size
            if (hp, wp) == full:
                return output
            corr = cache.get((hp, wp))
            if corr is None:
                corr = (self.stretched_pos_embed(hp, wp).to(mod.pos_embed.device)
                        - mod.cropped_pos_embed(h, w))
                cache[(hp, wp)] = corr
            return (output + corr.to(output.dtype)).to(output.dtype)

        with forward_hook(module, hook):
            yield

    # --- output --------------------------------------------------------
    def decode(self, x):
        latents = x.to(self.latent_dtype)
        if self.kw["output_type"] == "latent":
            return latents
        return self.decode_shifted(latents)

    def output_class(self):
        from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

        return StableDiffusion3PipelineOutput

ADAPTER = SD3Adapter
