"""Wan 2.1 text-to-video (``WanPipeline``): 5-D latents, H and W resized per frame, F fixed.

* Layout: ``(B, 16, F, H/8, W/8)`` float32 latents with ``F = (frames - 1) // 4 + 1``;
  the transformer patchifies ``(1, 2, 2)``, so stage sides must be even
  (``multiple = 2``); only the last two axes change between stages
  (``axes=2``), each frame is resized by the same 2-D DCT.
* Schedule: ``scheduler.set_timesteps(N)`` on a private copy, as the pipeline
  calls it (Wan's flow shift; UniPC's integer timesteps go to the transformer).
* Solver: Wan 2.1 ships ``UniPCMultistepScheduler`` (order 2, bh2); it is
  reproduced by :func:`specdiff.integrations.unipc.unipc_solver` with its
  history reset at each transition (see that module for why it is a solver
  rather than the diffusers scheduler driven per stage). With a
  ``FlowMatchEulerDiscreteScheduler`` (diffusers' own Wan tests) it is Euler.
* Prediction: velocity; CFG is two separate calls per step (cond, uncond)
  inside ``cache_context("cond"/"uncond", step_index, sigma, num_inference_steps)``, with
  the call's walk position from the sampler's ``StepInfo``, the sigma of its ``t`` and
  the walk's step count (the pipeline's ``i``, ``sigmas[i]`` and ``N`` on one stage).
* Positions: ``WanRotaryPosEmbed`` indexes per-axis RoPE tables with
  ``0 .. n-1`` taken from the input's shape. ``positions="native"`` (default)
  keeps that (a coarse stage is a smaller video, top-left anchored, unit
  spacing; the SGLang SPD port does the same). ``positions="stretched"``
  temporarily hooks ``transformer.rope`` to return RoPE at the centres of the
  full-resolution blocks (fractional positions ``i * r + (r - 1) / 2`` on H and W;
  frames unchanged); the hook is removed when the call returns.
* Not covered: Wan 2.2 (``transformer_2``, ``boundary_ratio``, ``expand_timesteps``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .base import Adapter, FolderLayout, forward_hook, unsupported

__all__ = ["WanAdapter", "ADAPTER"]


class WanAdapter(Adapter):
    family = "Wan"
    pipeline_classes = ("WanPipeline",)
    default_spectrum = "wan"
    denoiser_attr = "transformer"
    callback_tensors = ("prompt_embeds", "negative_prompt_embeds")
    packing = "Wan's transformer embeds (1, 2, 2) latent patches"
    positions_supported = ("native", "stretched")

    @property
    def multiple(self) -> int:
        p = self.pipe.transformer.config.patch_size
        return int(max(p[1], p[2]))

    @classmethod
    def folder_layout(cls, config) -> FolderLayout:
        f = int(config("vae").get("scale_factor_spatial", 8))
        p = config("transformer").get("patch_size", (1, 2, 2))
        return FolderLayout(f, int(max(p[1], p[2])), (480, 832))  # WanPipeline's defaults

    def prepare(self) -> None:
        from diffusers.pipelines.wan.pipeline_wan import logger

        pipe, kw = self.pipe, self.kw
        if pipe.transformer is None or pipe.config.boundary_ratio is not None or \
                getattr(pipe.config, "expand_timesteps", False):
            raise ValueError("Wan: SpectralPipeline supports Wan 2.1 text-to-video (one transformer,"
                             " no boundary_ratio / expand_timesteps); call the pipeline itself for "
                             "Wan 2.2")
        unsupported(kw, {"guidance_scale_2": None}, self.family)
        height, width, num_frames = kw["height"], kw["width"], kw["num_frames"]
        self.check_pipeline_inputs(height, width)
        tsf = pipe.vae_scale_factor_temporal
        if num_frames % tsf != 1:
            logger.warning(f"`num_frames - 1` has to be divisible by {tsf}. Rounding to the "
                           "nearest number.")
            num_frames = num_frames // tsf * tsf + 1
        num_frames = max(num_frames, 1)
        p = pipe.transformer.config.patch_size
        hm, wm = pipe.vae_scale_factor_spatial * p[1], pipe.vae_scale_factor_spatial * p[2]
        if height % hm or width % wm:
            logger.warning(f"`height` and `width` must be multiples of ({hm}, {wm}) for proper "
                           f"patchification. Adjusting ({height}, {width}) -> "
                           f"({height // hm * hm}, {width // wm * wm}).")
            height, width = height // hm * hm, width // wm * wm
        pipe._guidance_scale = kw["guidance_scale"]
        pipe._guidance_scale_2 = None
        pipe._attention_kwargs = kw["attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False
        device = self.device = pipe._execution_device
        prompt = kw["prompt"]
        batch_size = self.batch_size()
        pe, neg = pipe.encode_prompt(
            prompt=prompt, negative_prompt=kw["negative_prompt"],
            do_classifier_free_guidance=pipe.do_classifier_free_guidance,
            num_videos_per_prompt=kw["num_videos_per_prompt"], prompt_embeds=kw["prompt_embeds"],
            negative_prompt_embeds=kw["negative_prompt_embeds"],
            max_sequence_length=kw["max_sequence_length"], device=device)
        self.model_dtype = pipe.transformer.dtype
        pe = pe.to(self.model_dtype)
        if neg is not None:
            neg = neg.to(self.model_dtype)
        self.tensors = {"prompt_embeds": pe, "negative_prompt_embeds": neg}

        sched = self.fresh_scheduler()
        sched.set_timesteps(kw["num_inference_steps"], device=device)
        self.set_schedule(sched)
        pipe._num_timesteps = self.num_steps

        C = self.noise_channels()
        F = (num_frames - 1) // tsf + 1
        h, w = int(height) // pipe.vae_scale_factor_spatial, int(width) // pipe.vae_scale_factor_spatial
        self.grid = (F, h, w)
        B = batch_size * kw["num_videos_per_prompt"]
        lat = kw["latents"]
        if lat is not None:
            if tuple(lat.shape) != (B, C, F, h, w):
                raise ValueError(f"Wan latents= must be the full-resolution noise of shape "
                                 f"{(B, C, F, h, w)}; got {tuple(lat.shape)}")
            self.noise = lat.to(device=device, dtype=torch.float32)
        else:
            self.noise = self.draw_noise((B, C, F, h, w), torch.float32)
        self.latent_dtype = torch.float32  # the pipeline's loop keeps Wan latents in float32
        self.prepare_condition(height, width, num_frames, B)

    # --- what image-to-video changes (families/wan_i2v.py) ---------------
    def check_pipeline_inputs(self, height, width) -> None:
        kw = self.kw
        self.pipe.check_inputs(kw["prompt"], kw["negative_prompt"], height, width,
                               kw["prompt_embeds"], kw["negative_prompt_embeds"],
                               kw["callback_on_step_end_tensor_inputs"], kw["guidance_scale_2"])

    def noise_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    def prepare_condition(self, height, width, num_frames, batch) -> None:
        """Conditioning beyond the prompt, built after the noise as the pipeline does (T2V:
        none)."""

    def model_inputs(self, x_in) -> tuple[torch.Tensor, dict]:
        """The transformer's ``hidden_states`` for a stage state ``x_in`` and the extra keyword
        arguments of its call (T2V: the state itself, none)."""
        return x_in.to(self.model_dtype), {}

    def check_grid(self, grid):
        m = self.multiple
        if any(s % m for s in grid[-2:]):
            raise ValueError(f"Wan needs even latent heights/widths (2x2 patches), got {grid}")

    def model_output(self, x_in, timestep, ev):
        pipe = self.pipe
        lmi, extra = self.model_inputs(x_in)
        ts = timestep.to(self.device).expand(lmi.shape[0])
        # what the pipeline's loop tells cache hooks: its i, that step's sigma, the step count
        ck = {"step_index": ev.index, "sigma": float(ev.sigma), "num_inference_steps": ev.num_steps}
        with self.cache_context("cond", **ck):
            out = pipe.transformer(hidden_states=lmi, timestep=ts,
                                   encoder_hidden_states=self.tensors["prompt_embeds"],
                                   attention_kwargs=self.kw["attention_kwargs"],
                                   return_dict=False, **extra)[0]
        if pipe.do_classifier_free_guidance:
            with self.cache_context("uncond", **ck):
                unc = pipe.transformer(hidden_states=lmi, timestep=ts,
                                       encoder_hidden_states=self.tensors["negative_prompt_embeds"],
                                       attention_kwargs=self.kw["attention_kwargs"],
                                       return_dict=False, **extra)[0]
            out = unc + self.kw["guidance_scale"] * (out - unc)
        return out

    # --- positions -----------------------------------------------------
    def rope_at(self, ppf: int, rows: torch.Tensor, cols: torch.Tensor, like: torch.Tensor):
        """``(freqs_cos, freqs_sin)`` as ``WanRotaryPosEmbed`` returns them for ``ppf`` frames
        and (possibly fractional) patch positions ``rows`` x ``cols``."""
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        mod = self.pipe.transformer.rope

        def table(dim, pos):
            c, s = get_1d_rotary_pos_embed(dim, pos, 10000.0, use_real=True,
                                           repeat_interleave_real=True, freqs_dtype=torch.float64)
            return c.double(), s.double()

        pph, ppw = len(rows), len(cols)
        split = [mod.t_dim, mod.h_dim, mod.w_dim]
        ft = [x[:ppf].split(split, dim=1)[0].to("cpu", torch.float64)
              for x in (mod.freqs_cos, mod.freqs_sin)]
        hc, hs = table(mod.h_dim, rows.to(torch.float64))
        wc, ws = table(mod.w_dim, cols.to(torch.float64))
        outs = []
        for tf, hf, wf in ((ft[0], hc, wc), (ft[1], hs, ws)):
            parts = [tf.view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1),
                     hf.view(1, pph, 1, -1).expand(ppf, pph, ppw, -1),
                     wf.view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1)]
            full_t = torch.cat(parts, dim=-1).reshape(1, ppf * pph * ppw, 1, -1)
            outs.append(full_t.to(device=like.device, dtype=like.dtype))
        return tuple(outs)

    @contextmanager
    def positions_context(self):
        if self.positions != "stretched":
            yield
            return
        rope = self.pipe.transformer.rope
        pt, ph, pw = rope.patch_size
        full = (self.grid[1] // ph, self.grid[2] // pw)
        # rope_at recomputes RoPE with theta = 10000 (WanRotaryPosEmbed's default): check it
        probe = torch.zeros(1, 1, pt, 4 * ph, 4 * pw, device=rope.freqs_cos.device)
        ref = rope(probe)[0]
        mine = self.rope_at(1, torch.arange(4.0), torch.arange(4.0), ref)[0]
        if not torch.allclose(ref.double(), mine.double(), atol=1e-4):
            raise ValueError("Wan positions='stretched' expects RoPE with theta=10000; this "
                             "transformer differs, use positions='native'")
        cache: dict = {}

        def hook(mod, inputs, output):
            _, _, f, h, w = inputs[0].shape
            ppf, pph, ppw = f // pt, h // ph, w // pw
            if (pph, ppw) == full:
                return output
            got = cache.get((ppf, pph, ppw))
            if got is None:
                rows = (torch.arange(pph, dtype=torch.float64) + 0.5) * (full[0] / pph) - 0.5
                cols = (torch.arange(ppw, dtype=torch.float64) + 0.5) * (full[1] / ppw) - 0.5
                got = self.rope_at(ppf, rows, cols, output[0])
                cache[(ppf, pph, ppw)] = got
            return got

        with forward_hook(rope, hook):
            yield

    # --- output --------------------------------------------------------
    def decode(self, x):
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.pipe
        if self.kw["output_type"] == "latent":
            return x
        vae = pipe.vae
        latents = x.to(get_module_execution_device(vae), dtype=vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device,
                                                                            latents.dtype)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device,
                                                                                latents.dtype)
        latents = latents / std + mean
        video = vae.decode(latents, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type=self.kw["output_type"])

    def output_class(self):
        from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

        return WanPipelineOutput

    output_field = "frames"

ADAPTER = WanAdapter
