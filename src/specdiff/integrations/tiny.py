"""Tiny random-weight diffusers pipelines for tests, docs and smoke runs (no downloads).

Each builder returns ``(pipe, kwargs)``: a real diffusers pipeline of the family
with a few-thousand-parameter denoiser, a small VAE, no text encoders, and the
keyword arguments of a working call (precomputed prompt embeddings, size,
steps, guidance). Seeded, so two builds are identical. The configurations are
the ones verified in ``shared/reference/diffusers-facts.md``; they exercise the
same code paths as the real models (FLUX's 2x2 packing and RoPE ids, SD3's
patch embedding and position table, SDXL's UNet with added time ids, Wan's
3-D RoPE and UniPC scheduler) at a size that runs in well under a second.
"""

from __future__ import annotations

import torch

__all__ = ["tiny_flux", "tiny_sd3", "tiny_sdxl", "tiny_wan", "tiny_zimage", "tiny_qwenimage",
           "tiny_flux_kontext", "tiny_wan_i2v", "tiny_flux2", "TINY_BUILDERS", "TokenCounter",
           "tiny_clip_text"]


def _embeds(gen: torch.Generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _kl_vae(latent_channels: int, scaling_factor: float, shift_factor: float | None,
            quant: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        latent_channels=latent_channels, sample_size=32,
        scaling_factor=scaling_factor, shift_factor=shift_factor,
        use_quant_conv=quant, use_post_quant_conv=quant,
    )


def tiny_flux(seed: int = 0, *, size: int = 128, steps: int = 4):
    """FLUX.1-dev-shaped pipeline: guidance embedding, packed 2x2 latents, 3-axis RoPE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    vae = _kl_vae(16, 0.3611, 0.1159, quant=False)
    # FLUX.1-dev's scheduler config (dynamic shifting: mu from the token count).
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
    )
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(prompt_embeds=_embeds(g, 1, 32, 32), pooled_prompt_embeds=_embeds(g, 1, 32),
                  height=size, width=size, num_inference_steps=steps, guidance_scale=3.5)
    return pipe, kwargs


def tiny_sd3(seed: int = 0, *, size: int = 128, steps: int = 4):
    """SD3.5-medium-shaped pipeline: 2x2 patch embedding, centre-cropped position table, CFG."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=24,
        dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    vae = _kl_vae(16, 1.5305, 0.0609, quant=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(prompt_embeds=_embeds(g, 1, 24, 32), pooled_prompt_embeds=_embeds(g, 1, 64),
                  negative_prompt_embeds=_embeds(g, 1, 24, 32),
                  negative_pooled_prompt_embeds=_embeds(g, 1, 64),
                  height=size, width=size, num_inference_steps=steps, guidance_scale=7.0)
    return pipe, kwargs


def tiny_clip_text(folder: str, seed: int = 0):
    """A tiny CLIP tokenizer (characters only, vocab and merges written to ``folder``) and two
    tiny CLIP text encoders shaped like SDXL's pair (hidden 32 + 32 = 64, pooled 32)."""
    import json
    import os

    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    os.makedirs(folder, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tok = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                        model_max_length=77)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
                         max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    torch.manual_seed(seed)
    return tok, CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg)


def tiny_sdxl(seed: int = 0, *, size: int = 128, steps: int = 4, text_folder: str | None = None):
    """SDXL-base-shaped pipeline: eps-prediction UNet with text-time embedding, Euler ("leading").

    With ``text_folder`` it also gets tiny CLIP tokenizers/text encoders (files written
    there), so it takes text prompts and survives ``save_pretrained``/``from_pretrained``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 32), layers_per_block=1, attention_head_dim=(2, 4, 8),
        transformer_layers_per_block=(1, 1, 2), norm_num_groups=4, cross_attention_dim=64,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
    )
    vae = _kl_vae(4, 0.13025, None, quant=True)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    )
    tok = te = te2 = None
    if text_folder is not None:
        tok, te, te2 = tiny_clip_text(text_folder, seed)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
        unet=unet, scheduler=scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(prompt_embeds=_embeds(g, 1, 77, 64), pooled_prompt_embeds=_embeds(g, 1, 32),
                  negative_prompt_embeds=_embeds(g, 1, 77, 64),
                  negative_pooled_prompt_embeds=_embeds(g, 1, 32),
                  height=size, width=size, num_inference_steps=steps, guidance_scale=5.0)
    return pipe, kwargs


def tiny_wan(seed: int = 0, *, size: int = 128, frames: int = 9, steps: int = 4,
             scheduler: str = "unipc"):
    """Wan 2.1 T2V-shaped pipeline: 3-D RoPE, (1, 2, 2) patches, UniPC (the checkpoints' scheduler)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    # base_dim=8: the diffusers-test size (3) is numerically discontinuous with random weights.
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
            solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
            final_sigmas_type="zero", num_train_timesteps=1000)
    elif scheduler == "euler":
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    else:
        raise ValueError(f"scheduler must be 'unipc' or 'euler', got {scheduler!r}")
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=sched,
                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(prompt_embeds=_embeds(g, 1, 16, 32), negative_prompt_embeds=_embeds(g, 1, 16, 32),
                  height=size, width=size, num_frames=frames, num_inference_steps=steps,
                  guidance_scale=5.0)
    return pipe, kwargs


def tiny_wan_i2v(seed: int = 0, *, size: int = 128, frames: int = 9, steps: int = 4):
    """Wan 2.1 I2V-shaped pipeline: the tiny Wan with 16 + 4 + 16 input channels (state,
    first-frame mask, latent condition) and no CLIP image projection; ``image`` is a PIL
    image."""
    import numpy as np
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from PIL import Image

    t2v, kwargs = tiny_wan(seed, size=size, frames=frames, steps=steps)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=t2v.vae,
                                   scheduler=t2v.scheduler, image_processor=None,
                                   image_encoder=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(seed + 3)
    kwargs["image"] = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return pipe, kwargs


def tiny_flux2(seed: int = 0, *, size: int = 128, steps: int = 4):
    """FLUX.2-shaped pipeline: the diffusion runs on 2x2-patchified, batch-normalised VAE
    latents (128 channels at 1/16 of the pixels), 4-axis RoPE ids, guidance embedding, mu
    from FLUX.2's empirical rule."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                             norm_num_groups=4, latent_channels=32, use_quant_conv=False,
                             use_post_quant_conv=False)
    with torch.no_grad():  # running statistics of an imagined training set, not 0/1
        vae.bn.running_mean.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(seed))
        vae.bn.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed + 1))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                use_dynamic_shifting=True)
    pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(prompt_embeds=_embeds(g, 1, 12, 32), height=size, width=size,
                  num_inference_steps=steps, guidance_scale=4.0)
    return pipe, kwargs


def tiny_flux_kontext(seed: int = 0, *, size: int = 128, steps: int = 4):
    """FLUX.1-Kontext-shaped pipeline (the tiny FLUX transformer and VAE): a reference
    image's latents (``image=`` with the VAE's 16 channels, so no encode or resize) are
    appended to the sequence; ``max_area = size^2`` keeps the tiny size."""
    from diffusers import FluxKontextPipeline

    flux, kwargs = tiny_flux(seed, size=size, steps=steps)
    pipe = FluxKontextPipeline(scheduler=flux.scheduler, vae=flux.vae, text_encoder=None,
                               tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                               transformer=flux.transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 7)
    side = size // 8
    kwargs.update(image=_embeds(g, 1, 16, side, side), max_area=size * size)
    return pipe, kwargs


def tiny_zimage(seed: int = 0, *, size: int = 128, steps: int = 4):
    """Z-Image-shaped pipeline: single-stream DiT over a list of ``(C, 1, h, w)`` latents,
    2x2 patches, 3-axis RoPE, FLUX.1's VAE constants, true CFG on per-sample prompt lists
    (prompt embeddings of different lengths), Z-Image's scheduler (static shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6],
        axes_lens=[64, 64, 64])
    vae = _kl_vae(16, 0.3611, 0.1159, quant=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                          transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 1)
    kwargs = dict(prompt_embeds=[_embeds(g, 12, 16)], negative_prompt_embeds=[_embeds(g, 7, 16)],
                  height=size, width=size, num_inference_steps=steps, guidance_scale=4.0)
    return pipe, kwargs


def tiny_qwenimage(seed: int = 0, *, size: int = 128, steps: int = 4):
    """Qwen-Image-shaped pipeline: packed 2x2 latents, MMDiT with ``img_shapes`` RoPE, true
    CFG with the pipeline's norm rescale, the Qwen-Image (Wan-type) VAE with per-channel
    latent statistics, FLUX-style mu from the token count."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
        num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, use_dynamic_shifting=True,
        time_shift_type="exponential")
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                             transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.ones(1, 10, dtype=torch.long)
    kwargs = dict(prompt_embeds=_embeds(g, 1, 10, 16), prompt_embeds_mask=mask,
                  negative_prompt_embeds=_embeds(g, 1, 10, 16), negative_prompt_embeds_mask=mask,
                  true_cfg_scale=4.0, height=size, width=size, num_inference_steps=steps)
    return pipe, kwargs


TINY_BUILDERS = {"flux": tiny_flux, "sd3": tiny_sd3, "sdxl": tiny_sdxl, "wan": tiny_wan,
                 "zimage": tiny_zimage, "qwenimage": tiny_qwenimage,
                 "flux_kontext": tiny_flux_kontext, "wan_i2v": tiny_wan_i2v, "flux2": tiny_flux2}


class TokenCounter:
    """Count a denoiser module's calls and the latent tokens it sees (forward pre-hook).

    ``tokens`` adds ``batch x positions`` per call: the packed sequence length for
    3-D inputs (FLUX), ``prod(grid)`` for ``(B, C, *grid)`` inputs (SD3, SDXL, Wan),
    so ratios between runs are token ratios (patching divides both alike). The hook
    sees CFG as the pipelines do it: batched (SD3, SDXL) or separate calls (Wan, FLUX
    true CFG)."""

    def __init__(self, module):
        self.module = module
        self.calls = 0
        self.tokens = 0
        self.grids: list[tuple[int, ...]] = []
        self._handle = None

    def _hook(self, module, args, kwargs):
        x = kwargs.get("hidden_states", kwargs.get("sample"))
        if x is None and args:
            x = args[0]
        self.calls += 1
        if isinstance(x, list | tuple):  # Z-Image: one (C, F, h, w) tensor per sample
            for item in x:
                n = 1
                for s in item.shape[1:]:
                    n *= int(s)
                self.tokens += n
            self.grids.append(tuple(int(s) for s in x[0].shape[2:]))
        elif x.ndim == 3:
            self.tokens += int(x.shape[0] * x.shape[1])
            self.grids.append((int(x.shape[1]),))
        else:
            n = 1
            for s in x.shape[2:]:
                n *= int(s)
            self.tokens += int(x.shape[0]) * n
            self.grids.append(tuple(int(s) for s in x.shape[2:]))

    def __enter__(self):
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False
