"""FLUX.1 (``FluxPipeline``): packed 2x2 latents, ``img_ids`` per stage, mu from full-res tokens.

* Layout: VAE latents ``(B, 16, h, w)`` with ``h = 2 (H // 16)``; the transformer
  and the pipeline's loop hold them packed, ``(B, (h/2)(w/2), 64)``, feature
  index ``c*4 + dy*2 + dx``. ``latents=`` and ``output_type="latent"`` are packed.
  Every stage's latent sides must be even (``multiple = 2``).
* Schedule: ``sigmas = linspace(1, 1/N, N)`` warped with
  ``mu = calculate_shift((h/2)(w/2))`` of the *full-resolution* token count,
  whatever grid the first stage runs on (the pipeline computes mu from the
  starting latents, so a coarse start would silently change it).
* Prediction: velocity; the guidance embedding (FLUX-dev) is one call per step;
  ``true_cfg_scale > 1`` with negative embeddings adds a second call.
* Positions: ``img_ids`` rows ``[0, row, col]`` are rebuilt for every stage's
  token grid. ``positions="native"`` (default) gives a coarse stage the ids
  ``0 .. h/2 - 1`` the model uses when it generates an image of that size: the
  coarse state is the low-pass of the full image sampled on a coarser grid,
  which is exactly what a smaller image looks like to the model, so its
  attention sees in-distribution distances (SPD's reference code and the SGLang
  port rebuild the ids the same way). ``positions="stretched"`` places each
  coarse token at the centre of the block of full-resolution tokens it covers
  (``row * r + (r - 1) / 2``), keeping absolute positions but spacing neighbours
  ``r`` apart, a layout the model never saw in training.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import (
    Adapter,
    FolderLayout,
    full_resolution_mu,
    pack_2x2,
    unpack_2x2,
    unsupported,
    vae_factor_from_config,
)

__all__ = ["FluxAdapter", "ADAPTER"]


class FluxAdapter(Adapter):
    family = "FLUX"
    pipeline_classes = ("FluxPipeline",)
    default_spectrum = "flux"
    denoiser_attr = "transformer"
    callback_tensors = ("prompt_embeds",)
    packing = "FLUX packs 2x2 latent patches into tokens"
    positions_supported = ("native", "stretched")

    @property
    def multiple(self) -> int:
        return 2

    @classmethod
    def folder_layout(cls, config) -> FolderLayout:
        f = vae_factor_from_config(config("vae"))
        return FolderLayout(f, 2, (128 * f, 128 * f), round_to_multiple=True)

    def prepare(self) -> None:
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        pipe, kw = self.pipe, self.kw
        unsupported(kw, {"ip_adapter_image": None, "ip_adapter_image_embeds": None,
                         "negative_ip_adapter_image": None,
                         "negative_ip_adapter_image_embeds": None}, self.family)
        height = kw["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = kw["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        self.height, self.width = height, width
        pipe.check_inputs(
            kw["prompt"], kw["prompt_2"], height, width,
            negative_prompt=kw["negative_prompt"], negative_prompt_2=kw["negative_prompt_2"],
            prompt_embeds=kw["prompt_embeds"], negative_prompt_embeds=kw["negative_prompt_embeds"],
            pooled_prompt_embeds=kw["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=kw["negative_pooled_prompt_embeds"],
            callback_on_step_end_tensor_inputs=kw["callback_on_step_end_tensor_inputs"],
            max_sequence_length=kw["max_sequence_length"],
        )
        pipe._guidance_scale = kw["guidance_scale"]
        pipe._joint_attention_kwargs = kw["joint_attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False

        prompt = kw["prompt"]
        batch_size = self.batch_size()
        device = self.device = pipe._execution_device
        jak = pipe.joint_attention_kwargs
        lora_scale = jak.get("scale", None) if jak is not None else None
        neg, neg_pooled = kw["negative_prompt_embeds"], kw["negative_pooled_prompt_embeds"]
        has_neg = kw["negative_prompt"] is not None or (neg is not None and neg_pooled is not None)
        self.true_cfg = kw["true_cfg_scale"] > 1 and has_neg
        if self.true_cfg and kw["prompt_embeds"] is not None and neg is not None:
            if kw["prompt_embeds"].shape != neg.shape:
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when "
                    f"passed directly, but got: {kw['prompt_embeds'].shape} != {neg.shape}.")
        nipp = kw["num_images_per_prompt"]
        pe, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=kw["prompt_2"], prompt_embeds=kw["prompt_embeds"],
            pooled_prompt_embeds=kw["pooled_prompt_embeds"], device=device,
            num_images_per_prompt=nipp, max_sequence_length=kw["max_sequence_length"],
            lora_scale=lora_scale)
        if self.true_cfg:
            self.neg, self.neg_pooled, self.neg_text_ids = pipe.encode_prompt(
                prompt=kw["negative_prompt"], prompt_2=kw["negative_prompt_2"], prompt_embeds=neg,
                pooled_prompt_embeds=neg_pooled, device=device, num_images_per_prompt=nipp,
                max_sequence_length=kw["max_sequence_length"], lora_scale=lora_scale)
        self.tensors = {"prompt_embeds": pe}
        self.pooled, self.text_ids = pooled, text_ids
        self.latent_dtype = pe.dtype

        # latents: (B, 16, h, w) in our layout; the pipeline's are packed
        self.channels = pipe.transformer.config.in_channels // 4
        h = 2 * (int(height) // (pipe.vae_scale_factor * 2))
        w = 2 * (int(width) // (pipe.vae_scale_factor * 2))
        self.grid = (h, w)
        B = self.batch = batch_size * nipp
        lat = kw["latents"]
        if lat is not None:
            want = (B, (h // 2) * (w // 2), self.channels * 4)
            if tuple(lat.shape) != want:
                raise ValueError(
                    f"FLUX latents= must be the packed full-resolution noise of shape {want} "
                    f"(batch, (h/2)*(w/2) tokens, 4*channels) for height={height}, width={width}; "
                    f"got {tuple(lat.shape)}. Pack (B, 16, h, w) noise with "
                    "FluxPipeline._pack_latents")
            # the pipeline casts latents= to the prompt dtype; so do we (same start)
            self.noise = self.unpack(lat.to(device=device, dtype=pe.dtype), self.grid).float()
        else:
            self.noise = self.draw_noise((B, self.channels, h, w), pe.dtype)

        # schedule: FLUX's sigmas with mu of the full-resolution token count
        n = kw["num_inference_steps"]
        sigmas = np.linspace(1.0, 1 / n, n) if kw["sigmas"] is None else kw["sigmas"]
        sched = self.fresh_scheduler()
        if getattr(sched.config, "use_flow_sigmas", False):
            sigmas = None
        mu = full_resolution_mu(sched, (h // 2) * (w // 2))
        retrieve_timesteps(sched, n, device, sigmas=sigmas, mu=mu)
        self.set_schedule(sched)
        pipe._num_timesteps = self.num_steps
        if pipe.transformer.config.guidance_embeds:
            self.guidance = torch.full([1], kw["guidance_scale"], device=device,
                                       dtype=torch.float32).expand(B)
        else:
            self.guidance = None
        if pipe.joint_attention_kwargs is None:
            pipe._joint_attention_kwargs = {}
        self._ids: dict[tuple[int, int], torch.Tensor] = {}

    # --- layout --------------------------------------------------------
    def pack(self, x):
        return pack_2x2(self.pipe, x)

    def unpack(self, latents, grid):
        return unpack_2x2(latents, grid)

    def check_grid(self, grid):
        if any(s % 2 for s in grid):
            raise ValueError(f"FLUX needs even latent sides for its 2x2 packing, got {grid}")

    def img_ids(self, grid) -> torch.Tensor:
        ids = self._ids.get(grid)
        if ids is None:
            hp, wp = grid[0] // 2, grid[1] // 2
            ids = self.pipe._prepare_latent_image_ids(self.batch, hp, wp, self.device,
                                                      self.latent_dtype)
            if self.positions == "stretched" and grid != self.grid:
                ry = (self.grid[0] // 2) / hp
                rx = (self.grid[1] // 2) / wp
                rows = (torch.arange(hp, dtype=torch.float64) + 0.5) * ry - 0.5
                cols = (torch.arange(wp, dtype=torch.float64) + 0.5) * rx - 0.5
                ids = ids.clone()
                ids[:, 1] = rows[:, None].expand(hp, wp).reshape(-1).to(ids)
                ids[:, 2] = cols[None, :].expand(hp, wp).reshape(-1).to(ids)
            self._ids[grid] = ids
        return ids

    # --- the model -----------------------------------------------------
    def extra_tokens(self, grid) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Packed tokens and their ids appended to the image sequence (FLUX: none; Kontext:
        the reference image's); the model's output for them is dropped."""
        return None, None

    def model_output(self, x_in, timestep, ev):
        pipe = self.pipe
        grid = tuple(x_in.shape[2:])
        packed = self.pack(x_in)
        ids = self.img_ids(grid)
        extra, extra_ids = self.extra_tokens(grid)
        hidden = packed if extra is None else torch.cat([packed, extra.to(packed.dtype)], dim=1)
        if extra_ids is not None:
            ids = torch.cat([ids, extra_ids], dim=0)  # dim 0 is the sequence
        n = packed.shape[1]
        ts = timestep.to(self.device).expand(packed.shape[0]).to(packed.dtype)
        with self.cache_context("cond"):
            v = pipe.transformer(
                hidden_states=hidden, timestep=ts / 1000, guidance=self.guidance,
                pooled_projections=self.pooled, encoder_hidden_states=self.tensors["prompt_embeds"],
                txt_ids=self.text_ids, img_ids=ids,
                joint_attention_kwargs=pipe.joint_attention_kwargs, return_dict=False)[0][:, :n]
        if self.true_cfg:
            with self.cache_context("uncond"):
                nv = pipe.transformer(
                    hidden_states=hidden, timestep=ts / 1000, guidance=self.guidance,
                    pooled_projections=self.neg_pooled, encoder_hidden_states=self.neg,
                    txt_ids=self.neg_text_ids, img_ids=ids,
                    joint_attention_kwargs=pipe.joint_attention_kwargs,
                    return_dict=False)[0][:, :n]
            v = nv + self.kw["true_cfg_scale"] * (v - nv)
        return self.unpack(v, grid)

    # --- output --------------------------------------------------------
    def decode(self, x):
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.pipe
        latents = self.pack(x.to(self.latent_dtype))
        if self.kw["output_type"] == "latent":
            return latents
        latents = pipe._unpack_latents(latents, self.height, self.width, pipe.vae_scale_factor)
        return self.decode_shifted(latents.to(get_module_execution_device(pipe.vae)))

    def output_class(self):
        from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

        return FluxPipelineOutput

ADAPTER = FluxAdapter

