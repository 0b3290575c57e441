"""Core commands: ``analyze``, ``schedule``, ``testbed``."""

from __future__ import annotations

import json
import os

import torch

from ..cli import CLIError
from ..fileio import atomic_write_text, save_figure
from ._args import floats as _floats
from ._args import size as _size


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
    p.add_argument("--steps", type=int, default=None, help="model evaluations (default: family's)")
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
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--schedule", default="flux",
                   help="'flux' (mu from the grid's 2x2 tokens) or 'shift:S' (SD3 shift S)")
    p.add_argument("--solvers", default="euler,heun")
    p.add_argument("--deltas", type=_floats, default=[0.01, 0.05, 0.1, 0.2])
    p.add_argument("--no-optimal", action="store_true", help="skip the optimal_plan search")
    p.add_argument("--out", default="outputs/testbed", help="folder for table, JSON and plot")
    p.set_defaults(func=cmd_testbed)

    p = sub.add_parser("analyze", help="fit the power spectrum of images/tensors/latents",
                       description="RAPSD plot, fitted A and beta, and the SPD switch times they "
                       "imply. Images are read as floats in [-1, 1] (the usual diffusion range).")
    p.add_argument("paths", nargs="*", help="images, .npy/.pt tensors (N,C,H,W) or folders")
    p.add_argument("--vae", default=None, help="local diffusers VAE folder: analyse its latents")
    p.add_argument("--images", default=None, help="image folder to encode with --vae")
    p.add_argument("--size", type=int, default=None,
                   help="centre-crop images to squares of this side (default: smallest side seen, "
                   "at most 512)")
    p.add_argument("--scales", type=_floats, default=[0.5, 1.0])
    p.add_argument("--delta", type=_floats, default=[0.01, 0.05, 0.1])
    p.add_argument("--steps", type=int, default=50, help="steps for the implied switch step")
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
    from ..plans import flow_times, spd_plan
    from ..presets import get_preset

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
    rows = []
    for d in args.delta:
        plan = spd_plan(times, grid, args.scales, spectrum=spec, delta=d,
                        continuation=args.continuation, multiple=multiple)
        meta = dict(plan.meta)
        ev = plan.evaluations()
        stages = []
        for i, st in enumerate(plan.stages):
            stages.append({
                "grid": list(st.grid), "evaluations": ev[i], "t_start": st.times[0],
                "t_end": st.times[-1],
                "t_star": meta["t_star"][i] if i < len(meta["t_star"]) else None,
                "t_new": plan.stages[i + 1].times[0] if i + 1 < len(plan.stages) else None,
            })
        rows.append({
            "delta": d, "stages": stages,
            "switch_steps": list(meta.get("switch_steps", [])),
            "cost_ratio_tokens": plan.cost("tokens") / steps,
            "cost_ratio_attention": plan.cost("attention") / steps,
            "speedup_tokens": plan.speedup_bound("tokens"),
            "speedup_attention": plan.speedup_bound("attention"),
        })
    if args.json:
        print(json.dumps({"what": what, "spectrum": [spec.A, spec.beta], "steps": steps,
                          "rows": rows}, indent=1))
    else:
        print(f"# SPD schedule: {what}, latent grid {'x'.join(map(str, grid))}, {steps} steps, "
              f"A={spec.A:g} beta={spec.beta:g}, continuation={args.continuation}")
        print("| delta | stage | grid | evaluations | t_start | t_end (t*) | t_new | switch step |"
              " cost ratio (tokens / tokens^2) | speed-up bound (tokens / tokens^2) |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
        for r in rows:
            for i, st in enumerate(r["stages"]):
                t_end = f"{st['t_end']:.4f}" + (f" ({st['t_star']:.4f})" if st["t_star"] else "")
                t_new = f"{st['t_new']:.4f}" if st["t_new"] else ""
                sw = str(r["switch_steps"][i]) if i < len(r["switch_steps"]) else ""
                last = i == len(r["stages"]) - 1
                cost = f"{r['cost_ratio_tokens']:.3f} / {r['cost_ratio_attention']:.3f}" if last else ""
                spd = f"{r['speedup_tokens']:.2f}x / {r['speedup_attention']:.2f}x" if last else ""
                print(f"| {r['delta']:g} | {i} | {'x'.join(map(str, st['grid']))} | "
                      f"{st['evaluations']} | {st['t_start']:.4f} | {t_end} | {t_new} | {sw} | "
                      f"{cost} | {spd} |")
    if args.plot:
        _snr_plot(args.plot, spec, grid, args.scales, rows, multiple)
        print(f"wrote {args.plot}")
    return 0


def _snr_plot(path, spec, grid, scales, rows, multiple):
    """Per-frequency SNR curves; each coarse stage's Nyquist curve bold, switches marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plans import stage_grids

    t = np.linspace(0.999, 0.001, 400)
    wmax = min(grid[-2:]) / 2

    def snr(w, tt):
        return ((1 - tt) / tt) ** 2 * spec.A * w ** (-spec.beta)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for w in np.geomspace(1, wmax, 5):
        ax.plot(t, snr(w, t), lw=0.8, alpha=0.6, label=f"w={w:.1f}")
    grids = stage_grids(grid, scales, multiple=multiple)
    for g in grids[:-1]:
        w = min(g[-2:]) / 2
        ax.plot(t, snr(w, t), lw=2.2, label=f"w={w:g} (Nyquist of {g[-2]}x{g[-1]})")
    for r in rows:
        for i, st in enumerate(r["stages"][:-1]):
            w = min(grids[i][-2:]) / 2
            ts = st["t_star"]
            ax.plot([ts], [snr(w, ts)], "ko", ms=5)
            ax.annotate(f"delta={r['delta']:g}: switch at step {r['switch_steps'][i]}",
                        (ts, snr(w, ts)), textcoords="offset points", xytext=(6, -12), fontsize=7)
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("t (1 = noise)")
    ax.set_ylabel("per-frequency SNR ((1-t)/t)^2 P(w)")
    ax.set_title(f"A={spec.A:g}, beta={spec.beta:g}, grid {'x'.join(map(str, grid))}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def cmd_testbed(args) -> int:
    import time

    from ..plans import flow_times, flux_times
    from ..testbed_compare import compare_on_testbed, long_step_study, markdown_table, save_results
    from ..testbeds import GaussianField

    spec = _spectrum(args, args.spectrum)
    grid = tuple(args.grid)
    sched = args.schedule
    if sched == "flux":
        tokens = (grid[0] // 2) * (grid[1] // 2)

        def times_fn(n):
            return flux_times(n, tokens)
    elif sched.startswith("shift:"):
        try:
            s = float(sched.split(":", 1)[1])
        except ValueError:
            raise CLIError(f"--schedule shift:S needs a number, got {sched!r}") from None

        def times_fn(n):
            return flow_times(n, s)
    else:
        raise CLIError(f"--schedule must be 'flux' or 'shift:S', got {sched!r}")
    solvers = [s for s in args.solvers.split(",") if s]
    field = GaussianField(spec.A, spec.beta, grid)
    t0 = time.perf_counter()
    rows = compare_on_testbed(field, times_fn, args.steps, solvers=solvers, deltas=args.deltas,
                              optimal=not args.no_optimal, progress=True)
    side = min(grid) // 2
    small = GaussianField(spec.A, spec.beta, (side, side))
    if sched == "flux":
        def small_times(n):
            return flux_times(n, (side // 2) ** 2)
    else:
        small_times = times_fn
    study = long_step_study(small, small_times)
    elapsed = time.perf_counter() - t0
    print(f"# Exact testbed: A={spec.A:g} beta={spec.beta:g}, grid {grid[0]}x{grid[1]}, "
          f"{args.steps} steps, schedule {sched} (closed form, {elapsed:.1f} s)")
    print(markdown_table(rows))
    print(f"\n# SPD keep vs respace as steps grow ({side}x{side}, scales 0.5/1, delta 0.01, euler)")
    print("| steps | baseline W2 | keep W2 (x base) | respace W2 (x base) |")
    print("|---:|---:|---:|---:|")
    for r in study:
        print(f"| {r['steps']} | {r['baseline']:.5f} | {r['keep']:.5f} ({r['keep_ratio']:.2f}x) | "
              f"{r['respace']:.5f} ({r['respace_ratio']:.2f}x) |")
    files = save_results(rows, args.out, {"long_step_study": study, "grid": list(grid),
                                          "spectrum": [spec.A, spec.beta], "steps": args.steps})
    print("\nwrote " + ", ".join(files))
    return 0


# ---------------------------------------------------------------------------


IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _collect(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                if name.lower().endswith(IMAGE_EXT + (".npy", ".pt")):
                    files.append(os.path.join(p, name))
        elif os.path.exists(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    if not files:
        raise CLIError("no images (.png/.jpg/...) or tensors (.npy/.pt) found in the given paths")
    return files


def load_arrays(paths, size: int | None):
    """Images -> (N, C, s, s) float64 in [-1, 1], centre-cropped; tensors as stored."""
    import numpy as np
    from skimage import io, transform

    tensors, images = [], []
    for f in _collect(paths):
        if f.endswith(".npy"):
            tensors.append(torch.from_numpy(np.load(f)).to(torch.float64))
        elif f.endswith(".pt"):
            obj = torch.load(f, map_location="cpu", weights_only=True)
            if not isinstance(obj, torch.Tensor):
                raise CLIError(f"{f} does not hold a tensor")
            tensors.append(obj.to(torch.float64))
        else:
            try:
                im = io.imread(f)
            except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
                raise CLIError(f"cannot read image {f}: {e}") from None
            im = np.asarray(im, dtype=np.float64)
            if im.ndim == 2:
                im = im[..., None]
            im = im[..., :3] / (255.0 if im.max() > 1.5 else 1.0)
            images.append(im * 2 - 1)
    out = []
    for t in tensors:
        t = t[None, None] if t.ndim == 2 else (t[None] if t.ndim == 3 else t)
        if t.ndim < 4:
            raise CLIError(f"tensors must be (N, C, H, W) or (C, H, W), got {tuple(t.shape)}")
        out.append(t)
    if images:
        side = size or min(512, min(min(im.shape[:2]) for im in images))
        batch = []
        for im in images:
            h, w = im.shape[:2]
            s = min(h, w)
            crop = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            if s != side:
                crop = transform.resize(crop, (side, side), anti_aliasing=True, order=1)
            batch.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))))
        chans = max(b.shape[0] for b in batch)
        out.append(torch.stack([b.expand(chans, -1, -1) if b.shape[0] == 1 else b for b in batch]))
    return out


def cmd_analyze(args) -> int:
    from ..plans import PowerSpectrum, flow_times, spd_plan, stage_grids
    from ..spectral import fit_power_law, rapsd

    if args.vae:
        if not args.images:
            raise CLIError("--vae needs --images DIR (the images to encode)")
        try:
            from ..integrations.vae_spectrum import encode_images
        except ImportError as e:
            raise CLIError(f"--vae needs the diffusers integration: {e}") from None
        arrays = [encode_images(args.vae, args.images, size=args.size).to(torch.float64)]
        what = f"latents of {args.images} through {args.vae}"
    else:
        if not args.paths:
            raise CLIError("give image/tensor paths, or --vae PATH --images DIR")
        arrays = load_arrays(args.paths, args.size)
        what = ", ".join(args.paths)
    # one RAPSD per distinct spatial size, averaged with weights = sample count
    shapes = {tuple(a.shape[-2:]) for a in arrays}
    if len(shapes) > 1:
        raise CLIError(f"inputs have different spatial sizes {sorted(shapes)}; use --size or "
                       "analyse them separately")
    data = torch.cat([a.flatten(0, -3) for a in arrays])
    freqs, power = rapsd(data)
    h, w = data.shape[-2:]
    A, beta = fit_power_law(freqs, power, fmin=1.0)
    spec = PowerSpectrum(A, beta)
    grid = (int(h), int(w))
    print(f"# Spectrum of {what}: {data.shape[0]} frames of {h}x{w}")
    print(f"A = {A:.6g}, beta = {beta:.4f}   (P(w) = A w^-beta, w in cycles per image, DCT)")
    times = flow_times(args.steps, args.shift)
    print(f"\nImplied SPD switches on a {h}x{w} grid, {args.steps} steps, SD3 shift {args.shift}:")
    print("| delta | stage grid | t* | t_new | switch step | cost ratio (tokens) |")
    print("|---:|---|---:|---:|---:|---:|")
    results = []
    for d in args.delta:
        try:
            plan = spd_plan(times, grid, args.scales, spectrum=spec, delta=d)
        except ValueError as e:
            print(f"| {d:g} | {e} | | | | |")
            continue
        meta = dict(plan.meta)
        for i, g in enumerate(stage_grids(grid, args.scales)[:-1]):
            t_new = plan.stages[i + 1].times[0]
            print(f"| {d:g} | {g[0]}x{g[1]} | {meta['t_star'][i]:.4f} | {t_new:.4f} | "
                  f"{meta['switch_steps'][i]} | {plan.cost() / args.steps:.3f} |")
        results.append({"delta": d, "t_star": list(meta["t_star"]),
                        "switch_steps": list(meta["switch_steps"])})
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "rapsd.png")
    _rapsd_plot(png, freqs, power, A, beta, what)
    js = os.path.join(args.out, "spectrum.json")

    atomic_write_text(js, json.dumps({"A": A, "beta": beta, "grid": list(grid),
                                      "frames": int(data.shape[0]),
                                      "freqs": freqs.tolist(), "power": power.tolist(),
                                      "spd": results}, indent=1))
    print(f"\nwrote {png}, {js}")
    return 0


def _rapsd_plot(path, freqs, power, A, beta, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.loglog(freqs.numpy(), power.numpy(), ".", ms=3, label="RAPSD (DCT)")
    ax.loglog(freqs.numpy(), (A * freqs ** (-beta)).numpy(), "-",
              label=f"fit A={A:.3g}, beta={beta:.3f}")
    ax.set_xlabel("frequency (cycles per image)")
    ax.set_ylabel("power")
    ax.set_title(title[:60], fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
