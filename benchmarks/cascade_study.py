"""Tuning-free Self-Cascade on the embedded UNet at 256^2, side by side in one process.

Methods, same seeds (image ``i``: seed ``i``, ``analysis.bench.seeded_noise``):
* the base model sampled directly at 256^2 (``--steps`` steps, its resolution-shifted grid);
* self-cascade 128 -> 256 with the spectral re-noise time (``--delta``);
* self-cascade 128 -> 256 with the official fixed strength 0.7;
* the alternative a user would pick at the spectral cascade's cost: the base at 256^2 with
  fewer steps (matched FLOPs).

Reported: multi-scale SWD per Laplacian level (256, 128, 64, 32, 16: the coarse levels show
composition, the fine ones texture) and its mean against held-out photo crops at 256^2,
RAPSD distance, FLOPs per image relative to the direct run (``torch.utils.flop_counter``),
and CPU seconds per image (``time.process_time`` of this process, ``--threads`` threads).

    python benchmarks/cascade_study.py --n 32 --steps 30 --out outputs/cascade_study
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from specdiff.analysis.bench import seeded_noise  # noqa: E402
from specdiff.analysis.metrics import rapsd_distance, swd  # noqa: E402
from specdiff.cascade import cascade_grids, cascade_renoise_times, self_cascade_plan  # noqa: E402
from specdiff.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from specdiff.models import default_times, load  # noqa: E402
from specdiff.plans import full_plan, measure_eval_cost  # noqa: E402
from specdiff.sampling import sample  # noqa: E402
from specdiff.training.data import eval_crops  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="unet")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pivot", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n-real", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="outputs/cascade_study")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    model = load(a.model)
    full = (a.size, a.size)
    grids = cascade_grids((a.pivot, a.pivot), full)

    def times_at(g, steps=a.steps):
        return default_times(steps, g)

    spectral = cascade_renoise_times(grids, spectrum_at=lambda g: model.spectrum(g[-1]),
                                     delta=a.delta)
    plans = {
        f"direct {a.size}^2, {a.steps} steps": full_plan(times_at(full), full),
        f"self-cascade, spectral re-noise (delta {a.delta:g})":
            self_cascade_plan(times_at, grids, spectral, steps=a.steps),
        "self-cascade, strength 0.7": self_cascade_plan(times_at, grids, [0.7] * len(spectral),
                                                       steps=a.steps),
    }
    flops = measure_eval_cost(model, [g for g in grids], model.channels)
    base_cost = plans[next(iter(plans))].cost(flops)
    casc_cost = plans[list(plans)[1]].cost(flops)
    matched = max(1, round(a.steps * casc_cost / base_cost))
    plans[f"direct {a.size}^2, {matched} steps (the cascade's FLOPs)"] = full_plan(
        times_at(full, matched), full)
    samples = {k: [] for k in plans}
    cpu = {k: 0.0 for k in plans}
    with torch.no_grad():
        for start in range(0, a.n, a.batch):
            count = min(a.batch, a.n - start)
            noise, fresh = seeded_noise(0, model.channels, full, start, count)
            for k, p in plans.items():  # interleaved: drift hits every method alike
                gens = seeded_noise(0, model.channels, full, start, count)[1]
                c0 = time.process_time()
                x = sample(model, p, noise=noise, generator=gens)
                cpu[k] += time.process_time() - c0
                samples[k].append(x.float().clamp(-1, 1))
            print(f"{start + count}/{a.n} images", flush=True)
    real = eval_crops(a.n_real, a.size)
    rows = []
    for k, p in plans.items():
        x = torch.cat(samples[k])
        s = swd(real, x)
        rows.append(dict(method=k, plan=", ".join(f"{r['steps']}@{r['grid']}"
                                                   for r in p.describe("euler")),
                         flops=p.cost(flops) / base_cost, cpu_s=cpu[k] / a.n, swd=s["mean"],
                         levels=s["levels"], sizes=s["sizes"], rapsd=rapsd_distance(real, x)))
    sizes = rows[0]["sizes"]
    lines = [f"{a.model}, {a.size}^2 from a {a.pivot}^2 pivot, {a.n} seeds, {a.n_real} held-out "
             f"crops, Euler; CPU seconds per image with {a.threads} threads",
             "", "| method | plan | FLOPs vs direct | CPU s / image | SWD mean | SWD per level "
             f"({'/'.join(map(str, sizes))}) | RAPSD dist |", "|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lv = " / ".join(f"{v:.4f}" for v in r["levels"])
        lines.append(f"| {r['method']} | {r['plan']} | {r['flops']:.2f} | {r['cpu_s']:.2f} | "
                     f"{r['swd']:.4f} | {lv} | {r['rapsd']:.4f} |")
    table = "\n".join(lines)
    cmd = "python benchmarks/cascade_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(os.path.join(a.out, "results.md"), table + f"\n\nCommand: `{cmd.strip()}`\n")
    atomic_write_json(os.path.join(a.out, "results.json"), {"rows": rows, "command": cmd.strip()})
    print("\n" + table)


if __name__ == "__main__":
    main()
