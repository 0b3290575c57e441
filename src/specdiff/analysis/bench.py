"""Side-by-side benchmark of sampling plans on one model, in one process (DESIGN.md section 9).

The methods and their constants are :mod:`specdiff.analysis.methods` (the
same as the exact testbed's). For each method (a :class:`specdiff.plans.Plan`) the same ``n`` seeds are
sampled; every sample starts from the same full-resolution noise tensor
(seed-coupled), so the baseline and each progressive plan are comparable
pixel by pixel. Measured per method:

- wall-clock: the ``n`` images are generated in batches of ``time_batch``;
  methods are interleaved batch by batch (round robin), so load drift on a
  shared machine hits every method alike; each batch is one timing sample
  (``repeats`` passes give more); reported as median and min-max spread, and
  the speed-up is the ratio of medians to the baseline's;
- FLOPs: per-evaluation FLOPs of the model on every grid counted by
  ``torch.utils.flop_counter`` times the plan's evaluations (the spectral
  transitions, a few DCT matmuls, are not counted: < 0.5% of one evaluation);
- quality: multi-scale SWD and RAPSD log-spectral distance to held-out real
  crops (photos never used in training), paired PSNR/SSIM against the
  baseline from the same seed, and Frechet distance when a local feature
  model is given. Reference rows frame the SWD: other held-out crops (the
  floor), crops of the training photos (what a perfect model of its training
  data would score) and exact samples of a Gaussian field with the training
  data's fitted power spectrum and colour covariance (the quality bar).

Outputs in ``out``: ``results.md`` (the table), ``results.json``, ``pareto.png``
(SWD vs cost), ``grid.png`` (same seeds across methods), ``spectrum.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    save_figure,
)
from ..images import image_grid, save_png
from ..plans import Plan, PowerSpectrum, measure_eval_cost, stage_grids
from ..sampling import sample
from ..spectral import dct, idct, make_noise, rapsd
from . import methods
from . import metrics as M
from .methods import ALL_METHODS
from .schedule import check_deltas, check_steps

__all__ = ["BenchConfig", "BenchModel", "run_bench", "build_plans", "markdown_table",
           "gaussian_reference", "load_bench_model", "seeded_noise", "demo_config", "ALL_METHODS"]


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures (defaults: ``make bench``)."""

    model: str = "unet"
    size: tuple[int, int] = (128, 128)
    steps: int = 50
    shift: float | None = None  # None: the model's default (sqrt(HW)/64)
    solver: str = "euler"
    n: int = 16
    time_batch: int = 4
    repeats: int = 1  # timing passes over the n images
    deltas: tuple[float, ...] = methods.SPD_DELTAS
    continuations: tuple[str, ...] = methods.CONTINUATIONS  # SPD after each switch (spd_plan)
    methods: tuple[str, ...] = ALL_METHODS
    n_real: int = 256
    seed: int = 0
    fd_model: str | None = None
    optimal_tolerances: tuple[float, ...] = (0.0, 0.25)
    threads: int | None = None
    # other models on the same seeds, noise and metrics (analysis/compare.py): each runs the
    # baseline and, with "spd" in methods, the SPD plans; "matched" adds the main model at
    # each of their costs
    compare: tuple[str, ...] = ()
    # paired bootstrap of the SWD change vs the baseline: resamples of the seeds (the same
    # resample for every row), reported as the 5-95% interval; 0: off
    bootstrap: int = 0

    def validate(self) -> BenchConfig:
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {','.join(ALL_METHODS)}")
        if "baseline" not in self.methods:
            raise ValueError("the methods must include 'baseline' (everything is relative to it)")
        if self.n < 2 or self.time_batch < 1 or self.repeats < 1 or self.steps < 2:
            raise ValueError("need n >= 2, time_batch >= 1, repeats >= 1 and steps >= 2")
        if not self.continuations or any(c not in methods.CONTINUATIONS for c in self.continuations):
            raise ValueError(f"continuations must be 'keep' and/or 'respace', got {self.continuations}")
        if self.n % self.time_batch:
            raise ValueError(f"n={self.n} must be a multiple of time_batch={self.time_batch}")
        if any(s < 16 for s in self.size):
            raise ValueError(f"size {self.size} is too small for the multi-scale SWD (>= 16)")
        self._check_counts()
        return self

    def _check_counts(self) -> None:
        check_steps(self.steps)
        check_deltas(self.deltas, "deltas (--deltas)")
        if self.n_real < 2:
            raise ValueError(f"n_real (--n-real) must be at least 2 held-out crops for SWD/RAPSD "
                             f"(default 256), got {self.n_real}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or not (
                self.bootstrap == 0 or self.bootstrap >= 10):
            raise ValueError(f"bootstrap (--bootstrap) is a number of seed resamples: 0 (off) or "
                             f">= 10 (100 is a good choice), got {self.bootstrap!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive number of CPU threads, got {self.threads}")
        if self.fd_model:
            M.check_feature_model(self.fd_model)  # before the sampling, not after it
        if self.compare:
            from .compare import check_compared

            check_compared(self)


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


@dataclass
class BenchModel:
    """A denoiser plus what the benchmark needs to build plans for it."""

    denoiser: object
    name: str
    channels: int
    multiple: int
    spectrum: tuple[float, float]  # (A, beta) of the data at the benchmark size
    data: str = "skimage"
    field: object = None  # the GaussianField when the model is the exact testbed
    window: int = 128  # crops' smallest source window (training/data.py), for real crops
    compared: dict = dataclasses.field(default_factory=dict)  # key -> BenchModel (analysis/compare.py)

    @property
    def denoisers(self):
        """What :func:`~specdiff.sampling.sample` walks the plans with: the denoiser, or with
        compared models the mapping ``{"default": it, key: theirs}``."""
        if not self.compared:
            return self.denoiser
        return {"default": self.denoiser, **{k: o.denoiser for k, o in self.compared.items()}}

    def times(self, steps: int, grid, shift=None) -> torch.Tensor:
        from ..models import default_times

        return default_times(steps, grid, shift)

    def stage_multiple(self, grid) -> int:
        """The multiple stage grids are rounded to: the model's when every side of ``grid`` is a
        multiple of it (no internal padding), else 1."""
        return self.multiple if all(int(v) % self.multiple == 0 for v in grid) else 1


def load_bench_model(name: str, size: tuple[int, int]) -> BenchModel:
    """``unet``/``dit``/path -> the trained model; ``gaussian`` -> the exact Gaussian testbed
    with the (grey, per-channel) power law fitted to the training crops at ``size``."""
    if name == "gaussian":
        from ..testbeds import GaussianField
        from ..training.data import fit_spectrum, load_photos

        g = torch.Generator().manual_seed(0)
        A, beta = fit_spectrum(load_photos("skimage", "train").crops(256, min(size), g))
        fld = GaussianField(A, beta, size, channels=3)
        return BenchModel(fld.denoiser, "gaussian", 3, 1, (A, beta), "skimage", fld)
    from ..models import load
    from ..training.data import WINDOW, fit_spectrum, load_photos

    m = load(name)
    data = str(m.meta.get("data", "skimage"))
    window = int(m.meta.get("window", WINDOW))
    if m.meta.get("spectrum"):
        spec = m.spectrum(min(size))
    else:  # e.g. a mid-training state: fit the training data now
        g = torch.Generator().manual_seed(0)
        spec = fit_spectrum(load_photos(data, "train").crops(256, min(size), g, window=window))
    return BenchModel(m, name, m.channels, m.multiple, spec, data, window=window)


# ---------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------


def build_plans(cfg: BenchConfig, bm: BenchModel, flops: dict, *,
                progress: bool = False) -> list[Plan]:
    """The benchmark's plans (:mod:`specdiff.analysis.methods`, in ``cfg.methods``);
    ``flops`` maps grids to measured per-eval FLOPs (filled in here for the grids
    the plans use). A method this grid or step count cannot express is reported
    and skipped. ``progress``: status lines and the plan search's bar on stderr."""
    grid = tuple(cfg.size)
    s = methods.Setting(lambda n: bm.times(n, grid, cfg.shift), cfg.steps, grid,
                        PowerSpectrum(*bm.spectrum), bm.stage_multiple(grid))
    want = set(cfg.methods)
    progressive: list[Plan] = []
    for key in methods.SPD_SCALES:
        if key in want:
            for cont in cfg.continuations:
                for d in cfg.deltas:
                    progressive += _made(lambda k=key, d=d, c=cont: methods.spd(s, k, d, c))
    if "optimal" in want:
        progressive += _optimal_plans(cfg, bm, s, flops, progress)
    for key, make in (("pyramidal", methods.pyramidal), ("bottleneck", methods.bottleneck),
                      ("cascade", methods.cascade)):
        if key in want:
            progressive += _made(lambda make=make: make(s))
    plans = [methods.baseline(s), *progressive]
    _measure(bm, flops, [st.grid for p in plans for st in p.stages], progress)
    if "matched" in want:
        plans += _matched_plans(cfg, s, progressive, flops)
    if bm.compared:
        from .compare import compared_plans, matched_for_compared

        theirs = compared_plans(cfg, bm.compared, flops, progress)
        plans += theirs
        if "matched" in want:
            taken = {p.steps for p in plans if p.stages[-1].model is None}
            plans += matched_for_compared(cfg, s, theirs, flops, taken)
    return plans


def _made(make) -> list[Plan]:
    try:
        return [make()]
    except ValueError as e:  # a plan this grid/step count cannot express: report, skip
        print(f"  (skipped: {e})")
        return []


def _optimal_plans(cfg: BenchConfig, bm: BenchModel, s: methods.Setting, flops: dict,
                   progress: bool = False) -> list[Plan]:
    """The plan search with the measured FLOPs as its cost model, once per tolerance."""
    _measure(bm, flops, [stage_grids(s.grid, (v, 1.0), multiple=s.multiple)[0]
                         for v in methods.optimal_scales(s)], progress)

    def cost(g, _f=flops):
        g = tuple(g)
        if g not in _f:
            _measure(bm, _f, [g])
        return _f[g]

    out = []
    for i, tol in enumerate(cfg.optimal_tolerances):
        # the search is minutes of exact-W2 evaluations on the testbed: its own bar
        _say(progress, f"optimal plan search {i + 1}/{len(cfg.optimal_tolerances)} "
                       f"(tolerance {tol:g}): the candidates' bar, then ~10 s refining the best")
        out += _made(lambda tol=tol: methods.optimal(s, solver=cfg.solver, tolerance=tol,
                                                     cost_model=cost, label=f"optimal tol={tol:g}",
                                                     progress=progress))
    return out


def _matched_plans(cfg: BenchConfig, s: methods.Setting, progressive, flops) -> list[Plan]:
    """Fewer full-resolution steps at the measured cost of each progressive plan (one
    plan per step count, fewer than the baseline's)."""
    out, seen = [], set()
    for p in progressive:
        mp = methods.matched(s, p.cost(flops, cfg.solver), solver=cfg.solver, cost_model=flops)
        if mp.steps in seen or mp.steps >= cfg.steps:
            continue
        seen.add(mp.steps)
        out.append(mp)
    return out


def _measure(bm: BenchModel, flops: dict, grids, progress: bool = False) -> None:
    todo = sorted({tuple(g) for g in grids} - set(flops))
    if todo:
        _say(progress, f"counting FLOPs per evaluation on {len(todo)} grid(s): "
                       + ", ".join("x".join(map(str, g)) for g in todo))
        flops.update(measure_eval_cost(bm.denoiser, todo, bm.channels))


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def gaussian_reference(real: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Exact samples of a Gaussian field with the data's power law and colour statistics.

    Colours are decorrelated by PCA of the real pixels; each principal channel
    gets its own fitted ``A w**-beta`` (DCT RAPSD, mean removed) and the DC
    variance of the real images; samples are rotated back and the mean added.
    This is the quality bar: a model must beat it to have learned structure
    beyond the spectrum.
    """
    from ..training.data import fit_spectrum

    c = real.shape[1]
    h, w = real.shape[-2:]
    mean = real.mean(dim=(0, 2, 3))
    pix = (real - mean[None, :, None, None]).permute(1, 0, 2, 3).reshape(c, -1).double()
    _, U = torch.linalg.eigh(pix @ pix.T / pix.shape[1])
    rot = torch.einsum("dc,nchw->ndhw", U.T.float(), real - mean[None, :, None, None])
    ky = torch.arange(h, dtype=torch.float64)[:, None]
    kx = torch.arange(w, dtype=torch.float64)[None, :]
    wfreq = torch.sqrt(ky**2 + kx**2) / 2
    out = torch.empty(n, c, h, w, dtype=torch.float64)
    for d in range(c):
        # not GaussianField: a fitted beta may be ~0 or negative (a flat channel), which a
        # GaussianField rejects but a reference sample can still use
        x = rot[:, d : d + 1]
        A, beta = fit_spectrum(x)
        var = A * wfreq.clamp_min(0.5) ** (-beta)
        var[0, 0] = float((dct(x.double())[..., 0, 0] ** 2).mean())  # the data's DC, not A
        z = make_noise((n, 1, h, w), generator, dtype=torch.float64)
        out[:, d : d + 1] = idct(z * var.sqrt())
    back = torch.einsum("cd,ndhw->nchw", U, out)
    return (back + mean.double()[None, :, None, None]).float()


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


@dataclass
class MethodResult:
    name: str
    stages: str
    evaluations: int
    flops: float
    times: list[float] = field(default_factory=list)
    swd: float = float("nan")
    swd_levels: list[float] = field(default_factory=list)
    lsd: float = float("nan")
    lsd_high: float = float("nan")  # RAPSD distance above a quarter of the side (see _quality)
    psnr: float = float("nan")
    ssim: float = float("nan")
    fd: float | None = None
    w2: float | None = None
    swd_interval: tuple[float, float] | None = None  # 5-95% of the paired bootstrap (relative)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def seeded_noise(seed: int, channels: int, size, start: int, count: int):
    """Full-resolution noise for images ``start .. start+count`` (image ``i`` uses seed
    ``seed + i`` whatever the batch: the same noise, and samples equal to within 1e-5, not
    bitwise, as batched kernels round differently) and per-image generators for any fresh
    noise."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]
    noise = make_noise((count, channels, *size), gens)
    fresh = [torch.Generator().manual_seed(10_000_019 + seed + i)
             for i in range(start, start + count)]
    return noise, fresh


def _say(progress: bool, msg: str) -> None:
    """One status line on stderr (stdout is the table), so no phase runs silently."""
    if progress:
        print(f"bench: {msg}", file=sys.stderr, flush=True)


def run_bench(cfg: BenchConfig, out: str | Path | None = None, *, progress: bool = True,
              grid_cols: int = 8, fresh: bool = False) -> dict:
    """Run the benchmark; write the outputs to ``out`` (if given); return the results dict.

    The work is split into ``repeats x (n / time_batch)`` units, one (repeat, batch)
    each, every method sampled on that batch in turn. With ``out``, each finished
    unit is saved at once in ``out/partial/`` (samples, timings, session id) with a
    partial ``results.md``; a later call with the same config and ``out`` reuses the
    finished units and runs only the rest, so its samples and quality numbers equal
    an uninterrupted run's (the noise of image ``i`` depends on ``i`` alone:
    :func:`seeded_noise`). A different config is refused (``ValueError``) unless
    ``fresh=True``, which discards the partial work. ``partial/`` is removed once
    the final outputs are written: ``results.json`` keeps every unit's timing and
    session, and the samples were only kept to resume. ``progress``: every phase
    reports on stderr (status lines, bars).
    """
    cfg = cfg.validate()
    if out is not None:
        out = check_output_dir(out, "the output folder (--out)")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    # the fingerprint is checked before any work, so a wrong --out fails at once
    part = _Partial(out, _fingerprint(cfg), fresh=fresh) if out is not None else None
    if part is not None and part.discarded:
        _say(progress, f"--fresh: discarded the partial bench in {out / PARTIAL_DIR}")
    _say(progress, f"loading model {cfg.model} ({cfg.size[0]}x{cfg.size[1]})")
    bm = load_bench_model(cfg.model, tuple(cfg.size))
    if cfg.compare:
        from .compare import load_compared

        _say(progress, f"loading the compared models {', '.join(cfg.compare)}")
        bm.compared = load_compared(cfg, bm)
    _say(progress, "building the methods' plans")
    flops: dict = {}
    plans = build_plans(cfg, bm, flops, progress=progress)
    _say(progress, f"{len(plans)} plans; {cfg.repeats} repeat(s) x {cfg.n // cfg.time_batch} "
                   f"batch(es) of {cfg.time_batch} images, every plan on each")
    from .compare import absolute_flops

    results = [MethodResult(p.name,
                            " + ".join(f"{r['steps']}@{r['grid']}" for r in p.describe(cfg.solver)),
                            sum(p.evaluations(cfg.solver)), absolute_flops(p, flops, cfg.solver))
               for p in plans]
    # readable and unique (two sessions can start in the same second, in one process)
    session = {"id": f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    units = [(rep, b) for rep in range(cfg.repeats) for b in range(cfg.n // cfg.time_batch)]
    done: dict = {}  # (repeat, batch) -> {"session": id, "times": [s per plan]}
    if part is not None:
        part.bind(plans, session)
        done = part.done()
        if done:
            _say(progress, f"resuming: {len(done)}/{len(units)} batches done (repeat x batch "
                           f"units in {out / PARTIAL_DIR}); running the other "
                           f"{len(units) - len(done)}")
    samples = _run_units(cfg, bm, plans, results, units, done, session["id"], part, progress)
    real, refs = _quality(cfg, bm, plans, results, samples, progress)
    res = _summary(cfg, bm, plans, results, refs, flops)
    res["timing"] = _timing_record(plans, units, done,
                                   part.sessions if part else {session["id"]: session})
    if out is not None:
        _say(progress, f"writing {out}/results.md, results.json and figures")
        write_outputs(out, res, plans, samples, real, cfg, grid_cols=grid_cols)
        part.remove()
    return res


def _run_units(cfg: BenchConfig, bm: BenchModel, plans, results, units, done: dict,
               session: str, part, progress: bool) -> list[torch.Tensor]:
    """Sample the units not in ``done`` (adding them to it and saving each to ``part``);
    set ``results``' times. Returns repeat 0's samples per plan, ``(n, C, H, W)``."""
    from tqdm.auto import tqdm

    todo = [u for u in units if u not in done]
    samples: dict[int, list[torch.Tensor]] = {}  # batch -> per plan (time_batch, C, H, W)
    if todo:
        _warm_up(cfg, bm, plans, progress)
    bar = tqdm(total=len(todo) * sum(p.steps for p in plans), desc="sampling", unit="step",
               disable=not progress, leave=False)

    in_bar = [0.0]  # seconds spent in tick during the current timed call

    def tick(_info):  # one tick per solver step: a 128^2 batch takes tens of seconds
        t = time.perf_counter()
        bar.update(1)
        in_bar[0] += time.perf_counter() - t

    for rep, b in todo:
        noise, gens = seeded_noise(cfg.seed, bm.channels, cfg.size, b * cfg.time_batch,
                                   cfg.time_batch)
        times, xs = [], []
        for k, p in enumerate(plans):
            bar.set_postfix_str(f"batch {len(done) + 1}/{len(units)}, method {k + 1}/"
                                f"{len(plans)}", refresh=False)
            in_bar[0] = 0.0
            t0 = time.perf_counter()
            x = sample(bm.denoisers, p, solver=cfg.solver, noise=noise, generator=gens,
                       callback=tick if progress else None)
            # the progress bar's own time is not the method's: leave it out of the timing
            times.append(time.perf_counter() - t0 - in_bar[0])
            if rep == 0:
                xs.append(x.float().clamp(-1, 1))
        done[(rep, b)] = {"session": session, "times": times}
        if rep == 0:
            samples[b] = xs
        if part is not None:
            part.add_unit(rep, b, done[(rep, b)], xs if rep == 0 else None)
            _set_times(results, units, done)
            atomic_write_text(part.dir.parent / "results.md",
                              _partial_markdown(cfg, bm, results, units, done, part.sessions))
    bar.close()
    _set_times(results, units, done)
    batches = cfg.n // cfg.time_batch
    for b in range(batches):
        if b not in samples:  # finished in an earlier session
            samples[b] = part.samples(b, len(plans))
    return [torch.cat([samples[b][k] for b in range(batches)]) for k in range(len(plans))]


def _quality(cfg: BenchConfig, bm: BenchModel, plans, results, samples, progress: bool):
    """Fill in ``results``' quality numbers; return the held-out crops and the reference
    rows ``{name: (swd, lsd)}``."""
    from tqdm.auto import tqdm

    from ..training.data import eval_crops

    _say(progress, f"quality: {cfg.n_real} held-out real crops at {cfg.size[0]}x{cfg.size[1]}")
    real = eval_crops(cfg.n_real, min(cfg.size), source=bm.data, seed=1234, window=bm.window)
    if tuple(real.shape[-2:]) != tuple(cfg.size):
        real = torch.nn.functional.interpolate(real, size=cfg.size, mode="bilinear",
                                               antialias=True, align_corners=False)
    extractor = M.load_feature_extractor(cfg.fd_model) if cfg.fd_model else None
    ref_swd = M.SlicedWasserstein(real)
    base = samples[0]
    for k, (r, x) in enumerate(tqdm(list(zip(results, samples, strict=True)), desc="metrics",
                                    unit="method", disable=not progress, leave=False)):
        s = ref_swd(x)
        r.swd, r.swd_levels = s["mean"], s["levels"]
        r.lsd = M.rapsd_distance(x, real)
        r.lsd_high = M.rapsd_distance(x, real, fmin=min(cfg.size) / 4)
        if k > 0:
            r.psnr = M.psnr(x, base)
            r.ssim = M.ssim(x, base)
        if extractor is not None:
            r.fd = M.frechet_distance(x, real, extractor)
        if bm.field is not None and methods.has_closed_form(plans[k]):
            r.w2 = bm.field.w2(plans[k], cfg.solver)
    if cfg.bootstrap:
        _say(progress, f"paired bootstrap of the SWD change: {cfg.bootstrap} seed resamples")
        for r, (lo, hi) in zip(results, paired_swd_intervals(ref_swd, samples, cfg.bootstrap,
                                                             cfg.seed), strict=True):
            r.swd_interval = (lo, hi)
    _say(progress, "reference rows: other held-out crops, training crops, Gaussian field")
    refs = {}
    g = torch.Generator().manual_seed(cfg.seed + 777)
    other = eval_crops(cfg.n, min(cfg.size), source=bm.data, seed=4321, window=bm.window)
    train_crops = _train_crops(bm.data, max(cfg.n, 256), min(cfg.size), seed=99,
                               window=bm.window)
    if tuple(other.shape[-2:]) == tuple(cfg.size):
        refs["held-out real crops (floor)"] = ref_swd(other)["mean"], M.rapsd_distance(other, real)
        tr = train_crops[: cfg.n]
        refs["training crops (a perfect model of the training data)"] = (
            ref_swd(tr)["mean"], M.rapsd_distance(tr, real))
        # the bar: a Gaussian field fitted, like the model, to the training crops
        gauss = gaussian_reference(train_crops, cfg.n, g)
        refs["Gaussian field fitted to training crops (bar)"] = (
            ref_swd(gauss)["mean"], M.rapsd_distance(gauss, real))
    return real, refs


def paired_swd_intervals(ref_swd, samples: list[torch.Tensor], resamples: int,
                         seed: int = 0) -> list[tuple[float, float]]:
    """5% and 95% quantiles of ``SWD(row) / SWD(baseline) - 1`` over bootstrap resamples of
    the seeds: each resample draws ``n`` seed indices with replacement and scores every row on
    the same ones (``samples[0]`` is the baseline), so the interval is of the paired change,
    not of two independent noises. The first row's interval is ``(0, 0)``."""
    n = samples[0].shape[0]
    g = torch.Generator().manual_seed(seed + 4241)
    rel: list[list[float]] = [[] for _ in samples]
    for _ in range(resamples):
        idx = torch.randint(n, (n,), generator=g)
        base = ref_swd(samples[0][idx])["mean"]
        for k, x in enumerate(samples):
            rel[k].append(0.0 if k == 0 else ref_swd(x[idx])["mean"] / base - 1)
    out = []
    for v in rel:
        q = torch.quantile(torch.tensor(v, dtype=torch.float64), torch.tensor([0.05, 0.95],
                                                                             dtype=torch.float64))
        out.append((float(q[0]), float(q[1])))
    return out


def _warm_up(cfg: BenchConfig, bm: BenchModel, plans, progress: bool) -> None:
    """One call per grid (kernel selection, caches) so that no method pays it in timing."""
    from tqdm.auto import tqdm

    dens = {None: bm.denoiser, **{k: o.denoiser for k, o in bm.compared.items()}}
    with torch.no_grad():
        for key, g in tqdm(sorted({(st.model or "", st.grid) for p in plans for st in p.stages}),
                           desc="warm-up", unit="grid", disable=not progress, leave=False):
            dens[key or None](torch.zeros(cfg.time_batch, bm.channels, *g),
                              torch.full((cfg.time_batch,), 0.5))


def _set_times(results: list[MethodResult], units, done: dict) -> None:
    # unit order (repeat-major), whichever session ran each unit
    for k, r in enumerate(results):
        r.times = [done[u]["times"][k] for u in units if u in done]


def _timing_record(plans, units, done: dict, sessions: dict) -> dict:
    """Per-unit wall-clock with the session that measured it (a resumed bench mixes them)."""
    used = sorted({done[u]["session"] for u in units})
    return {
        "sessions": [{"id": s, **{k: v for k, v in sessions.get(s, {}).items() if k != "id"}}
                     for s in used],
        "units": [{"repeat": rep, "batch": b, "session": done[(rep, b)]["session"],
                   "wall_s": {p.name: t for p, t in zip(plans, done[(rep, b)]["times"],
                                                        strict=True)}}
                  for rep, b in units],
    }


# ---------------------------------------------------------------------------
# partial work: what lets a stopped bench resume
# ---------------------------------------------------------------------------

PARTIAL_DIR = "partial"
PARTIAL_FORMAT = "specdiff-bench-partial-v1"


def _fingerprint(cfg: BenchConfig) -> dict:
    """What must match for finished units to be reused: the config, the model's weights,
    torch and the thread count (any of them can change the samples' bits or the timings)."""
    from ..models import checkpoint_path
    from ..models.checkpoint import sha256_file

    fp = json.loads(json.dumps(asdict(cfg)))
    # a retrained checkpoint at the same path must not be mixed with the old one's samples
    fp["model_sha256"] = None if cfg.model == "gaussian" else sha256_file(checkpoint_path(cfg.model))
    if cfg.compare:
        fp["compare_sha256"] = [sha256_file(checkpoint_path(m)) for m in cfg.compare]
    fp["torch"] = torch.__version__
    fp["torch_threads"] = torch.get_num_threads()
    return fp


def _plan_record(plans) -> list[dict]:
    return [{"name": p.name, "stages": [{"grid": list(st.grid), "times": [float(t) for t in st.times]}
                                        for st in p.stages]} for p in plans]


class _Partial:
    """``out/partial/``: ``state.json`` (format, fingerprint, plans, sessions, finished
    units with their per-plan wall-clock) and ``batch_BBBB.safetensors`` (repeat 0's
    samples of batch ``B``: key ``plan_KKK`` is plan ``K``'s ``(time_batch, C, H, W)``
    float32, clamped to [-1, 1]). A unit's samples are written before the state that lists it,
    each file atomically, so a stop at any point leaves a consistent folder."""

    def __init__(self, out: Path, fingerprint: dict, *, fresh: bool = False):
        self.dir = Path(out) / PARTIAL_DIR
        self.path = self.dir / "state.json"
        self.discarded = fresh and self.dir.exists()
        if self.discarded:
            shutil.rmtree(self.dir)
        self.state = {"format": PARTIAL_FORMAT, "fingerprint": fingerprint, "plans": None,
                      "sessions": {}, "units": []}
        if not self.path.is_file():
            return
        try:
            st = json.loads(self.path.read_text())
            ok = isinstance(st, dict) and st.get("format") == PARTIAL_FORMAT
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{self.path} is not a readable partial bench; use another --out, "
                             "or --fresh to discard it")
        diff = [f"{k}: {st['fingerprint'].get(k)!r} there, {v!r} now"
                for k, v in fingerprint.items() if st["fingerprint"].get(k) != v]
        if diff:
            raise ValueError(f"{self.dir} holds an unfinished bench with another config "
                             f"({'; '.join(diff[:3])}); use another --out, or --fresh to "
                             "discard it")
        self.state = st

    @property
    def sessions(self) -> dict:
        return self.state["sessions"]

    def bind(self, plans, session: dict) -> None:
        """Check the plans against the recorded ones (the same config on changed code or
        model metadata can build other plans) and register this session."""
        rec = _plan_record(plans)
        if self.state["plans"] is not None and self.state["plans"] != rec:
            raise ValueError(f"{self.dir} holds an unfinished bench whose plans differ from "
                             "this run's (the code or the model's metadata changed); use "
                             "another --out, or --fresh to discard it")
        self.state["plans"] = rec
        self.sessions[session["id"]] = {k: v for k, v in session.items() if k != "id"}
        self._write_state()

    def done(self) -> dict:
        """Finished units ``(repeat, batch) -> {"session", "times"}``; a repeat-0 unit whose
        samples file is gone is dropped (it runs again)."""
        out = {}
        for u in self.state["units"]:
            if u["repeat"] == 0 and not self._batch_file(u["batch"]).is_file():
                continue
            out[(u["repeat"], u["batch"])] = {"session": u["session"], "times": u["times"]}
        return out

    def add_unit(self, rep: int, b: int, unit: dict, xs: list[torch.Tensor] | None) -> None:
        from ..models.checkpoint import atomic_save_safetensors

        if xs is not None:
            atomic_save_safetensors(self._batch_file(b), {f"plan_{k:03d}": x
                                                          for k, x in enumerate(xs)},
                                    {"format": PARTIAL_FORMAT})
        self.state["units"] = [u for u in self.state["units"]
                               if (u["repeat"], u["batch"]) != (rep, b)]
        self.state["units"].append({"repeat": rep, "batch": b, **unit})
        self._write_state()

    def samples(self, b: int, n_plans: int) -> list[torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._batch_file(b)
        try:
            t = load_file(path)
            return [t[f"plan_{k:03d}"] for k in range(n_plans)]
        except (OSError, KeyError, SafetensorError) as e:
            raise ValueError(f"{path} is unreadable ({e}); rerun with --fresh to start the "
                             "bench over") from None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _batch_file(self, b: int) -> Path:
        return self.dir / f"batch_{b:04d}.safetensors"

    def _write_state(self) -> None:
        atomic_write_json(self.path, self.state)


def _partial_markdown(cfg: BenchConfig, bm: BenchModel, results, units, done: dict,
                      sessions: dict) -> str:
    """``results.md`` while a bench runs: timing so far, which units are done, quality
    pending (the final table replaces it)."""
    base = results[0].median
    lines = [
        f"**Partial results**: {len(done)}/{len(units)} batches (repeat x batch units) done; "
        "quality (SWD, RAPSD, PSNR, SSIM) is pending until all are. Rerun the same command to "
        "resume (finished units are reused); the final table replaces this file. Other files "
        "here (results.json, *.png), if any, are from an earlier finished run.",
        "",
        f"model `{bm.name}`, {cfg.size[0]}x{cfg.size[1]}, {cfg.steps} steps {cfg.solver}, "
        f"n={cfg.n} seeds (batches of {cfg.time_batch}), {cfg.repeats} repeat(s)",
        "",
        "| method | stages (steps@grid) | wall s/batch median [min-max] so far | timed batches "
        "| speed-up so far | SWD x1e3 | RAPSD dB | PSNR dB | SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        wall = (f"{r.median:.2f} [{min(r.times):.2f}-{max(r.times):.2f}]" if r.times else "-")
        speed = f"{base / r.median:.2f}x" if r.times else "-"
        lines.append(f"| {r.name} | {r.stages} | {wall} | {len(r.times)} | {speed} | pending "
                     "| pending | pending | pending |")
    lines.append("")
    batches = cfg.n // cfg.time_batch
    for rep in range(cfg.repeats):
        got = [b for b in range(batches) if (rep, b) in done]
        lines.append(f"- repeat {rep}: batches done {_ranges(got) or 'none'} of 0-{batches - 1} "
                     "(every method)")
    used = sorted({u["session"] for u in done.values()})
    lines.append(f"- timings from {len(used)} session(s): "
                 + ", ".join(f"{s} ({sum(u['session'] == s for u in done.values())} units, "
                             f"{sessions.get(s, {}).get('threads', '?')} threads)" for s in used))
    return "\n".join(lines) + "\n"


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(f"{xs[i]}" if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)


def _train_crops(data: str, n: int, size: int, seed: int, window: int) -> torch.Tensor:
    from ..training.data import load_photos

    return load_photos(data, "train").crops(n, size, torch.Generator().manual_seed(seed),
                                            window=window)


def _summary(cfg, bm, plans, results, refs, flops) -> dict:
    base = results[0]
    rows = []
    for p, r in zip(plans, results, strict=True):
        speed = base.median / r.median
        flop_ratio = base.flops / r.flops
        rows.append({
            "method": r.name, "stages": r.stages, "evaluations": r.evaluations,
            "transition": p.transition if len(p.stages) > 1 else "-",
            "wall_median_s": r.median, "wall_min_s": min(r.times), "wall_max_s": max(r.times),
            "wall_samples": len(r.times), "speedup": speed, "flop_ratio": flop_ratio,
            "speedup_over_flop_ratio": speed / flop_ratio,
            "gflops_per_image": r.flops / 1e9,
            "swd_x1e3": 1e3 * r.swd, "swd_vs_baseline": r.swd / base.swd - 1,
            "swd_vs_baseline_p05_p95": list(r.swd_interval) if r.swd_interval else None,
            "swd_levels_x1e3": [1e3 * v for v in r.swd_levels],
            "rapsd_lsd_db": r.lsd, "rapsd_high_lsd_db": r.lsd_high,
            "psnr_vs_baseline": r.psnr, "ssim_vs_baseline": r.ssim,
            "fd": r.fd, "exact_w2": r.w2,
            "plan": [{"grid": list(st.grid), "times": list(st.times)} for st in p.stages],
        })
    return {
        "config": asdict(cfg), "model": bm.name, "spectrum": {"A": bm.spectrum[0],
                                                              "beta": bm.spectrum[1]},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "flops_per_eval": {_flops_key(g): v for g, v in sorted(flops.items(), key=_flops_order)},
        "rows": rows,
        "references": {k: {"swd_x1e3": 1e3 * v[0], "rapsd_lsd_db": v[1]} for k, v in refs.items()},
    }


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------


def _flops_key(g) -> str:
    """``(128, 128)`` -> ``"128x128"``; a compared model's ``(key, grid)`` -> ``"key 128x128"``."""
    if g and isinstance(g[0], str):
        return f"{g[0]} {'x'.join(map(str, g[1]))}"
    return "x".join(map(str, g))


def _flops_order(item):
    g = item[0]
    return (g[0], tuple(g[1])) if g and isinstance(g[0], str) else ("", tuple(g))


def markdown_table(res: dict) -> str:
    cfg = res["config"]
    if cfg.get("compare"):
        return _compare_table(res)
    lines = [
        f"model `{res['model']}`, {cfg['size'][0]}x{cfg['size'][1]}, {cfg['steps']} steps "
        f"{cfg['solver']}, n={cfg['n']} seeds (batches of {cfg['time_batch']}), "
        f"{res['threads']} thread(s); data spectrum A={res['spectrum']['A']:.3g}, "
        f"beta={res['spectrum']['beta']:.3g}",
        *_sessions_note(res),
        "",
        "| method | stages (steps@grid) | wall s/batch median [min-max] | speed-up | FLOP ratio "
        "| speed-up / FLOP ratio | SWD x1e3 (vs baseline) | RAPSD dB | PSNR dB | SSIM |"
        + (" FD |" if any(r["fd"] is not None for r in res["rows"]) else "")
        + (" exact W2 |" if any(r["exact_w2"] is not None for r in res["rows"]) else ""),
        "|---|---|---|---|---|---|---|---|---|---|"
        + ("---|" if any(r["fd"] is not None for r in res["rows"]) else "")
        + ("---|" if any(r["exact_w2"] is not None for r in res["rows"]) else ""),
    ]
    for i, r in enumerate(res["rows"]):
        rel = "" if i == 0 else f" ({_swd_change(r)})"
        ps = "-" if i == 0 or math.isnan(r["psnr_vs_baseline"]) else f"{r['psnr_vs_baseline']:.1f}"
        ss = "-" if i == 0 or math.isnan(r["ssim_vs_baseline"]) else f"{r['ssim_vs_baseline']:.3f}"
        line = (f"| {r['method']} | {r['stages']} | {r['wall_median_s']:.2f} "
                f"[{r['wall_min_s']:.2f}-{r['wall_max_s']:.2f}] | {r['speedup']:.2f}x | "
                f"{r['flop_ratio']:.2f}x | {r['speedup_over_flop_ratio']:.2f} | "
                f"{r['swd_x1e3']:.1f}{rel} | {r['rapsd_lsd_db']:.2f} | {ps} | {ss} |")
        if any(x["fd"] is not None for x in res["rows"]):
            line += f" {r['fd']:.2f} |" if r["fd"] is not None else " - |"
        if any(x["exact_w2"] is not None for x in res["rows"]):
            line += f" {r['exact_w2']:.4f} |" if r["exact_w2"] is not None else " - |"
        lines.append(line)
    for k, v in res["references"].items():
        lines.append(f"| *reference: {k}* | - | - | - | - | - | {v['swd_x1e3']:.1f} | "
                     f"{v['rapsd_lsd_db']:.2f} | - | - |")
    return "\n".join(lines) + "\n"


def _compare_table(res: dict) -> str:
    """The table of a bench with compared models: GFLOPs per image and the RAPSD distance in
    the upper frequencies (above a quarter of the side) beside the usual columns, and the SWD
    of every pyramid level (coarse to fine: composition to texture)."""
    cfg = res["config"]
    lines = [
        f"main model `{res['model']}`, compared: {', '.join(f'`{m}`' for m in cfg['compare'])}; "
        f"{cfg['size'][0]}x{cfg['size'][1]}, {cfg['steps']} steps {cfg['solver']}, "
        f"n={cfg['n']} seeds (batches of {cfg['time_batch']}), {res['threads']} thread(s)",
        *_sessions_note(res),
        "",
        "| method | stages (steps@grid) | GFLOPs/image | FLOP ratio | wall s/batch median "
        "[min-max] | speed-up | SWD x1e3 (vs baseline) | SWD per level x1e3 (coarse..fine) "
        "| RAPSD dB | RAPSD dB, f > side/4 | PSNR dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(res["rows"]):
        rel = "" if i == 0 else f" ({_swd_change(r)})"
        ps = "-" if i == 0 or math.isnan(r["psnr_vs_baseline"]) else f"{r['psnr_vs_baseline']:.1f}"
        lv = " / ".join(f"{v:.0f}" for v in r["swd_levels_x1e3"][::-1])
        lines.append(f"| {r['method']} | {r['stages']} | {r['gflops_per_image']:.1f} | "
                     f"{r['flop_ratio']:.2f}x | {r['wall_median_s']:.2f} [{r['wall_min_s']:.2f}-"
                     f"{r['wall_max_s']:.2f}] | {r['speedup']:.2f}x | {r['swd_x1e3']:.1f}{rel} | "
                     f"{lv} | {r['rapsd_lsd_db']:.2f} | {r['rapsd_high_lsd_db']:.2f} | {ps} |")
    for k, v in res["references"].items():
        lines.append(f"| *reference: {k}* | - | - | - | - | - | {v['swd_x1e3']:.1f} | - | "
                     f"{v['rapsd_lsd_db']:.2f} | - | - |")
    return "\n".join(lines) + "\n"


def _swd_change(r: dict) -> str:
    """``+3.0%``, with the paired bootstrap's 5-95% interval when measured: ``+3.0% [+1.2, +4.9]``."""
    txt = f"{100 * r['swd_vs_baseline']:+.1f}%"
    iv = r.get("swd_vs_baseline_p05_p95")
    return txt + (f" [{100 * iv[0]:+.1f}, {100 * iv[1]:+.1f}]" if iv else "")


def _sessions_note(res: dict) -> list[str]:
    sessions = res.get("timing", {}).get("sessions", [])
    if len(sessions) < 2:
        return []
    return ["", f"timings come from {len(sessions)} sessions (a stopped bench resumed: each "
            "unit keeps the wall-clock of the session that ran it, see results.json "
            "`timing.units`): " + ", ".join(f"{s['id']} ({s.get('threads', '?')} threads)"
                                           for s in sessions)]


def _png(path: Path, fig) -> None:
    save_figure(fig, path, bbox_inches="tight")


def write_outputs(out: Path, res: dict, plans, samples, real, cfg: BenchConfig,
                  grid_cols: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(res)
    atomic_write_bytes(out / "results.md", table.encode())
    atomic_write_json(out / "results.json", res)
    k = min(grid_cols, cfg.n)
    save_png(out / "grid.png", image_grid([s[:k] for s in samples]))
    atomic_write_json(out / "grid_rows.json", [r["method"] for r in res["rows"]])

    # Pareto: quality vs cost
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in res["rows"]:
        ax.scatter(1 / r["flop_ratio"], r["swd_x1e3"], s=30)
        ax.annotate(r["method"], (1 / r["flop_ratio"], r["swd_x1e3"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    for name, v in res["references"].items():
        ax.axhline(v["swd_x1e3"], ls="--", lw=0.8, color="gray")
        ax.annotate(name, (1.0, v["swd_x1e3"]), fontsize=6, color="gray", ha="right",
                    xytext=(0, 2), textcoords="offset points")
    ax.set_xlabel("cost (FLOPs relative to the baseline)")
    ax.set_ylabel("multi-scale SWD x1e3 to held-out crops (lower is better)")
    ax.set_title(f"{res['model']} {cfg.size[0]}x{cfg.size[1]}, {cfg.steps} steps", fontsize=9)
    ax.grid(alpha=0.3)
    _png(out / "pareto.png", fig)

    # spectra
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    f, p = rapsd(real)
    ax.loglog(f, p, "k", lw=2, label="held-out real")
    for r, s in list(zip(res["rows"], samples, strict=True))[:6]:
        f, p = rapsd(s)
        ax.loglog(f, p, lw=1, label=r["method"])
    A, beta = res["spectrum"]["A"], res["spectrum"]["beta"]
    ax.loglog(f, A * f ** (-beta), ":", color="gray", label=f"fit {A:.3g} w^-{beta:.3g}")
    ax.set_xlabel("frequency (cycles per image)")
    ax.set_ylabel("RAPSD (DCT power)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    _png(out / "spectrum.png", fig)




def demo_config(*, model: str = "unet", size: tuple[int, int] = (128, 128), steps: int = 50,
                n: int = 8, time_batch: int = 2, n_real: int = 128, seed: int = 0,
                threads: int | None = None) -> BenchConfig:
    """``specdiff demo``: the full-resolution baseline against SPD (scales 0.5,1, delta 0.05,
    the paper's keep rule) from the same seeds, one timing pass (rows: baseline, SPD)."""
    return BenchConfig(model=model, size=tuple(size), steps=steps, n=n, time_batch=time_batch,
                       repeats=1, deltas=(0.05,), continuations=("keep",),
                       methods=("baseline", "spd"), n_real=n_real, seed=seed,
                       threads=threads).validate()
