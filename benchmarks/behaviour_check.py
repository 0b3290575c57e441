"""Record, then compare, the exact output of every plan family on the shipped models.

A refactor of the core must not move a single bit of what users get. This script
samples every plan family (SPD keep/respace with each basis, fixed fractions,
Pyramidal windows with the pyramid and dct jumps, bottleneck, x0 cascades with
both upsamplers, scale-wise, optimal_plan) with every solver on the shipped UNet
and DiT, in seed-coupled and fresh-noise modes, on one thread, and records the
SHA-256 of each output tensor's bytes plus each plan's stage grids and times.

    python benchmarks/behaviour_check.py --record outputs/behaviour-before.json
    (change the code)
    python benchmarks/behaviour_check.py --compare outputs/behaviour-before.json

``--compare`` exits 1 and lists every case whose bytes (or plan) changed.
It also records the ``specdiff testbed`` table (its printed text).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from specdiff import models, sample

try:  # the plan search moved out of the core (specdiff.analysis); older trees: specdiff.optimize
    from specdiff.analysis import optimal_plan
except ImportError:
    from specdiff.optimize import optimal_plan
from specdiff.plans import (
    bottleneck_plan,
    cascade_plan,
    fraction_plan,
    full_plan,
    pyramidal_plan,
    scalewise_plan,
    spd_plan,
)

SIZE = (32, 32)
STEPS = 12
BATCH = 2


def _plans(m):
    grid = SIZE
    times = m.times(STEPS, grid)
    A, beta = m.spectrum(min(grid))
    mult = m.multiple if all(v % m.multiple == 0 for v in grid) else 1
    out = {"full": full_plan(times, grid)}
    for basis in ("dct", "fft", "haar", "pyramid"):
        out[f"spd {basis}"] = spd_plan(times, grid, (0.5, 1.0), A=A, beta=beta, delta=0.05,
                                       transition=basis, multiple=mult)
    out["spd respace"] = spd_plan(times, grid, (0.5, 1.0), A=A, beta=beta, delta=0.05,
                                  continuation="respace", multiple=mult)
    out["spd 3 stages"] = spd_plan(times, grid, (0.25, 0.5, 1.0), A=A, beta=beta, delta=0.05,
                                   multiple=mult)
    out["fraction"] = fraction_plan(times, grid, (0.5, 1.0), (0.4,), multiple=mult)
    out["pyramidal pyramid"] = pyramidal_plan(grid, (0.5, 1.0), (6, 6), profile=times,
                                              multiple=mult)
    out["pyramidal dct"] = pyramidal_plan(grid, (0.25, 0.5, 1.0), (4, 4, 4), profile=times,
                                          transition="dct", multiple=mult)
    out["bottleneck"] = bottleneck_plan(times, grid, low_scale=0.5, fractions=(0.1, 0.7),
                                        multiple=mult)
    out["cascade bicubic"] = cascade_plan(times, grid, (0.5, 1.0), renoise_at=(0.6,),
                                          steps=(6, 6), multiple=mult)
    out["cascade dct"] = cascade_plan(times, grid, (0.5, 1.0), renoise_at=(0.6,), steps=(6, 6),
                                      up="dct", multiple=mult)
    out["scalewise"] = scalewise_plan(grid, (0.5, 0.75, 1.0), (1.0, 0.8, 0.6, 0.0),
                                      multiple=mult)
    out["optimal"] = optimal_plan((A, beta), times, grid=grid, tolerance=0.05, multiple=mult,
                                  scales=(0.5,), max_stages=2)
    return out


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().contiguous().numpy().tobytes()).hexdigest()


def record() -> dict:
    torch.set_num_threads(1)
    res = {"samples": {}, "plans": {}}
    for name in ("unet", "dit"):
        m = models.load(name)
        for pname, plan in _plans(m).items():
            res["plans"][f"{name}/{pname}"] = [[list(s.grid), list(s.times)] for s in plan.stages]
            for solver in ("euler", "heun", "dpmpp_2m", "stochastic"):
                for coupled in (True, False):
                    gens = [torch.Generator().manual_seed(100 + i) for i in range(BATCH)]
                    noise = torch.stack([torch.randn(m.channels, *SIZE, generator=g) for g in gens])
                    x = sample(m, plan, solver=solver, noise=noise, generator=gens,
                               coupled=coupled)
                    res["samples"][f"{name}/{pname}/{solver}/{'coupled' if coupled else 'fresh'}"] = (
                        _digest(x))
    # the default table (128^2 latents, 50 steps, optimal_plan included); its header
    # line carries a wall time, so only the table rows are compared
    with tempfile.TemporaryDirectory() as tmp:
        tb = subprocess.run([sys.executable, "-m", "specdiff", "testbed", "--out", tmp],
                            capture_output=True, text=True, check=False)
    if tb.returncode != 0:
        raise SystemExit(f"specdiff testbed failed:\n{tb.stderr[-2000:]}")
    res["testbed"] = "\n".join(ln for ln in tb.stdout.splitlines() if ln.startswith("|"))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", type=Path)
    g.add_argument("--compare", type=Path)
    args = ap.parse_args(argv)
    res = record()
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(res, indent=1))
        print(f"recorded {len(res['samples'])} samples, {len(res['plans'])} plans -> {args.record}")
        return 0
    ref = json.loads(args.compare.read_text())
    bad = [k for k in ref["samples"] if res["samples"].get(k) != ref["samples"][k]]
    bad += [f"plan {k}" for k in ref["plans"] if res["plans"].get(k) != ref["plans"][k]]
    if res["testbed"] != ref["testbed"]:
        bad.append("testbed table")
    n = len(ref["samples"]) + len(ref["plans"]) + 1
    print(f"{n - len(bad)}/{n} identical (samples bit-for-bit, plans, testbed table)")
    for k in bad:
        print("  changed:", k)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
