"""``SpectralPipeline``: progressive (SPD) sampling for a diffusers pipeline, in one line.

::

    from specdiff.integrations.diffusers import SpectralPipeline
    sp = SpectralPipeline.from_pipe(pipe)          # shares pipe's modules, copies nothing
    image = sp("a photo of a cat", num_inference_steps=50, generator=g,
               scales=(0.5, 1.0), delta=0.01).images[0]

``sp(...)`` takes the pipeline's own arguments (prompts or embeddings, size,
steps, guidance, ``num_images_per_prompt``, ``generator``, ``latents``,
``output_type``, ``return_dict``, attention kwargs, ``callback_on_step_end``)
plus the SPD ones, and returns what ``pipe(...)`` returns. ``scales=(1.0,)``
is plain sampling and reproduces ``pipe(...)`` to float rounding.

How a call runs (DESIGN.md section 7): the family adapter
(:mod:`specdiff.integrations.families`) mirrors the pipeline's preamble
(checks, ``encode_prompt``, the initial noise exactly as ``prepare_latents``
draws it), builds the time grid from a private copy of the pipeline's scheduler
at full resolution (FLUX mu from the full-res token count, SD3's shift, Wan's
flow shift, SDXL's sigmas as flow times ``s / (1 + s)``), and exposes the
pipeline's denoiser module (called as a module, so user hooks, offloading and
compile wrappers keep working) as a specdiff ``Denoiser``. The loop is
:func:`specdiff.sample` with the solver that reproduces the pipeline's
scheduler (Euler, or UniPC for Wan); its state is float32 whatever the model
dtype. The seed-coupled start projects the full-resolution noise onto the
first stage's grid; each expansion fills the new frequencies with the same
noise's band, so no global RNG is ever used. Nothing on the pipeline is left
changed: its scheduler is never stepped, the loop attributes it exposes to
callbacks (``_guidance_scale``, ``_interrupt``, ...) are restored afterwards,
and position patches (``positions="stretched"``) are removed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from ..plans import Plan, check_delta, check_scales, check_steps, full_plan, spd_plan, stage_grids
from ..sampling import sample
from ..spectral import check_generator, project_noise, resize
from ..transitions import Spectral, Transition, as_transition
from .families import find_adapter
from .families.base import Interrupted

__all__ = ["SpectralPipeline", "check_stage_sizes", "check_parallel_stages", "context_parallel_degree",
           "stage_tokens"]

#: what diffusers step caches do across stages (SpectralPipeline.__call__'s ``caches``)
CACHE_MODES = ("global", "full_resolution")

# Loop state the pipelines keep on themselves for callbacks and properties;
# we set it like the pipeline does and restore it afterwards.
_STATE_ATTRS = (
    "_guidance_scale", "_guidance_scale_2", "_guidance_rescale", "_joint_attention_kwargs",
    "_attention_kwargs", "_cross_attention_kwargs", "_clip_skip", "_denoising_end",
    "_current_timestep", "_interrupt", "_num_timesteps", "_skip_layer_guidance_scale",
)
_MISSING = object()


class SpectralPipeline:
    """Progressive-resolution sampling around an existing diffusers pipeline.

    Build with :meth:`from_pipe`. Attribute access falls through to the wrapped
    pipeline (``sp.vae is pipe.vae``); nothing is copied.
    """

    def __init__(self, pipe):
        self.__dict__["_pipe"] = pipe
        self.__dict__["_adapter_cls"] = find_adapter(pipe)

    @classmethod
    def from_pipe(cls, pipe) -> SpectralPipeline:
        """Wrap ``pipe`` (``FluxPipeline``, ``StableDiffusion3Pipeline``,
        ``StableDiffusionXLPipeline`` or ``WanPipeline``; a ValueError otherwise)."""
        return cls(pipe)

    @property
    def pipe(self):
        return self.__dict__["_pipe"]

    @property
    def family(self) -> str:
        return self._adapter_cls.family

    def __getattr__(self, name):
        pipe = self.__dict__.get("_pipe")
        if name.startswith("__") or pipe is None:
            raise AttributeError(name)
        return getattr(pipe, name)

    def __repr__(self) -> str:
        return f"SpectralPipeline({type(self.pipe).__name__}, family={self.family})"

    # ------------------------------------------------------------------
    def __call__(self, *args, scales: Sequence[float] = (0.5, 1.0), delta=0.01,
                 spectrum=None, transition: Transition | str = "dct", plan: Plan | None = None,
                 solver: str = "auto", positions: str = "native", coupled: bool = True,
                 caches: str = "global", reference: str = "full", **kwargs):
        """Run the pipeline with a progressive plan.

        Args:
            *args, **kwargs: exactly the pipeline's ``__call__`` arguments.
            scales: stage sizes relative to the full latent grid, increasing to
                1.0; ``(1.0,)`` is plain sampling (reproduces ``pipe(...)``).
            delta: SPD noise-dominated tolerance (one value or one per
                transition); larger is faster and switches later in quality.
            spectrum: data power law for the switch times: a name in
                ``specdiff.plans.SPECTRA`` (``"flux"``, ``"wan"``), a
                ``PowerSpectrum`` or ``(A, beta)`` from ``specdiff analyze``.
                ``None`` uses the family's known VAE constants (FLUX, Wan), or else
                fits the VAE's once on shipped photos and caches it on disk
                (:mod:`specdiff.integrations.auto_spectrum`).
            transition: the transition entering each finer stage: a
                :mod:`specdiff.transitions` object that carries the state
                (``Spectral("dct")``, SPD's; ``Spectral("fft")``,
                ``Spectral("haar")``, ``Pyramid()``) or its legacy string
                (``"dct"``, ``"fft"``, ``"haar"``, ``"pyramid"``).
            plan: any :class:`specdiff.plans.Plan` whose ``full_grid`` is this
                call's latent grid (overrides scales/delta/spectrum); build the
                time grid with :meth:`get_plan` ``(..., scales=(1.0,))``.
            solver: ``"auto"`` reproduces the pipeline's scheduler (Euler or
                UniPC); or ``"euler"``, ``"heun"``, ``"dpmpp_2m"``, ``"unipc"``.
            positions: ``"native"`` (a coarse stage gets the positions of an
                image of its size) or ``"stretched"`` (each coarse token at the
                centre of the full-res block it covers; FLUX, SD3, Wan).
            coupled: seed-coupled noise (default) or fresh noise from ``generator``
                at each expansion.
            caches: what diffusers step caches on the denoiser do across stages.
                ``"global"`` (default): they run in every stage; at a switch they drop
                the old grid's activations and keep their step counters on the run's
                global step (:mod:`specdiff.integrations.cache_hooks`).
                ``"full_resolution"``: the community pattern, the coarse stages run
                uncached and the caches start afresh at the first full-resolution step
                (as if enabled there, their step counters from 0).
            reference: editing pipelines (FLUX.1 Kontext): the reference image's tokens
                at ``"full"`` resolution in every stage (default), or resized to each
                ``"stage"``'s scale (cheaper coarse stages). Other families: ``"full"``.

        Returns:
            What ``pipe(...)`` returns for the same arguments.
        """
        with torch.no_grad():
            return self._run(args, kwargs, scales, delta, spectrum, transition, plan, solver,
                             positions, coupled, caches, reference)

    def get_plan(self, *args, scales: Sequence[float] = (0.5, 1.0), delta=0.01, spectrum=None,
                 transition: Transition | str = "dct", positions: str = "native",
                 **kwargs) -> Plan:
        """The :class:`Plan` that ``sp(*args, **kwargs, scales=..., delta=...)`` would walk
        (time grid from the pipeline's scheduler at full resolution). Draws no noise."""
        pipe = self.pipe
        saved = _snapshot(pipe)
        try:
            with torch.no_grad():
                kw = self._bind(args, kwargs)
                _check_call_args(kw, scales, delta)
                ad = self._adapter_cls(pipe, kw, positions=positions, dry=True)
                plan = self._make_plan(ad, scales, delta, spectrum, transition)
                check_parallel_stages(ad, plan)
                return plan
        finally:
            _restore(pipe, saved)

    # ------------------------------------------------------------------
    def _bind(self, args, kwargs) -> dict:
        pipe = self.pipe
        sig = inspect.signature(type(pipe).__call__)
        bound = sig.bind(pipe, *args, **kwargs)  # TypeError for unknown arguments, like pipe()
        bound.apply_defaults()
        kw = dict(bound.arguments)
        kw.pop("self", None)
        extra = kw.pop("kwargs", None) or {}
        unknown = sorted(set(extra) - {"callback", "callback_steps"})
        if unknown:
            raise TypeError(f"{type(pipe).__name__}.__call__() got an unexpected keyword argument "
                            f"{unknown[0]!r}")
        if extra:
            raise ValueError(f"{self.family}: the deprecated `callback`/`callback_steps` are not "
                             "supported; use callback_on_step_end")
        try:
            from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

            cb = kw.get("callback_on_step_end")
            if isinstance(cb, PipelineCallback | MultiPipelineCallbacks):
                kw["callback_on_step_end_tensor_inputs"] = cb.tensor_inputs
        except ImportError:  # pragma: no cover - older diffusers
            pass
        return kw

    def _make_plan(self, ad, scales, delta, spectrum, transition) -> Plan:
        grid = ad.grid
        sc = check_scales(scales)
        # read the transition even when one stage leaves it unused: a bad value is an
        # error whatever the scales
        transition = as_transition(transition)
        if sc == (1.0,):
            return full_plan(ad.times, grid)
        spectrum = _resolve_spectrum(ad, spectrum, grid)
        check_stage_sizes(ad.family, ad.packing, ad.multiple, ad.pixels_per_cell, grid, sc)
        return spd_plan(ad.times, grid, sc, spectrum=spectrum, delta=delta,
                        transition=transition, multiple=ad.multiple, axes=2)

    def self_cascade(self, *args, factor: int = 2, delta: float | None = None,
                     strength: float | None = None, spectrum=None, up: str = "bicubic",
                     **kwargs):
        """Tuning-free Self-Cascade (:mod:`specdiff.cascade`): generate at ``height x width``
        (the pivot), then at ``factor`` times that size with the same model, and return what
        ``pipe(...)`` returns at the larger size.

        Each step up (doubling while ``factor`` allows, then the integer factor left)
        upsamples the clean result (``up``) and re-noises it with fresh noise from the
        call's ``generator``, at SPD's activation time of the pivot's Nyquist for ``delta``
        (default 0.05; the spectrum as for ``__call__``) or at a fixed ``strength``
        (officially 0.7). Each
        stage walks the pipeline's schedule for its own size; the pivot takes
        ``num_inference_steps``, a later stage ``round(steps * t)`` from its re-noise time.
        """
        from ..cascade import cascade_grids, cascade_renoise_times, self_cascade_plan

        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        h, w = kwargs.get("height"), kwargs.get("width")
        if not (isinstance(h, int) and isinstance(w, int)):
            raise ValueError("self_cascade needs height= and width= (the pivot size, "
                             "in pixels) as integers")
        if delta is not None and strength is not None:
            raise ValueError("give delta (the spectral re-noise time) or strength, not both")
        if strength is None and delta is None:
            delta = 0.05
        big = dict(kwargs, height=h * factor, width=w * factor)
        full = self.get_plan(*args, **big, scales=(1.0,))
        pivot = self.get_plan(*args, **kwargs, scales=(1.0,))
        grids = cascade_grids(pivot.full_grid, full.full_grid)
        ppc = round(h * factor / full.full_grid[-2])  # pixels per latent cell of this family
        times = {tuple(pivot.full_grid): pivot.stages[0].times,
                 tuple(full.full_grid): full.stages[0].times}

        def times_at(g):
            # a size between the pivot and the target (a 4x cascade's 2x step): the
            # pipeline's own schedule for that size
            g = tuple(g)
            if g not in times:
                size = dict(kwargs, height=round(g[-2] * ppc), width=round(g[-1] * ppc))
                times[g] = self.get_plan(*args, **size, scales=(1.0,)).stages[0].times
            return torch.tensor(times[g], dtype=torch.float64)

        if strength is not None:
            ren = cascade_renoise_times(grids, strength=strength)
        else:
            from types import SimpleNamespace

            fam = SimpleNamespace(default_spectrum=self._adapter_cls.default_spectrum,
                                  pixels_per_cell=ppc, pipe=self.pipe)
            ren = cascade_renoise_times(
                grids, delta=delta, spectrum_at=lambda g: _resolve_spectrum(fam, spectrum, g))
        plan = self_cascade_plan(times_at, grids, ren, steps=len(pivot.stages[0].times) - 1,
                                 up=up)
        return self(*args, **big, plan=plan)

    def _check_plan(self, ad, plan) -> Plan:
        if not isinstance(plan, Plan):
            raise ValueError("plan must be a specdiff.plans.Plan (see SpectralPipeline.get_plan)")
        if tuple(plan.full_grid) != tuple(ad.grid):
            raise ValueError(
                f"plan.full_grid {tuple(plan.full_grid)} does not match this call's latent grid "
                f"{tuple(ad.grid)}; build the plan for this height/width (sp.get_plan(...))")
        for st in plan.stages:
            if st.grid[:-2] != tuple(ad.grid[:-2]):
                raise ValueError(f"{ad.family}: plan stages may change only the last two axes "
                                 f"(got {st.grid} for {ad.grid})")
            if any(s % ad.multiple for s in st.grid[-2:]):
                raise ValueError(f"{ad.family}: stage grid {st.grid} is not a multiple of "
                                 f"{ad.multiple} ({ad.packing})")
            ad.check_grid(st.grid)
        return plan

    def _run(self, args, kwargs, scales, delta, spectrum, transition, plan, solver, positions,
             coupled, caches="global", reference="full"):
        pipe = self.pipe
        saved = _snapshot(pipe)
        try:
            kw = self._bind(args, kwargs)
            _check_call_args(kw, scales if plan is None else None, delta)
            if caches not in CACHE_MODES:
                raise ValueError(f"caches must be one of {CACHE_MODES}, got {caches!r}")
            if reference not in self._adapter_cls.reference_modes:
                raise ValueError(f"{self.family}: reference must be one of "
                                 f"{self._adapter_cls.reference_modes}, got {reference!r}")
            ad = self._adapter_cls(pipe, kw, positions=positions)
            ad.cache_mode, ad.reference = caches, reference
            if plan is None:
                plan = self._make_plan(ad, scales, delta, spectrum, transition)
            else:
                plan = self._check_plan(ad, plan)
            check_parallel_stages(ad, plan)
            for st in plan.stages:
                ad.check_grid(st.grid)
            sv = ad.solver(solver)
            # the basis sample() projects the seed noise in, so the start scaling acts on
            # the band the sampler starts from
            basis = plan.coupling_basis(coupled)
            noise = _start_noise(ad.noise, plan, ad.start_scale, basis)
            user_cb = kw.get("callback_on_step_end")
            names = kw.get("callback_on_step_end_tensor_inputs") or ["latents"]

            with pipe.progress_bar(total=plan.steps) as bar, ad.positions_context():

                def on_step(info):
                    i = info["index"]
                    x, t_next = info["x"], float(info["t_next"])
                    new_x = None
                    if user_cb is not None:
                        cbk = ad.callback_inputs(names, x, t_next)
                        given = cbk.get("latents")
                        cbk["stage"] = info["stage"]
                        out = user_cb(pipe, i, ad.timestep(float(info["t"]))[0], cbk) or {}
                        lat = out.pop("latents", None)
                        if lat is not None and lat is not given:
                            want = (given if given is not None else ad.to_latents(x, t_next)).shape
                            if tuple(lat.shape) != tuple(want):
                                raise ValueError(
                                    f"callback_on_step_end returned latents of shape "
                                    f"{tuple(lat.shape)}; in stage {info['stage']} they must "
                                    f"keep the stage's shape {tuple(want)}")
                            new_x = ad.from_latents(lat, t_next, x.shape[2:])
                        for name in ad.callback_tensors:
                            if name in out and out[name] is not ad.tensors.get(name):
                                ad.tensors[name] = out[name]
                    bar.update()
                    if getattr(pipe, "_interrupt", False):
                        raise Interrupted(new_x if new_x is not None else x, t_next)
                    return new_x

                gen = kw.get("generator")
                try:
                    x = sample(ad, plan, solver=sv, noise=noise, generator=gen,
                               callback=on_step, coupled=coupled)
                except Interrupted as stop:
                    x = stop.x
                    if tuple(x.shape[2:]) != tuple(plan.full_grid):
                        # decode what there is, at full size: a spectral expansion that
                        # fills the new bands with the same noise
                        x = Spectral(basis).apply(x, stop.t, plan.full_grid, noise=noise.to(x))[0]
            pipe._current_timestep = None
            result = ad.decode(x)
            pipe.maybe_free_model_hooks()
            return ad.wrap_output(result)
        finally:
            _restore(pipe, saved)


# ----------------------------------------------------------------------
def _check_call_args(kw: dict, scales, delta) -> None:
    """The plain-value arguments of a call, checked before the adapter encodes a prompt or
    draws noise (minutes for a real model): each would otherwise fail late, as a
    ZeroDivisionError (0 steps), a TypeError (``scales=0.5``, ``delta=None``) or an
    AttributeError (an int generator). ``scales=None`` skips the SPD ones (a plan is given)."""
    steps = kw.get("num_inference_steps")
    if steps is not None:
        check_steps(steps, "num_inference_steps")
    n_img = kw.get("num_images_per_prompt")
    if n_img is not None and (isinstance(n_img, bool) or not isinstance(n_img, int) or n_img < 1):
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {n_img!r}")
    check_generator(kw.get("generator"))
    if scales is not None:
        sc = check_scales(scales)
        if len(sc) > 1:
            check_delta(delta, len(sc) - 1)


def _resolve_spectrum(ad, spectrum, grid):
    """``spectrum`` as given, else the family's published constants, else one fitted once
    on shipped photos through the pipeline's VAE (cached; auto_spectrum)."""
    if spectrum is None:
        spectrum = ad.default_spectrum
    if spectrum is None:
        from .auto_spectrum import auto_spectrum

        vsf = ad.pixels_per_cell or 8
        cfg = getattr(ad.pipe, "_progress_bar_config", {}) or {}
        spectrum = auto_spectrum(getattr(ad.pipe, "vae", None), grid[-2] * vsf, grid[-1] * vsf,
                                 grid[-2:], progress=not cfg.get("disable", False))
    return spectrum


def check_stage_sizes(family: str, packing: str, multiple: int, vae_factor: int | None,
                      grid: Sequence[int], scales: Sequence[float]) -> None:
    """A ``ValueError`` naming sizes that work unless every coarse stage of ``scales`` on the
    full latent ``grid`` rounds to a side within 10% of ``side * scale`` that is a multiple
    of ``multiple`` (the family's packing). Used before a pipeline loads (from its folder's
    configs, :func:`specdiff.integrations.generate.check_generate_config`) and on every call."""
    grids = stage_grids(grid, scales, multiple=multiple, axes=2)
    for s, g in zip(scales[:-1], grids[:-1], strict=True):
        for full_side, side in zip(grid[-2:], g[-2:], strict=True):
            want = full_side * s
            if side >= full_side or abs(side - want) > 0.1 * want:
                hint = ""
                if abs(1 / s - round(1 / s)) < 1e-9 and vae_factor:
                    hint = f" (pixel sides that are multiples of {int(round(vae_factor * multiple / s))})"
                raise ValueError(
                    f"{family}: scale {s:g} of the {'x'.join(map(str, grid))} latent grid "
                    f"asks for a side of {want:g}, but {packing or 'the model'} needs stage "
                    f"sides that are multiples of {multiple} (nearest: {side}); use a height/width "
                    f"whose latent side times {s:g} is a multiple of {multiple}{hint}, or other scales")


def context_parallel_degree(module) -> int:
    """How many ranks split the token sequence of ``module`` (diffusers' context parallelism:
    Ulysses degree x ring degree; 1 without a parallel config)."""
    cp = getattr(getattr(module, "_parallel_config", None), "context_parallel_config", None)
    if cp is None:
        return 1
    return int(cp.ulysses_degree or 1) * int(cp.ring_degree or 1)


def stage_tokens(grid: Sequence[int], multiple: int) -> int:
    """Image tokens of a latent ``grid`` whose last two sides are embedded in
    ``multiple x multiple`` patches (leading axes, e.g. video frames, one token row each)."""
    lead = 1
    for g in grid[:-2]:
        lead *= int(g)
    return lead * (int(grid[-2]) // multiple) * (int(grid[-1]) // multiple)


def check_parallel_stages(ad, plan: Plan) -> None:
    """Under context parallelism every stage's token sequence is sharded over ``degree``
    ranks, so its length must be a multiple of ``degree`` (diffusers asserts it deep in a
    hook); a ``ValueError`` naming the pixel sizes near this one that work, otherwise."""
    degree = context_parallel_degree(ad.denoiser_module)
    if degree == 1:
        return
    m = ad.multiple
    bad = [st.grid for st in plan.stages if stage_tokens(st.grid, m) % degree]
    if not bad:
        return
    scales = [st.grid[-1] / plan.full_grid[-1] for st in plan.stages]
    vsf = ad.pixels_per_cell or 8
    step = vsf * m  # pixel sides the family accepts
    full = plan.full_grid
    ok = []
    for k in range(1, 64):  # nearest square-ish sizes (same aspect), both directions
        for sign in (-1, 1):
            h, w = full[-2] * vsf + sign * k * step, full[-1] * vsf + sign * k * step
            if h < step or w < step:
                continue
            hw = (h // vsf, w // vsf)
            try:
                grids = stage_grids((*full[:-2], *hw), scales, multiple=m, axes=2)
            except ValueError:
                continue
            if all(stage_tokens(g, m) % degree == 0 for g in grids):
                ok.append(f"{h}x{w}")
        if len(ok) >= 2:
            break
    g = bad[0]
    raise ValueError(
        f"{ad.family} under {degree}-way context parallelism: the stage grid "
        f"{'x'.join(map(str, g))} has {stage_tokens(g, m)} tokens, which do not split over "
        f"{degree} ranks; use a height/width such as {' or '.join(ok[:2]) or 'a larger one'} "
        "(every stage's token count a multiple of the degree), or other scales")


def _start_noise(noise: torch.Tensor, plan: Plan, c: float, basis: str) -> torch.Tensor:
    """Full-res noise whose projection onto the first stage's grid is ``c`` times that of
    ``noise`` while every band beyond that grid is ``noise``'s own.

    Pipelines whose first state is not unit noise at ``t[0]`` (SDXL: ``init_noise_sigma``
    times the noise, i.e. ``c = init_noise_sigma / (1 + sigma_max)`` in the flow frame) get
    the right coarse start, and the expansions still fill new bins with exactly white
    noise of variance ``t^2``."""
    if c == 1.0:
        return noise
    first = plan.stages[0].grid
    if tuple(first) == tuple(noise.shape[2:]):
        return noise * c
    low = project_noise(noise, first, basis)
    emb = resize(low, 1.0, noise.shape[2:], noise=torch.zeros_like(noise), basis=basis)[0]
    return noise + (c - 1.0) * emb


def _snapshot(pipe) -> dict:
    d = pipe.__dict__
    return {k: d.get(k, _MISSING) for k in _STATE_ATTRS}


def _restore(pipe, saved: dict) -> None:
    d = pipe.__dict__
    for k, v in saved.items():
        if v is _MISSING:
            d.pop(k, None)
        else:
            d[k] = v

