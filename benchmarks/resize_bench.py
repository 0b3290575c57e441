"""How long does a transition take next to one model evaluation?

Times ``specdiff.spectral.resize`` on float32 latent batches of 4 x 16 channels,
64^2 -> 128^2 (FLUX 1024^2) and 128^2 -> 256^2 (FLUX 2048^2), for each basis, and, in
the same process, one forward pass of a single FLUX.1 transformer block at full
width (3072 hidden, 24 heads, 4096 image + 512 text tokens, random weights).
FLUX.1-dev runs 57 such blocks per evaluation, so a resize that is cheaper
than one block is negligible next to a model evaluation.

    .venv/bin/python benchmarks/resize_bench.py [--repeats 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from specdiff.spectral import pyramid_renoise, resize


def timeit(fn, repeats, device):
    fn()  # warm-up (caches, allocator)
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out), min(out), max(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-block", action="store_true", help="skip the FLUX block timing")
    args = ap.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for side in (64, 128):
        x = torch.randn(4, 16, side, side, device=dev, generator=g)
        new = (2 * side, 2 * side)
        noise = torch.randn(4, 16, *new, device=dev, generator=g)
        for basis in ("dct", "fft", "haar"):
            med, lo, hi = timeit(partial(resize, x, 0.85, new, noise=noise, basis=basis),
                                 args.repeats, dev)
            rows.append((f"resize {basis} (4,16,{side},{side}) -> {new[0]}^2", med, lo, hi))
        med, lo, hi = timeit(partial(pyramid_renoise, x, 0.85, noise=noise), args.repeats, dev)
        rows.append((f"pyramid_renoise (4,16,{side},{side})", med, lo, hi))
    if not args.no_block:
        from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

        block = FluxSingleTransformerBlock(dim=3072, num_attention_heads=24, attention_head_dim=128)
        block = block.to(dev).eval()
        hs = torch.randn(1, 4096, 3072, device=dev)
        enc = torch.randn(1, 512, 3072, device=dev)
        temb = torch.randn(1, 3072, device=dev)
        with torch.no_grad():
            med, lo, hi = timeit(lambda: block(hs, enc, temb), max(3, args.repeats // 5), dev)
        rows.append(("one FLUX.1 single block, batch 1, 4608 tokens", med, lo, hi))
    print(f"device: {dev} ({torch.get_num_threads()} threads)")
    print("| operation | median ms | min ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, med, lo, hi in rows:
        print(f"| {name} | {med * 1e3:.2f} | {lo * 1e3:.2f} | {hi * 1e3:.2f} |")


if __name__ == "__main__":
    main()
