"""Core commands: ``analyze``, ``schedule``, ``testbed``.

Thin layer: parse, call :mod:`specdiff.analysis` (schedule, testbed, spectrum), print.
"""

from __future__ import annotations

import json
import os
import time

from ..analysis.names import SPD_DELTAS
from ..cli import CLIError
from ..fileio import atomic_write_text, check_output_dir, check_output_file
from ._args import floats as _floats
from ._args import positive_int as _positive_int
from ._args import size as _size
from ._args import steps as _steps


def register(sub) -> None:
    p = sub.add_parser("schedule", help="SPD switch steps, times and predicted cost for a model",
                       description="Table of stages, switch step, t*, t_new, evaluations per stage "
                       "and predicted cost ratio for a model family or a given spectrum.")
    p.add_argument("--model", choices=["flux", "wan", "pixelgen"], default=None,
                   help="known family (latent geometry, schedule and spectrum)")
    p.add_argument("--A", type=float, help="spectrum amplitude (with --beta, instead of --model's)")
    p.add_argument("--beta", type=float, help="spectrum exponent")
    p.add_argument("--size", type=_size, default=None,
                   help="HxW in pixels for --model, else the grid itself (default 1024x1024 / 128)")
    p.add_argument("--frames", type=int, default=None, help="video frames (wan: 4k+1, default 81)")
    p.add_argument("--steps", type=_steps, default=None, help="model evaluations (default: family's)")
    p.add_argument("--shift", type=float, default=None, help="SD3-style time shift")
    p.add_argument("--mu", type=float, default=None, help="FLUX mu (default: from full-res tokens)")
    p.add_argument("--scales", type=_floats, default=[0.5, 1.0], help="e.g. 0.5,1 or 0.25,0.5,1")
    p.add_argument("--delta", type=_floats, default=[0.01, 0.05, 0.1],
                   help="noise-dominated tolerance(s), comma-separated")
    p.add_argument("--continuation", choices=["keep", "respace"], default="keep")
    p.add_argument("--plot", default=None, help="write a PNG of per-frequency SNR with the switches")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("testbed", help="exact W2 vs cost of plans on the Gaussian testbed",
                       description="Closed-form comparison (no sampling) of the baseline, fewer "
                       "steps at matched cost, SPD, Pyramidal Flow, bottleneck, x0 cascade and "
                       "optimal_plan on a power-law Gaussian field.")
    p.add_argument("--spectrum", default="flux", help="flux | wan | pixelgen (or use --A/--beta)")
    p.add_argument("--A", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--grid", type=_size, default=(128, 128), help="latent grid (default 128x128)")
    p.add_argument("--steps", type=_steps, default=50)
    p.add_argument("--schedule", default="flux",
                   help="'flux' (mu from the grid's 2x2 tokens) or 'shift:S' (SD3 shift S)")
    p.add_argument("--solvers", default="euler,heun")
    p.add_argument("--deltas", type=_floats, default=SPD_DELTAS)
    p.add_argument("--no-optimal", action="store_true", help="skip the optimal_plan search")
    p.add_argument("--out", default="outputs/testbed", help="folder for table, JSON and plot")
    p.set_defaults(func=cmd_testbed)

    p = sub.add_parser("analyze", help="fit the power spectrum of images/tensors/latents",
                       description="RAPSD plot, fitted A and beta, and the SPD switch times they "
                       "imply. Images are read as floats in [-1, 1] (the usual diffusion range).")
    p.add_argument("paths", nargs="*", help="images, .npy/.pt tensors (N,C,H,W) or folders")
    p.add_argument("--vae", default=None, help="local diffusers VAE folder: analyse its latents")
    p.add_argument("--images", default=None, help="image folder to encode with --vae")
    p.add_argument("--size", type=_positive_int, default=None,
                   help="centre-crop images to squares of this side (default: smallest side seen, "
                   "at most 512)")
    p.add_argument("--scales", type=_floats, default=[0.5, 1.0])
    p.add_argument("--delta", type=_floats, default=[0.01, 0.05, 0.1])
    p.add_argument("--steps", type=_steps, default=50, help="steps for the implied switch step")
    p.add_argument("--shift", type=float, default=3.0, help="SD3 shift of the implied schedule")
    p.add_argument("--out", default="outputs/analyze", help="folder for the plot and JSON")
    p.set_defaults(func=cmd_analyze)


# ---------------------------------------------------------------------------


def _spectrum(args, default: str | None):
    from ..plans import PowerSpectrum, get_spectrum

    if args.A is not None or args.beta is not None:
        if args.A is None or args.beta is None:
            raise CLIError("give both --A and --beta")
        return PowerSpectrum(args.A, args.beta, "custom")
    if default is None:
        raise CLIError("choose --model flux|wan|pixelgen or give --A and --beta")
    return get_spectrum(default)


def cmd_schedule(args) -> int:
    from ..analysis.schedule import schedule_rows, schedule_table, snr_plot
    from ..plans import flow_times
    from ..presets import get_preset

    if args.plot:
        check_output_file(args.plot, "--plot")
    if args.model:
        preset = get_preset(args.model)
        h, w = args.size or (1024, 1024)
        grid = preset.latent_grid(h, w, args.frames)
        steps = args.steps or preset.default_steps
        times = preset.times(steps, grid, shift=args.shift, mu=args.mu)
        multiple = preset.multiple
        spec = _spectrum(args, args.model)
        what = f"{args.model} {h}x{w}" + (f"x{args.frames or 81}f" if preset.temporal_factor else "")
    else:
        spec = _spectrum(args, None)
        h, w = args.size or (128, 128)
        grid = (h, w) if args.frames is None else (args.frames, h, w)
        steps = args.steps or 50
        times = flow_times(steps, args.shift or 1.0)
        multiple = 1
        what = f"grid {'x'.join(map(str, grid))}"
    rows = schedule_rows(times, grid, args.scales, spec, args.delta,
                         continuation=args.continuation, multiple=multiple)
    if args.json:
        print(json.dumps({"what": what, "spectrum": [spec.A, spec.beta], "steps": steps,
                          "rows": rows}, indent=1))
    else:
        print(f"# SPD schedule: {what}, latent grid {'x'.join(map(str, grid))}, {steps} steps, "
              f"A={spec.A:g} beta={spec.beta:g}, continuation={args.continuation}")
        print(schedule_table(rows))
    if args.plot:
        snr_plot(args.plot, spec, grid, args.scales, rows, multiple)
        print(f"wrote {args.plot}")
    return 0


def cmd_testbed(args) -> int:
    from ..analysis.testbed import markdown_table, run_testbed, save_results, study_table

    check_output_dir(args.out, "--out")
    spec = _spectrum(args, args.spectrum)
    grid = tuple(args.grid)
    solvers = [s for s in args.solvers.split(",") if s]
    t0 = time.perf_counter()
    res = run_testbed(spec, grid, args.steps, schedule=args.schedule, solvers=solvers,
                      deltas=args.deltas, optimal=not args.no_optimal, progress=True)
    elapsed = time.perf_counter() - t0
    side = res["study_side"]
    print(f"# Exact testbed: A={spec.A:g} beta={spec.beta:g}, grid {grid[0]}x{grid[1]}, "
          f"{args.steps} steps, schedule {args.schedule} (closed form, {elapsed:.1f} s)")
    print(markdown_table(res["rows"]))
    print(f"\n# SPD keep vs respace as steps grow ({side}x{side}, scales 0.5/1, delta 0.01, euler)")
    print(study_table(res["study"]))
    files = save_results(res["rows"], args.out, {"long_step_study": res["study"],
                                                 "grid": list(grid), "spectrum": [spec.A, spec.beta],
                                                 "steps": args.steps})
    print("\nwrote " + ", ".join(files))
    return 0


def cmd_analyze(args) -> int:
    import torch

    from ..analysis.schedule import check_deltas
    from ..analysis.spectrum import (
        TENSOR_EXTENSIONS,
        collect_files,
        count_text,
        fit_arrays,
        fit_record,
        implied_switches,
        load_arrays,
        rapsd_plot,
        switch_table,
    )
    from ..plans import check_scales

    check_output_dir(args.out, "--out")
    check_deltas(args.delta, "--delta")
    check_scales(args.scales)
    if args.vae:
        if not args.images:
            raise CLIError("--vae needs --images DIR (the images to encode)")
        try:
            from ..integrations.vae_spectrum import encode_images
        except ImportError as e:
            raise CLIError(f"--vae needs the diffusers integration: {e}") from None
        arrays = [encode_images(args.vae, args.images, size=args.size).to(torch.float64)]
        what = f"latents of {args.images} through {args.vae}"
        images = len(arrays[0])
    else:
        if not args.paths:
            raise CLIError("give image/tensor paths, or --vae PATH --images DIR")
        arrays = load_arrays(args.paths, args.size)
        what = ", ".join(args.paths)
        images = sum(not f.lower().endswith(TENSOR_EXTENSIONS) for f in collect_files(args.paths))
    fit = fit_arrays(arrays)
    h, w = fit.grid
    # images (or tensor samples / video frames), not fit.frames: that counts every channel
    print(f"# Spectrum of {what}: {count_text(fit, images)} of {h}x{w}")
    print(f"A = {fit.A:.6g}, beta = {fit.beta:.4f}   (P(w) = A w^-beta, w in cycles per image, DCT)")
    rows = implied_switches(fit, args.steps, args.shift, args.scales, args.delta)
    print(f"\nImplied SPD switches on a {h}x{w} grid, {args.steps} steps, SD3 shift {args.shift}:")
    print(switch_table(rows))
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "rapsd.png")
    rapsd_plot(png, fit, what)
    js = os.path.join(args.out, "spectrum.json")
    atomic_write_text(js, json.dumps(fit_record(fit, rows), indent=1))
    print(f"\nwrote {png}, {js}")
    return 0
