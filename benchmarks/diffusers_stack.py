"""What users stack with SPD, side by side: step caches and torch.compile, alone and with SPD.

One process, one torch thread, a FLUX.1-architecture transformer (random weights, the real
3072 width, few blocks) with a FLUX.1-architecture VAE (random weights) for the decoded
comparison. Variants: ``pipe(...)`` plain; SPD (scales 0.5,1); each diffusers cache
(FirstBlockCache, TaylorSeer, MagCache with diffusers' FLUX ratios) on ``pipe(...)``, under
SPD with its step counters kept on the global step (``caches="global"``, the default), and
under SPD in the community pattern (``caches="full_resolution"``: coarse steps uncached,
the cache started afresh at full resolution); ``torch.compile`` (inductor) of the
transformer on ``pipe(...)`` and under SPD (compile and its first run are excluded:
warm-up). Every variant runs ``--repeats`` times, interleaved (all variants once, then
again), and reports:

* CPU time of the process (``time.process_time``; steadier than wall clock on this shared
  machine, and equal to it with one thread and no waiting) as the median over repeats,
  with the ratio to plain ``pipe(...)``;
* the transformer's calls that computed (a pre-hook inside the first block's attention);
* fidelity to plain ``pipe(...)`` with the same seed: relative L2 of the final latents and
  PSNR of the decoded images (dB, images in [0, 1]).

Random weights make the caches' data-dependent decisions (FirstBlockCache's residual
threshold, MagCache's ratios) arbitrary; the table shows what stacking costs and keeps,
not what a trained model would skip.

    python benchmarks/diffusers_stack.py --out outputs/diffusers_stack
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from specdiff.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402


def build(size: int, blocks: tuple[int, int], text: int):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=blocks[0], num_single_layers=blocks[1],
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    vae = AutoencoderKL(  # FLUX.1's VAE architecture
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False)
    sched = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=tr).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(1, text, 4096, generator=g),
              pooled_prompt_embeds=torch.randn(1, 768, generator=g), guidance_scale=3.5,
              height=size, width=size, max_sequence_length=text)
    return pipe, kw


def cache_configs(steps: int) -> dict:
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    return {
        "FirstBlockCache(0.2)": FirstBlockCacheConfig(threshold=0.2),
        "TaylorSeer(interval 2)": TaylorSeerCacheConfig(cache_interval=2,
                                                        disable_cache_before_step=3,
                                                        max_order=1),
        "MagCache(FLUX ratios)": MagCacheConfig(mag_ratios=FLUX_MAG_RATIOS,
                                                num_inference_steps=steps),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--blocks", default="1,1", help="double,single blocks")
    ap.add_argument("--text", type=int, default=64, help="T5 tokens")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default="outputs/diffusers_stack")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    blocks = tuple(int(v) for v in a.blocks.split(","))
    pipe, kw = build(a.size, blocks, a.text)
    kw["num_inference_steps"] = a.steps
    sp = SpectralPipeline.from_pipe(pipe)
    spd = dict(scales=(0.5, 1.0), delta=a.delta)
    plan = sp.get_plan(**kw, **spd)
    stages = " + ".join(f"{len(st.times) - 1}@{st.grid[0]}x{st.grid[1]}" for st in plan.stages)
    ran = []
    # inside the attention: a cache that serves the attention (TaylorSeer) or the block
    # (FirstBlockCache, MagCache) never reaches it
    counter = pipe.transformer.transformer_blocks[0].attn.to_q.register_forward_pre_hook(
        lambda m, args: ran.append(1))

    def run(variant: str):
        cache, use_spd = variant_setup[variant]
        if cache is not None:
            pipe.transformer.enable_cache(cache)
        ran.clear()
        try:
            t0 = time.process_time()
            mode = use_spd if isinstance(use_spd, str) else "global"
            call = (lambda **k: sp(**k, **spd, caches=mode)) if use_spd else pipe
            lat = call(**kw, generator=torch.Generator().manual_seed(0), output_type="latent")[0]
            seconds = time.process_time() - t0
        finally:
            if cache is not None:
                pipe.transformer.disable_cache()
        return seconds, len(ran), lat

    variant_setup = {"pipe(...)": (None, False), f"SPD delta {a.delta:g}": (None, True)}
    for name, cfg in cache_configs(a.steps).items():
        variant_setup[f"pipe + {name}"] = (cfg, False)
        variant_setup[f"SPD + {name}"] = (cfg, True)
        variant_setup[f"SPD + {name}, full-res only"] = (cfg, "full_resolution")
    variants = list(variant_setup)
    times = {v: [] for v in variants}
    results = {}
    with torch.no_grad():
        for rep in range(a.repeats):
            for v in variants:
                s, calls, lat = run(v)
                times[v].append(s)
                results[v] = (calls, lat)
                print(f"repeat {rep + 1}/{a.repeats} {v}: {s:.1f} s CPU, {calls} computed calls",
                      flush=True)
        if not a.no_compile:
            # the counting hook is Python state inside the compiled region: dynamo would
            # guard on it and recompile every call; compiling changes no computation, so
            # the compiled rows report the eager rows' call counts
            counter.remove()
            eager = pipe.transformer
            pipe.transformer = torch.compile(eager)
            for v in ("pipe(...)", f"SPD delta {a.delta:g}"):
                variant_setup[f"{v} + compile"] = variant_setup[v]
            compiled = ["pipe(...) + compile", f"SPD delta {a.delta:g} + compile"]
            for v in compiled:  # compile and warm up (not timed): every stage shape once
                run(v)
            for rep in range(a.repeats):
                for v in compiled:
                    s, _, lat = run(v)
                    times.setdefault(v, []).append(s)
                    results[v] = (results[v.removesuffix(" + compile")][0], lat)
                    print(f"repeat {rep + 1}/{a.repeats} {v}: {s:.1f} s CPU", flush=True)
            pipe.transformer = eager
            variants += compiled
        ref = results["pipe(...)"][1]
        ref_img = _decode(pipe, ref)
        rows = []
        for v in variants:
            calls, lat = results[v]
            img = _decode(pipe, lat)
            mse = float(((img - ref_img) ** 2).mean())
            rows.append(dict(
                variant=v, cpu_s=statistics.median(times[v]), all_s=times[v], calls=calls,
                rel_l2=float((lat - ref).norm() / ref.norm()),
                psnr=math.inf if mse == 0 else 10 * math.log10(1.0 / mse)))
    base = rows[0]["cpu_s"]
    lines = [f"FLUX.1-arch 3072w {blocks[0]}+{blocks[1]} blocks, {a.size}x{a.size}, {a.text} "
             f"text tokens, {a.steps} steps, random weights; CPU, 1 thread, torch "
             f"{torch.__version__}; SPD plan {stages}; {a.repeats} repeats (median CPU time).",
             "", "| variant | CPU s | vs pipe(...) | computed calls | latent rel L2 vs pipe | "
             "PSNR vs pipe (dB) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['cpu_s']:.1f} | {base / r['cpu_s']:.2f}x | "
                     f"{r['calls']} | {r['rel_l2']:.2e} | {r['psnr']:.1f} |")
    table = "\n".join(lines)
    cmd = "python benchmarks/diffusers_stack.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(os.path.join(a.out, "results.json"), {"rows": rows, "command": cmd.strip()})
    atomic_write_text(os.path.join(a.out, "results.md"), table + f"\n\nCommand: `{cmd.strip()}`\n")
    print("\n" + table)


def _decode(pipe, packed: torch.Tensor) -> torch.Tensor:
    """Packed FLUX latents -> images in [0, 1] through the (random-weight) VAE."""
    h = w = int(round(math.sqrt(packed.shape[1]))) * 2 * pipe.vae_scale_factor
    lat = pipe._unpack_latents(packed, h, w, pipe.vae_scale_factor)
    lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    return (pipe.vae.decode(lat, return_dict=False)[0].clamp(-1, 1) + 1) / 2


if __name__ == "__main__":
    main()
