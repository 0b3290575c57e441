"""``specdiff train | sample | bench | demo``: the embedded pixel-space models.

Thin layer: parse, call :mod:`specdiff.training`, :mod:`specdiff.models`,
:mod:`specdiff.analysis` (bench, generate), print. See docs/embedded-model.md.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from ..analysis.names import METHOD_KEYS as ALL_METHODS
from ..analysis.names import SPD_DELTAS
from ._args import floats as _floats
from ._args import ints as _ints
from ._args import json_object as _json_obj
from ._args import positive_int as _positive_int
from ._args import size as _size
from ._args import steps as _steps


def objective_files() -> list[str]:
    """The objectives shipped in ``specdiff/training/objectives/`` (one file each, named as
    the objective it registers), listed without importing them: parsing arguments stays
    free of torch. A test checks these are the names the registry finds."""
    import pkgutil

    folder = Path(__file__).resolve().parent.parent / "training" / "objectives"
    return sorted(m.name for m in pkgutil.iter_modules([str(folder)])
                  if m.name != "base" and not m.name.startswith("_"))


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train an embedded pixel-space flow model (UNet or DiT)",
        description="Train a velocity-prediction flow model on random multi-scale crops of "
        "natural photos (scikit-image's, or --data DIR), with EMA, a loss curve and resumable "
        "atomic checkpoints. Runs on CPU; `accelerate launch -m specdiff train ...` uses GPUs. "
        "Run time of the shipped recipes on a 2-core CPU: about 23 min (unet and dit, 3000 "
        "steps; the spd fine-tuning, 1200 steps: 22 min). Ctrl-C (or SIGTERM) finishes the "
        "running step, saves a checkpoint and exits 1; rerun the same command to resume, "
        "bit-exactly.")
    p.add_argument("--model", default=None, choices=("unet", "wgunet", "dit"),
                   help="architecture (default unet; wgunet for --objective slim; with --init, "
                   "the init model's)")
    p.add_argument("--model-config", type=_json_obj, default={},
                   help='JSON overrides of the model config, e.g. \'{"base": 16}\'')
    p.add_argument("--data", default="skimage", help="'skimage' (default) or a folder of images")
    p.add_argument("--out", required=True, help="output folder (resumes if it holds a run)")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps")
    p.add_argument("--sizes", type=_ints, default=None, help="crop sizes, e.g. 32,48,64,96")
    p.add_argument("--size-weights", type=_floats, default=None, help="probability of each size")
    p.add_argument("--pixels", type=int, default=None,
                   help="pixels per step (batch = pixels // size^2)")
    p.add_argument("--window", type=int, default=None,
                   help="smallest source window of a crop in pixels, for every crop size "
                   "(default 128: scale-consistent crops; 0 allows 1:1 crops at every size)")
    p.add_argument("--shift-size", type=int, default=None,
                   help="training-time resolution shift: size-S crops use shift S/N (default 64; 0 off)")
    p.add_argument("--init", default=None,
                   help="start from this model (shipped name or checkpoint path); its config is used")
    p.add_argument("--objective", default="flow", choices=objective_files(),
                   help="'flow': data targets; 'spd': SPD fine-tuning of --init on the states the "
                   "progressive sampler visits, the --init model as frozen teacher; 'slim': "
                   "distil a slim wavelet-gated UNet from --teacher (docs/slim.md)")
    p.add_argument("--spd-scales", type=_floats, default=None,
                   help="coarse/fine grid ratios of the SPD states (default 0.5)")
    p.add_argument("--spd-mix", type=_floats, default=None,
                   help="weights of coarse, post-transition and full-grid states (default 0.7,0,0.3)")
    p.add_argument("--spd-delta", type=float, default=None,
                   help="post-transition states start at SPD's switch time for this delta (default 0.1)")
    p.add_argument("--teacher", default=None,
                   help="objective slim: the frozen teacher (shipped name or checkpoint; "
                   "default unet)")
    p.add_argument("--lambda-spatial", type=float, default=None,
                   help="objective slim: weight of the feature-alignment term (default 0.1)")
    p.add_argument("--lambda-freq", type=float, default=None,
                   help="objective slim: weight of the inverse-spectrum output term (default 0.1)")
    p.add_argument("--freq-alpha", type=float, default=None,
                   help="objective slim: exponent of the DFT weight |F(x0)|^alpha (default -1)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has a run")
    p.add_argument("--stop-after", type=_positive_int, default=None,
                   help="stop after this many steps in this call (resume later)")
    p.add_argument("--cpu", action="store_true", help="force CPU even when GPUs are visible")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (1 avoids oversubscription on a shared machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sample", help="generate images with or without progressive (SPD) sampling",
        description="Sample an embedded model. --scales 1 is the full-resolution baseline; the "
        "same --seed gives pixel-comparable images in every mode (seed-coupled noise).")
    _model_args(p)
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--scales", type=_floats, default=(0.5, 1.0), help="stage scales, e.g. 0.5,1")
    p.add_argument("--delta", type=float, default=0.05, help="SPD noise-dominated tolerance")
    p.add_argument("--transition", default="dct", choices=("dct", "fft", "haar", "pyramid"))
    p.add_argument("--continuation", default="keep", choices=("keep", "respace"),
                   help="steps after a switch: 'keep' the grid (the paper's rule) or 'respace' them")
    p.add_argument("--cascade", action="store_true",
                   help="tuning-free self-cascade: sample at --pivot, upsample, re-noise at the "
                   "spectral time for --delta and continue at --size (an integer multiple)")
    p.add_argument("--cascade-strength", type=float, default=None,
                   help="with --cascade: re-noise at this fixed strength instead (official 0.7)")
    p.add_argument("--pivot", type=int, default=128,
                   help="the model's native size: the cascade's first stage (default 128)")
    p.add_argument("--out", required=True, help="output folder for PNGs and grid.png")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "bench", help="side-by-side benchmark: baseline vs SPD and related plans",
        description="In one process: full-resolution baseline, fewer full-res steps at matched "
        "cost, SPD over a delta sweep (2 and 3 stages), optimal_plan, Pyramidal Flow, bottleneck "
        "and an x0-renoise cascade. Reports wall-clock (median and spread), FLOP ratio, "
        "multi-scale SWD and RAPSD distance to held-out crops, paired PSNR/SSIM vs the baseline. "
        "Run time of the defaults on a 2-core CPU: about 1 hour (an estimate scaled from a "
        "measured --n 4 --repeats 1 run of the unet: 7.4 min, of which 4.5 min per batch of 4 "
        "images through all 37 plans; the defaults run 12 such batches, --repeats 1 runs 4). "
        "Each finished batch is saved in OUT/partial, so a stopped bench resumes where it was.")
    _model_args(p, default_model="unet", allow_gaussian=True)
    p.add_argument("--n", type=int, default=16, help="images per method (quality metrics)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats per method")
    p.add_argument("--time-batch", type=int, default=4, help="batch size of a timing repeat")
    p.add_argument("--deltas", type=_floats, default=SPD_DELTAS, help="SPD deltas")
    p.add_argument("--continuation", default="keep,respace",
                   help="SPD steps after a switch: 'keep' (the paper's rule: keep the grid, one "
                   "long step) and/or 'respace' (spread the remaining steps evenly)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset: {','.join(ALL_METHODS)}")
    p.add_argument("--n-real", type=int, default=256, help="held-out real crops for SWD/RAPSD")
    p.add_argument("--compare", default=None,
                   help="comma-separated other models (names, checkpoints or train folders) on "
                   "the same seeds and metrics: each runs the baseline and, with spd in "
                   "--methods, SPD; matched adds --model with fewer steps at their cost")
    p.add_argument("--bootstrap", type=int, default=0,
                   help="paired bootstrap of each row's SWD change vs the baseline over this "
                   "many seed resamples (5-95%% interval in the table; 0: off, try 100)")
    p.add_argument("--fd-model", default=None,
                   help="local Inception/CLIP model (TorchScript file or HF folder) for Frechet "
                   "distance; nothing downloads")
    p.add_argument("--out", default="outputs/bench",
                   help="output folder; finished batches are saved in OUT/partial as they end, "
                   "and rerunning the same command resumes from them")
    p.add_argument("--fresh", action="store_true",
                   help="discard OUT/partial (an unfinished bench, e.g. with another config) "
                   "and start over")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "demo", help="the README demo: short bench of the shipped UNet at 128^2 (~1.5 min)",
        description="Baseline vs SPD (delta 0.05, scales 0.5,1) from the same seeds on the "
        "shipped UNet at 128x128: prints the table, writes the image grid and spectrum plot. "
        "Run time of the defaults on a 2-core CPU: about 1.5 min (measured: 89 s).")
    p.add_argument("--model", default="unet")
    p.add_argument("--size", type=_size, default=(128, 128), help="HxW (default 128x128)")
    p.add_argument("--n-real", type=int, default=128, help="held-out real crops for SWD")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--n", type=int, default=8, help="seeds (images per method)")
    p.add_argument("--time-batch", type=int, default=2,
                   help="images per timed batch (n / time-batch timing samples)")
    p.add_argument("--steps", type=_steps, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--fresh", action="store_true",
                   help="discard OUT/partial (an unfinished demo) and start over")
    p.set_defaults(func=cmd_demo)


def _model_args(p, default_model="unet", allow_gaussian=False) -> None:
    extra = ", 'gaussian' (exact Gaussian testbed with the data spectrum)" if allow_gaussian else ""
    p.add_argument("--model", default=default_model,
                   help=f"'unet', 'dit', a .safetensors checkpoint or a train folder{extra}")
    p.add_argument("--size", type=_size, default=(128, 128), help="HxW, e.g. 128x128")
    p.add_argument("--steps", type=_steps, default=50, help="time-grid steps")
    p.add_argument("--shift", type=float, default=None,
                   help="SD3 time shift (default: sqrt(H*W)/64, at least 1)")
    p.add_argument("--solver", default="euler", choices=("euler", "heun", "dpmpp_2m"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (1 is steadier on a shared machine)")
    p.add_argument("--quiet", action="store_true")


def cmd_train(args) -> int:
    from ..fileio import check_output_dir
    from ..training.config import recipe_config
    from ..training.data import load_photos
    from ..training.engine import TrainingInterrupted
    from ..training.loop import train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    slim = {k: v for k, v in (("teacher", args.teacher), ("lambda_spatial", args.lambda_spatial),
                              ("lambda_freq", args.lambda_freq), ("alpha", args.freq_alpha))
            if v is not None}
    cfg = recipe_config(
        args.objective, model=args.model, model_config=args.model_config, init=args.init,
        options=slim or None,
        data=args.data, steps=args.steps, sizes=args.sizes, size_weights=args.size_weights,
        pixels=args.pixels, lr=args.lr, shift_size=args.shift_size, seed=args.seed,
        window=args.window, spd_scales=args.spd_scales, spd_mix=args.spd_mix,
        spd_delta=args.spd_delta, checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    check_output_dir(args.out, "--out")
    # read both splits now: an unreadable held-out image would otherwise surface in a later bench
    photos = load_photos(cfg.data, "train")
    if str(cfg.data) != "skimage":
        load_photos(cfg.data, "eval")
    command = "specdiff " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if Path(sys.argv[0]).name in ("specdiff", "__main__.py") else None
    try:
        res = train(cfg, args.out, resume=not args.no_resume, stop_after=args.stop_after,
                    progress=not args.quiet, cpu=args.cpu, command=command, photos=photos)
    except TrainingInterrupted as e:
        print(f"specdiff train: stopped by {e.signal_name} after step {e.step}/{cfg.steps}; "
              f"checkpoint saved to {e.path}: rerun the same command to resume", file=sys.stderr)
        return 1
    if res.removed_temp_files:
        print(f"removed {len(res.removed_temp_files)} temporary file(s) an interrupted checkpoint "
              f"write had left in {args.out}")
    last = res.history[-1] if res.history else None
    print(f"step {res.step}/{cfg.steps}" + (f", loss {last[1]:.4f}, {last[2] / 60:.1f} min"
                                               if last else ""))
    print(f"checkpoint: {Path(args.out) / 'train_state.safetensors'}; loss curve: "
          f"{Path(args.out) / 'loss.png'}")
    if res.model_path:
        print(f"model: {res.model_path} (load with --model {args.out})")
    return 0


def _threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cmd_sample(args) -> int:
    from ..analysis.generate import SampleConfig, generate

    _threads(args)
    if args.cascade_strength is not None and not args.cascade:
        raise ValueError("--cascade-strength needs --cascade")
    cascade = None if not args.cascade else (
        "spectral" if args.cascade_strength is None else "strength")
    strength = {} if args.cascade_strength is None else {"strength": args.cascade_strength}
    cfg = SampleConfig(model=args.model, size=tuple(args.size), steps=args.steps, shift=args.shift,
                       solver=args.solver, n=args.n, scales=tuple(args.scales), delta=args.delta,
                       transition=args.transition, continuation=args.continuation, seed=args.seed,
                       cascade=cascade, pivot=args.pivot, **strength)
    info = generate(cfg, args.out, progress=not args.quiet)
    print(f"{cfg.n} images in {info['seconds']:.1f} s ({info['plan']}); wrote {args.out}/grid.png "
          f"and {cfg.n} PNGs (image i uses seed {cfg.seed}+i)")
    return 0


def _bench_config(args):
    from ..analysis.bench import BenchConfig

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else ALL_METHODS
    return BenchConfig(model=args.model, size=tuple(args.size), steps=args.steps, shift=args.shift,
                       solver=args.solver, n=args.n, time_batch=args.time_batch,
                       repeats=args.repeats, deltas=tuple(args.deltas), methods=methods,
                       continuations=tuple(c.strip() for c in args.continuation.split(",")),
                       n_real=args.n_real, seed=args.seed, fd_model=args.fd_model,
                       threads=args.threads, bootstrap=args.bootstrap,
                       compare=tuple(m.strip() for m in args.compare.split(","))
                       if args.compare else ())


def _stopped(out) -> int:
    print(f"stopped; the finished batches are saved in {out}/partial ({out}/results.md lists "
          "them): rerun the same command to resume", file=sys.stderr)
    return 130


def cmd_bench(args) -> int:
    from ..analysis.bench import markdown_table, run_bench

    t0 = time.perf_counter()
    try:
        res = run_bench(_bench_config(args), args.out, progress=not args.quiet, fresh=args.fresh)
    except KeyboardInterrupt:
        return _stopped(args.out)
    print(markdown_table(res))
    print(f"wrote {args.out}/results.md, results.json, pareto.png, grid.png (rows: methods, "
          f"columns: seeds), spectrum.png in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_demo(args) -> int:
    from ..analysis.bench import demo_config, markdown_table, run_bench

    cfg = demo_config(model=args.model, size=tuple(args.size), steps=args.steps, n=args.n,
                      time_batch=args.time_batch, n_real=args.n_real, seed=args.seed,
                      threads=args.threads)
    t0 = time.perf_counter()
    print(f"specdiff demo: {cfg.model} at {cfg.size[0]}x{cfg.size[1]}, {cfg.steps} Euler steps, "
          f"{cfg.n} seeds; full-resolution baseline vs SPD (scales 0.5,1, delta 0.05) from the "
          "same noise")
    try:
        res = run_bench(cfg, args.out, progress=True, fresh=args.fresh)
    except KeyboardInterrupt:
        return _stopped(args.out)
    print(markdown_table(res))
    r = res["rows"][1]
    print(f"SPD: {r['speedup']:.2f}x faster in wall-clock ({r['flop_ratio']:.2f}x fewer FLOPs), "
          f"SWD {100 * r['swd_vs_baseline']:+.1f}% vs baseline, PSNR {r['psnr_vs_baseline']:.1f} dB "
          f"/ SSIM {r['ssim_vs_baseline']:.3f} against the baseline image from the same seed.")
    print(f"images: {args.out}/grid.png (top: baseline, bottom: SPD), spectra: "
          f"{args.out}/spectrum.png; {time.perf_counter() - t0:.0f} s")
    return 0
