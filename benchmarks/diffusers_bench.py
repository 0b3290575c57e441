"""SPD speed on FLUX.1- and Wan 2.1-architecture transformers (random weights), side by side.

For each model: the diffusers pipeline's own loop (``pipe(...)``), our loop at full
resolution (``scales=(1.0,)``, to show the loop itself costs nothing) and SPD
(``scales=(0.5, 1.0)``) over a delta sweep, all in one process, interleaved per
repeat so that machine drift hits every row alike. Reported per row: the
denoising wall clock (median of repeats, ``output_type="latent"``: no VAE, no text
encoders; embeddings are random tensors of the real shapes), speed-up over
``pipe(...)``, the token-step ratio measured with a forward hook (sum over calls of
batch x latent positions) and the plan's attention-cost bound, the fraction of
the token-step prediction the wall clock achieves, and peak memory (CUDA: peak
allocated; CPU: peak resident-set increase, sampled every 5 ms).

Architectures (random weights, full hidden size, fewer blocks; ``--blocks``):
* FLUX.1-dev: 24 heads x 128 = 3072 wide, T5 4096-d x 512 tokens, pooled 768,
  RoPE axes (16, 56, 56), guidance embedding; FLUX-dev scheduler (mu from tokens).
* Wan 2.1 T2V-1.3B: 12 heads x 128 = 1536 wide, FFN 8960, umT5 4096-d x 512 tokens,
  UniPC (flow shift 5.0 as in SPD's reference runs), CFG 5.0 (two calls per step).

Full sizes (the default, for a GPU): FLUX 1024^2 50 steps; Wan 480x832, 81 frames,
50 steps. ``--preset cpu`` is the reduced run that fits this 2-core machine (see
``--help``); whatever runs, the table states the sizes that ran.

    python benchmarks/diffusers_bench.py                 # full sizes (GPU)
    python benchmarks/diffusers_bench.py --preset cpu    # reduced, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter  # noqa: E402

PRESETS = {
    # issue 5: FLUX at 1024^2 with 50 steps, Wan at 480x832x81 frames
    "full": dict(flux_size=(1024, 1024), flux_steps=50, flux_blocks=(2, 4), flux_text=512,
                 wan_size=(480, 832), wan_frames=81, wan_steps=50, wan_blocks=2, repeats=3),
    # this machine: 2 shared CPU cores. Full widths kept; fewer blocks, pixels, frames,
    # steps and FLUX text tokens (T5 max_sequence_length 128 instead of 512).
    "cpu": dict(flux_size=(384, 384), flux_steps=20, flux_blocks=(1, 1), flux_text=128,
                wan_size=(256, 416), wan_frames=17, wan_steps=20, wan_blocks=1, repeats=3),
}


# ---------------------------------------------------------------------------- models


def flux_pipe(blocks, device, dtype, text_tokens=512):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=blocks[0], num_single_layers=blocks[1],
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    sched = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(scheduler=sched, vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=tr)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(1, text_tokens, 4096, generator=g).to(device, dtype),
              pooled_prompt_embeds=torch.randn(1, 768, generator=g).to(device, dtype),
              guidance_scale=3.5)
    return pipe, kw


def wan_pipe(blocks, device, dtype):
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    tr = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
        out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=blocks,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, solver_order=2,
        solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
        num_train_timesteps=1000)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=sched,
                       transformer=tr)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(1, 512, 4096, generator=g).to(device, dtype),
              negative_prompt_embeds=torch.randn(1, 512, 4096, generator=g).to(device, dtype),
              guidance_scale=5.0)
    return pipe, kw


# ---------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory of a block: CUDA peak allocated, or CPU peak RSS increase (sampled)."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.peak = 0

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._base)
            time.sleep(0.005)

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._rss()
            self._stop = threading.Event()
            self._t = threading.Thread(target=self._watch, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, self._rss() - self._base)
        return False


def run_once(fn, module, device):
    with TokenCounter(module) as tc, PeakMemory(device) as mem:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    x = out[0]
    if not torch.isfinite(x.float()).all():
        raise RuntimeError("non-finite output: random weights overflowed; use float32")
    return dict(seconds=dt, tokens=tc.tokens, calls=tc.calls, peak_bytes=mem.peak)


def bench_model(name, pipe, kw, call, steps, deltas, repeats, device, log):
    """Rows for one model: pipe(...), ours at full res, SPD per delta."""
    sp = SpectralPipeline.from_pipe(pipe)
    module = pipe.transformer
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    variants = [("diffusers pipe(...)", None), ("specdiff scales=(1,)", (1.0,))]
    variants += [(f"SPD 0.5,1 delta={d:g}", d) for d in deltas]
    plans = {}
    for label, v in variants[1:]:
        if isinstance(v, tuple):
            plans[label] = sp.get_plan(**kw, **call, num_inference_steps=steps, scales=v)
        else:
            plans[label] = sp.get_plan(**kw, **call, num_inference_steps=steps, delta=v)

    def runner(v):
        if v is None:
            return lambda: pipe(**kw, **call, num_inference_steps=steps, generator=g(),
                                output_type="latent", return_dict=False)
        if isinstance(v, tuple):
            return lambda: sp(**kw, **call, num_inference_steps=steps, generator=g(),
                              output_type="latent", return_dict=False, scales=v)
        return lambda: sp(**kw, **call, num_inference_steps=steps, generator=g(),
                          output_type="latent", return_dict=False, delta=v)

    # warm-up: every grid once (allocator, kernels), 2 steps
    for _, v in variants:
        with torch.no_grad():
            if v is None:
                pipe(**kw, **call, num_inference_steps=2, generator=g(), output_type="latent")
            else:
                sp(**kw, **call, num_inference_steps=2, generator=g(), output_type="latent",
                   **({"scales": v} if isinstance(v, tuple) else {"delta": v}))
    results = {label: [] for label, _ in variants}
    for r in range(repeats):
        for label, v in variants:  # interleaved: drift hits every row alike
            res = run_once(runner(v), module, device)
            results[label].append(res)
            log(f"{name} repeat {r + 1}/{repeats} {label}: {res['seconds']:.2f} s, "
                f"{res['calls']} calls, {res['tokens']} tokens")
    base = results[variants[0][0]]
    t_base = statistics.median(x["seconds"] for x in base)
    tok_base = base[0]["tokens"]
    rows = []
    for label, _ in variants:
        rs = results[label]
        t = statistics.median(x["seconds"] for x in rs)
        tok_ratio = tok_base / rs[0]["tokens"]
        plan = plans.get(label)
        stages = ("full" if plan is None else
                  " + ".join(f"{st.steps}@{'x'.join(map(str, st.grid))}" for st in plan.stages))
        rows.append(dict(
            model=name, variant=label, stages=stages, calls=rs[0]["calls"],
            seconds_median=t, seconds_all=[x["seconds"] for x in rs],
            speedup=t_base / t, token_step_ratio=tok_ratio,
            attention_bound=(plan.speedup_bound("attention") if plan is not None else 1.0),
            fraction_of_token_prediction=(t_base / t) / tok_ratio,
            peak_mb=max(x["peak_bytes"] for x in rs) / 2**20,
        ))
    return rows


def exactness() -> str:
    """Tiny random-weight pipelines of every family: ``scales=(1,)`` vs ``pipe(...)``
    (max abs difference of latents and of decoded outputs), and SPD's calls/tokens."""
    from specdiff.integrations.tiny import TINY_BUILDERS

    spectrum = {"sd3": "flux", "sdxl": "flux"}  # the others: their default (FLUX.1 VAE, Wan)
    lines = ["| family (tiny, 128 px, 4 steps) | max abs diff latents | max abs diff decoded | "
             "SPD calls = pipe calls | SPD token ratio |", "|---|---:|---:|:---:|---:|"]
    for fam, build in TINY_BUILDERS.items():
        pipe, kw = build()
        sp = SpectralPipeline.from_pipe(pipe)
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        diffs = []
        for ot in ("latent", "np"):
            a = torch.as_tensor(pipe(**kw, generator=g(), output_type=ot)[0])
            b = torch.as_tensor(sp(**kw, generator=g(), output_type=ot, scales=(1.0,))[0])
            diffs.append(float((a - b).abs().max()))
        with TokenCounter(pipe.transformer if hasattr(pipe, "transformer") else pipe.unet) as c1:
            pipe(**kw, generator=g(), output_type="latent")
        with TokenCounter(pipe.transformer if hasattr(pipe, "transformer") else pipe.unet) as c2:
            sp(**kw, generator=g(), output_type="latent", spectrum=spectrum.get(fam))
        lines.append(f"| {fam} | {diffs[0]:.1e} | {diffs[1]:.1e} | "
                     f"{'yes' if c1.calls == c2.calls else 'NO'} ({c2.calls}) | "
                     f"{c1.tokens / c2.tokens:.2f}x |")
    return "\n".join(lines)


def markdown(rows, meta) -> str:
    lines = [
        f"Device: {meta['device']}; dtype {meta['dtype']}; torch {meta['torch']}, diffusers "
        f"{meta['diffusers']}; {meta['repeats']} repeats (median), interleaved.",
        "",
        "| model (what ran) | variant | stages (steps@latent grid) | calls | wall s (median) | "
        "speed-up vs pipe | token-step ratio | attention bound | wall / token prediction | "
        "peak MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {meta['models'][r['model']]} | {r['variant']} | {r['stages']} | {r['calls']} | "
            f"{r['seconds_median']:.2f} | {r['speedup']:.2f}x | {r['token_step_ratio']:.2f}x | "
            f"{r['attention_bound']:.2f}x | {100 * r['fraction_of_token_prediction']:.0f}% | "
            f"{r['peak_mb']:.0f} |")
    return "\n".join(lines)


def _atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="presets: " + json.dumps(PRESETS))
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--models", default="flux,wan")
    ap.add_argument("--deltas", default="0.01,0.05,0.1")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--flux-size", default=None, help="HxW px (overrides the preset)")
    ap.add_argument("--flux-steps", type=int, default=None)
    ap.add_argument("--flux-blocks", default=None, help="double,single blocks")
    ap.add_argument("--flux-text", type=int, default=None, help="T5 tokens (512 real)")
    ap.add_argument("--wan-size", default=None, help="HxW px")
    ap.add_argument("--wan-frames", type=int, default=None)
    ap.add_argument("--wan-steps", type=int, default=None)
    ap.add_argument("--wan-blocks", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="outputs/diffusers_bench")
    ap.add_argument("--exactness", action="store_true",
                    help="only the tiny-pipeline exactness table (seconds, no timing)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.exactness:
        with torch.no_grad():
            print(exactness())
        return
    cfg = dict(PRESETS[a.preset])
    hw = lambda s: tuple(int(v) for v in s.lower().split("x"))  # noqa: E731
    for k in ("flux_steps", "flux_text", "wan_frames", "wan_steps", "wan_blocks", "repeats"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    if a.flux_size:
        cfg["flux_size"] = hw(a.flux_size)
    if a.wan_size:
        cfg["wan_size"] = hw(a.wan_size)
    if a.flux_blocks:
        cfg["flux_blocks"] = tuple(int(v) for v in a.flux_blocks.split(","))
    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    deltas = [float(v) for v in a.deltas.split(",")]
    os.makedirs(a.out, exist_ok=True)
    import diffusers

    dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    meta = dict(device=dev_name, dtype=str(dtype).replace("torch.", ""), torch=torch.__version__,
                diffusers=diffusers.__version__, repeats=cfg["repeats"], preset=a.preset,
                config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                models={}, command=" ".join(["python", "benchmarks/diffusers_bench.py",
                                             *(argv if argv is not None else sys.argv[1:])]))
    log_path = os.path.join(a.out, "log.txt")
    logf = open(log_path, "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    rows = []
    with torch.no_grad():
        for name in a.models.split(","):
            if name == "flux":
                h, w = cfg["flux_size"]
                b = cfg["flux_blocks"]
                pipe, kw = flux_pipe(b, device, dtype, cfg["flux_text"])
                call = dict(height=h, width=w, max_sequence_length=max(cfg["flux_text"], 1))
                steps = cfg["flux_steps"]
                meta["models"]["flux"] = (f"FLUX.1-arch 3072w {b[0]}+{b[1]} blocks, {h}x{w}, "
                                          f"{cfg['flux_text']} text tok, {steps} steps")
            elif name == "wan":
                h, w = cfg["wan_size"]
                f = cfg["wan_frames"]
                pipe, kw = wan_pipe(cfg["wan_blocks"], device, dtype)
                call = dict(height=h, width=w, num_frames=f)
                steps = cfg["wan_steps"]
                meta["models"]["wan"] = (f"Wan2.1-arch 1536w {cfg['wan_blocks']} blocks, "
                                         f"{h}x{w}x{f}f, {steps} steps, CFG")
            else:
                raise SystemExit(f"unknown model {name!r}")
            log(f"== {meta['models'][name]} on {dev_name}")
            rows += bench_model(name, pipe, kw, call, steps, deltas, cfg["repeats"], device, log)
            del pipe
            _atomic_write(os.path.join(a.out, "results.json"),
                          json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    _atomic_write(os.path.join(a.out, "results.md"), table + "\n")
    print("\n" + table)
    print(f"\nwrote {a.out}/results.md, results.json, log.txt")
    logf.close()


if __name__ == "__main__":
    main()
