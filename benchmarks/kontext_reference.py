"""FLUX.1 Kontext under SPD: the reference image's tokens at full resolution in every stage
or resized per stage, measured side by side on a tiny random-weight Kontext pipeline.

Per mode and delta: the transformer's token-steps relative to ``pipe(...)`` (a forward
pre-hook counts the sequence it sees, reference tokens included) and how far the SPD output
is from ``pipe(...)``'s with the same seed (relative L2 of the final latents), the median
over ``--seeds`` seeds. Random weights: this measures cost and deviation, not edit quality.

    python benchmarks/kontext_reference.py --size 256 --steps 20 --seeds 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter, tiny_flux_kontext  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--deltas", default="0.05,0.2")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    pipe, kw = tiny_flux_kontext(size=a.size, steps=a.steps)
    sp = SpectralPipeline.from_pipe(pipe)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    rows = []
    with torch.no_grad():
        refs, base_tokens = [], 0
        for s in range(a.seeds):
            with TokenCounter(pipe.transformer) as c:
                refs.append(pipe(**kw, generator=g(s), output_type="latent").images)
            base_tokens = c.tokens
        for d in (float(v) for v in a.deltas.split(",")):
            for mode in ("full", "stage"):
                devs, tokens = [], 0
                for s in range(a.seeds):
                    with TokenCounter(pipe.transformer) as c:
                        out = sp(**kw, generator=g(s), output_type="latent", scales=(0.5, 1.0),
                                 delta=d, reference=mode).images
                    tokens = c.tokens
                    devs.append(float((out - refs[s]).norm() / refs[s].norm()))
                rows.append((d, mode, base_tokens / tokens, statistics.median(devs),
                             min(devs), max(devs)))
    print(f"tiny FLUX Kontext, {a.size}x{a.size}, {a.steps} steps, reference latents "
          f"{a.size // 8}x{a.size // 8}, {a.seeds} seeds\n")
    print("| delta | reference | token-step saving vs pipe | latent rel L2 vs pipe (median, "
          "min-max) |\n|---:|---|---:|---|")
    for d, mode, ratio, med, lo, hi in rows:
        print(f"| {d:g} | {mode} | {ratio:.2f}x | {med:.3f} ({lo:.3f}-{hi:.3f}) |")


if __name__ == "__main__":
    main()
