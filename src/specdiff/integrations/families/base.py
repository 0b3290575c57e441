"""What every diffusers family adapter shares (one call of a pipeline, in our frame).

An adapter instance is created per ``SpectralPipeline.__call__``. Its family
subclass mirrors the front and back of the pipeline's own ``__call__`` (input
checks, prompt encoding through ``pipe.encode_prompt``, the initial noise
drawn exactly as ``prepare_latents`` draws it, decoding) and supplies the
model call of one denoising step; this base class turns that into a specdiff
``Denoiser`` in the rectified-flow frame and owns what is common: the time
grid read from a private copy of the pipeline's scheduler, the exact
scheduler timestep for every grid time, the conversion VP <-> flow, the
callback layout, the solver matching the scheduler, and cache resets.

Frames (DESIGN.md section 2): the solver state is the flow state
``x = (1 - t) x0 + t eps`` in float32 with shape ``(B, C, *grid)`` (grid =
``(h, w)`` latents, or ``(F, h, w)`` for video). Flow schedulers (FLUX, SD3,
Wan) use ``t = sigma`` and the model predicts the velocity ``eps - x0``. VP
schedulers (SDXL) have the VE state ``x_ve = x0 + s eps = x / (1 - t)`` with
``t = s / (1 + s)``; the UNet sees ``x_ve / sqrt(1 + s^2)`` and predicts eps or v.

Step position: an adapter keeps no step counter. It declares
``takes_step_info = True``, so :func:`specdiff.sample` passes every call a
``step_info`` (:class:`specdiff.solvers.StepInfo`: the walk position of that
evaluation's own time, ``k`` for step ``k``'s first evaluation and ``k + 1``
for an evaluation at its end time such as Heun's corrector), and the sigma
follows from ``t``. The family's model call gets both as an
:class:`Evaluation`, so the adapter is a pure function of its arguments.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...denoisers import VPDenoiser
from ...solvers import Solver, StepInfo, get_solver

__all__ = ["Adapter", "Evaluation", "Interrupted", "unsupported", "forward_hook",
           "SCHEDULER_SOLVERS"]

#: diffusers scheduler classes whose update we reproduce, and our solver for it.
SCHEDULER_SOLVERS = {
    "FlowMatchEulerDiscreteScheduler": "euler",
    "EulerDiscreteScheduler": "euler",
    "UniPCMultistepScheduler": "unipc",
}


class Interrupted(Exception):
    """Raised from the step callback when the user set ``pipe._interrupt``."""

    def __init__(self, x: torch.Tensor, t: float):
        super().__init__("interrupted")
        self.x, self.t = x, t


def unsupported(kw: dict, names: dict[str, Any], family: str) -> None:
    """Raise for pipeline arguments this integration does not implement (non-default values)."""
    for name, default in names.items():
        value = kw.get(name, default)
        if value is not default and value != default:
            raise ValueError(
                f"{family}: `{name}` is not supported by SpectralPipeline; call the pipeline itself "
                f"for it (pipe(...)) or leave `{name}` at its default"
            )


def full_resolution_mu(sched, tokens: int, max_shift: float = 1.15) -> float:
    """The dynamic-shift ``mu`` the FLUX-family pipelines compute (``calculate_shift`` with
    the scheduler's config) for ``tokens``, the *full-resolution* token count: the pipelines
    take it from their starting latents, which for a progressive plan would be the coarse
    ones and silently change the whole schedule."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(tokens, sched.config.get("base_image_seq_len", 256),
                           sched.config.get("max_image_seq_len", 4096),
                           sched.config.get("base_shift", 0.5),
                           sched.config.get("max_shift", max_shift))


def pack_2x2(pipe, x: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> the FLUX-style packed ``(B, hw/4, 4C)`` tokens (the pipeline's own
    ``_pack_latents``; FLUX.1, Kontext, Qwen-Image)."""
    b, c, h, w = x.shape
    return pipe._pack_latents(x, b, c, h, w)


def unpack_2x2(latents: torch.Tensor, grid) -> torch.Tensor:
    """Inverse of :func:`pack_2x2` for a latent ``grid`` ``(h, w)``."""
    h, w = grid
    b, _, d = latents.shape
    x = latents.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def _key(t: float) -> float:
    """Time as the solver passes it to the denoiser: a float32 value."""
    return float(torch.tensor(float(t), dtype=torch.float32))


@dataclass(frozen=True)
class Evaluation:
    """Where one denoiser call sits, as a family's model call needs it (pipelines pass
    the loop's ``i`` to cache hooks and use it for SD3.5 skip-layer guidance).

    ``index``: the walk position of this evaluation's time (``StepInfo.index``:
    ``k`` for step ``k``'s first evaluation, ``k + 1`` at the step's end time).
    ``num_steps``: steps in the whole walk (all stages), the count ``index``
    runs over. ``sigma``: the scheduler's sigma for this call's ``t``.
    """

    index: int
    num_steps: int
    sigma: float


@dataclass(frozen=True)
class FolderLayout:
    """What a pipeline folder's JSON configs say about its latent grid, read before the
    pipeline loads (minutes for a real model) so bad sizes fail first.

    ``vae_factor``: pixels per cell of the plan's latent grid (:attr:`Adapter.pixels_per_cell`:
    the VAE's factor, twice that for FLUX.2's 2x2 tokens);
    ``multiple``: stage sides must be multiples of it (:attr:`Adapter.multiple`);
    ``default_size``: ``(height, width)`` pixels when none is given, ``None`` if unknown;
    ``round_to_multiple``: the pipeline rounds latent sides down to ``multiple`` (FLUX).
    """

    vae_factor: int
    multiple: int
    default_size: tuple[int, int] | None = None
    round_to_multiple: bool = False

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """The full-resolution latent ``(h, w)`` the pipeline makes of ``height x width``."""
        f, m = self.vae_factor, self.multiple
        if self.round_to_multiple:
            return m * (int(height) // (f * m)), m * (int(width) // (f * m))
        return int(height) // f, int(width) // f


def vae_factor_from_config(vae: dict) -> int:
    """``2 ** (len(block_out_channels) - 1)``, as FLUX/SD3/SDXL compute it (8 without a VAE)."""
    blocks = vae.get("block_out_channels")
    return 2 ** (len(blocks) - 1) if blocks else 8


class Adapter:
    """One call of one pipeline family. Subclasses set the class attributes and
    implement :meth:`prepare`, :meth:`model_output` and :meth:`decode`."""

    family: ClassVar[str] = ""
    #: diffusers pipeline class names served (matched against the pipeline's MRO)
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    #: name in specdiff.plans.SPECTRA used when spectrum=None (None: must be given)
    default_spectrum: ClassVar[str | None] = None
    #: attribute of the pipeline holding the denoiser module
    denoiser_attr: ClassVar[str] = "transformer"
    #: pipeline tensors a callback may read and replace (besides "latents")
    callback_tensors: ClassVar[tuple[str, ...]] = ()
    #: human description of the latent-size constraint, for error messages
    packing: ClassVar[str] = ""
    #: output class name in the pipeline module, and its field
    positions_supported: ClassVar[tuple[str, ...]] = ("native",)
    #: how a conditioning image's tokens follow the stages (SpectralPipeline's ``reference``)
    reference_modes: ClassVar[tuple[str, ...]] = ("full",)

    def __init__(self, pipe, kw: dict, *, positions: str = "native", dry: bool = False):
        if positions not in self.positions_supported:
            raise ValueError(
                f"{self.family}: positions must be one of {self.positions_supported}, got "
                f"{positions!r}")
        self.pipe = pipe
        self.kw = kw
        self.positions = positions
        self.dry = dry  # plan only: draw no noise (leaves the user's generator untouched)
        self.tensors: dict[str, torch.Tensor] = {}
        self.start_scale = 1.0
        self._last_grid: tuple[int, ...] | None = None
        self._after_evaluation: list = []  # undo callables of cache_hooks.reset_for_new_grid
        self.cache_mode = "global"  # SpectralPipeline sets it from its ``caches`` argument
        self.reference = "full"  # ... and this from ``reference``
        self.prepare()

    # ------------------------------------------------------------------
    # to implement per family
    # ------------------------------------------------------------------
    def prepare(self) -> None:
        """Check inputs, encode prompts, draw the noise, set the schedule.

        Must set: ``self.noise`` ((B, C, *grid) float32 white noise),
        ``self.grid``, ``self.device``, ``self.latent_dtype`` and call
        :meth:`set_schedule`."""
        raise NotImplementedError

    def model_output(self, x_in: torch.Tensor, timestep: torch.Tensor,
                     ev: Evaluation) -> torch.Tensor:
        """One denoising step's model output (with CFG) for ``x_in`` ((B, C, *grid),
        already scaled for VP models, in the pipeline's latent dtype): the velocity
        for flow families, eps or v for VP ones. Shape of ``x_in``. ``ev`` says where
        the call sits in the walk (what the pipeline's loop knows as ``i`` and its sigma)."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor):
        """Full-resolution flow state at t = 0 -> what the pipeline returns (before
        ``return_dict`` handling): images / frames, or latents in the pipeline's layout."""
        raise NotImplementedError

    def output_class(self):
        """The pipeline's output dataclass (imported lazily: diffusers is optional)."""
        raise NotImplementedError

    def decode_shifted(self, latents: torch.Tensor):
        """What the FLUX/SD3/Z-Image pipelines do after their loop: ``latents / scaling +
        shift``, ``vae.decode``, ``image_processor.postprocess`` to ``output_type``."""
        pipe = self.pipe
        latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=self.kw["output_type"])

    #: the field of :meth:`output_class` that holds the result
    output_field: ClassVar[str] = "images"

    def wrap_output(self, result):
        """``return_dict`` handling, as the pipeline does it."""
        if not self.kw["return_dict"]:
            return (result,)
        return self.output_class()(**{self.output_field: result})

    def batch_size(self) -> int:
        """Prompts per call, read as the pipeline reads it: from ``prompt`` (str or list)
        or else from ``prompt_embeds``."""
        prompt = self.kw["prompt"]
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list):
            return len(prompt)
        return self.kw["prompt_embeds"].shape[0]

    @property
    def multiple(self) -> int:
        """Every stage's spatial latent sides must be multiples of this (patching/packing)."""
        return 1

    @property
    def pixels_per_cell(self) -> int | None:
        """Pixels per cell of the latent grid the plan runs on (the VAE's factor; FLUX.2's
        patchified tokens cover twice that)."""
        v = getattr(self.pipe, "vae_scale_factor", None) or \
            getattr(self.pipe, "vae_scale_factor_spatial", None)
        return int(v) if v else None

    @classmethod
    def folder_layout(cls, config) -> FolderLayout | None:
        """The :class:`FolderLayout` of a pipeline folder, from ``config(sub)``: the dict in
        ``{sub}/config.json`` (``{}`` when absent). ``None``: not known before loading
        (sizes are then checked once the pipeline is loaded)."""
        return None

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """Flow-frame state (B, C, *grid) -> the pipeline's latent layout (same frame)."""
        return x

    def unpack(self, latents: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`pack` for a tensor on ``grid``."""
        return latents

    @contextmanager
    def positions_context(self):
        """Temporary patches for the position encoding (removed on exit)."""
        yield

    def check_grid(self, grid: tuple[int, ...]) -> None:
        """Raise a ValueError if the model cannot run on this latent grid."""

    # ------------------------------------------------------------------
    # schedule
    # ------------------------------------------------------------------
    @property
    def flow(self) -> bool:
        sched = self.scheduler
        name = type(sched).__name__
        if name.startswith("FlowMatch"):
            return True
        return bool(getattr(sched.config, "use_flow_sigmas", False)) or \
            getattr(sched.config, "prediction_type", None) == "flow_prediction"

    def fresh_scheduler(self):
        """A private copy of the pipeline's scheduler (the user's one is never touched).

        A deep copy rather than ``from_config`` keeps runtime state set outside
        the config (e.g. ``set_shift``)."""
        return copy.deepcopy(self.pipe.scheduler)

    def set_schedule(self, sched) -> None:
        """Read the time grid and the timestep of every grid time from a scheduler on
        which ``set_timesteps`` has been called exactly as the pipeline calls it."""
        self.scheduler = sched
        sig = sched.sigmas.detach().to("cpu", torch.float64).flatten()
        ts = sched.timesteps.detach().to("cpu")
        n = len(ts)
        if len(sig) != n + 1 or float(sig[-1]) != 0.0:
            raise ValueError(
                f"{self.family}: the scheduler's sigmas must end at 0 (final_sigmas_type='zero'); "
                "configure it so or call the pipeline itself")
        if getattr(sched.config, "invert_sigmas", False):
            raise ValueError(f"{self.family}: schedulers with invert_sigmas=True are not supported")
        times = sig if self.flow else sig / (1 + sig)
        if not bool((times[1:] < times[:-1]).all()) or float(times[0]) > 1:
            raise ValueError(f"{self.family}: the scheduler's time grid is not strictly decreasing "
                             f"within [0, 1]: {times.tolist()}")
        self.times = times
        self.num_steps = n
        self._table = {_key(times[i]): (ts[i], float(sig[i])) for i in range(n)}
        self._grid_keys = tuple(_key(times[i]) for i in range(n))
        self._num_train = int(getattr(sched.config, "num_train_timesteps", 1000))
        if not self.flow:
            self._vp = VPDenoiser(lambda *a: None, sched.alphas_cumprod)
            self._continuous_v = (getattr(sched.config, "timestep_type", "discrete") == "continuous"
                                  and sched.config.prediction_type == "v_prediction")

    def timestep(self, t: float) -> tuple[torch.Tensor, float]:
        """The pipeline's ``t`` (scheduler timestep) and the scheduler sigma for flow time ``t``.

        Grid times map to the scheduler's own entries (bit-exact with the pipeline).
        Other times (the entry time after a transition, or a user plan's times)
        map continuously: flow ``1000 t``; VP the fractional training timestep
        whose sigma is ``t / (1 - t)`` (log-sigma interpolation, as
        ``EulerDiscreteScheduler._sigma_to_t``)."""
        hit = self._table.get(_key(t))
        if hit is not None:
            return hit
        if self.flow:
            return torch.tensor(t * self._num_train, dtype=torch.float32), t
        sigma = t / (1 - t)
        if self._continuous_v:
            return torch.tensor(0.25 * math.log(sigma), dtype=torch.float32), sigma
        ts = self._vp.timestep_of(torch.tensor([t], dtype=torch.float64))[0]
        return ts.to(torch.float32), sigma

    # ------------------------------------------------------------------
    # the Denoiser
    # ------------------------------------------------------------------
    @property
    def denoiser_module(self):
        return getattr(self.pipe, self.denoiser_attr)

    def reset_caches(self) -> None:
        """At a transition: clear the stateful diffusers hooks (step caches) on the denoiser
        of their activations, which have the previous grid's shape, but keep their step
        counters on the run's global step (:mod:`specdiff.integrations.cache_hooks`). Only
        registries that already exist are touched (nothing is added to the module)."""
        from ..cache_hooks import reset_for_new_grid

        self._after_evaluation.extend(reset_for_new_grid(self.denoiser_module))

    def reset_caches_whole(self) -> None:
        """diffusers' own reset of every stateful hook on the denoiser (activations and step
        counters): a new run as far as the caches can tell."""
        for m in self.denoiser_module.modules():
            reg = m.__dict__.get("_diffusers_hook")
            if reg is not None:
                reg.reset_stateful_hooks(recurse=False)

    #: :func:`specdiff.sample` passes ``step_info=`` (the walk position of each call)
    takes_step_info: ClassVar[bool] = True

    def grid_position(self, t: float) -> int:
        """Position of time ``t`` on the scheduler's grid: the number of grid times above it
        (a grid time's own index; an off-grid time gets the index of the next grid time
        below it). The walk position of a call made without ``step_info``."""
        k = _key(t)
        return sum(1 for v in self._grid_keys if v > k)

    def evaluation(self, t: float, sigma: float, info: StepInfo | None) -> Evaluation:
        """The :class:`Evaluation` of a call at ``t``: from the sampler's ``info`` or, for a
        call made outside a plan, from ``t``'s place on the scheduler's own grid."""
        if info is not None:
            return Evaluation(int(info.index), int(info.num_steps), sigma)
        return Evaluation(self.grid_position(t), self.num_steps, sigma)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *, step_info: StepInfo | None = None,
                 **_unused) -> torch.Tensor:
        """Denoiser: flow state ``x`` (B, C, *grid) float32 at ``t`` (B,) -> x0_hat (float32).

        ``step_info`` (passed by :func:`specdiff.sample`) places the call on the walk;
        the result depends only on the arguments (and the callback-editable embeddings)."""
        grid = tuple(x.shape[2:])
        if self.cache_mode == "full_resolution":
            # the community pattern: every coarse call starts from an empty cache (so it
            # computes), and the first full-resolution call starts the caches afresh
            if grid != tuple(self.grid) or self._last_grid != grid:
                self.reset_caches_whole()
        elif self._last_grid is not None and grid != self._last_grid:
            self.reset_caches()
        self._last_grid = grid
        try:
            return self._evaluate(x, t, step_info)
        finally:
            # overrides a cache needed for this one evaluation (cache_hooks), undone
            while self._after_evaluation:
                self._after_evaluation.pop()()

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor, step_info: StepInfo | None):
        tf = float(t.reshape(-1)[0])
        timestep, sigma = self.timestep(tf)
        ev = self.evaluation(tf, sigma, step_info)
        self.pipe._current_timestep = timestep
        if self.flow:
            out = self.model_output(x.to(self.latent_dtype), timestep, ev)
            return x - sigma * out.to(x.dtype)
        # VP: x_ve = x (1 + s); the model sees x_ve / sqrt(1 + s^2) (scale_model_input)
        x_ve = x * (1.0 + sigma)
        x_in = (x_ve / math.sqrt(sigma * sigma + 1.0)).to(self.latent_dtype)
        out = self.model_output(x_in, timestep, ev).to(x.dtype)
        if self.scheduler.config.prediction_type == "v_prediction":
            return x_ve / (sigma * sigma + 1.0) - (sigma / math.sqrt(sigma * sigma + 1.0)) * out
        return x_ve - sigma * out

    # ------------------------------------------------------------------
    # callbacks: the pipeline's latent layout and frame
    # ------------------------------------------------------------------
    def to_latents(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Flow state at ``t`` -> the latents the pipeline's loop would hold (its layout, VE for VP)."""
        if not self.flow and t > 0:
            x = x / (1.0 - t)
        return self.pack(x.to(self.latent_dtype))

    def from_latents(self, latents: torch.Tensor, t: float, grid) -> torch.Tensor:
        x = self.unpack(latents, tuple(grid)).to(torch.float32)
        if not self.flow and t > 0:
            x = x * (1.0 - t)
        return x

    # ------------------------------------------------------------------
    # solver
    # ------------------------------------------------------------------
    def solver(self, choice) -> Solver:
        """The solver reproducing the pipeline's scheduler (``"auto"``) or the one asked for.

        The solver is not tied to a plan: UniPC reads the steps left from the
        ``StepInfo`` the sampler passes."""
        from ..unipc import unipc_solver

        if choice != "auto":
            if choice == "unipc":
                return unipc_solver()
            return get_solver(choice)
        sched = self.scheduler
        name = type(sched).__name__
        cfg = sched.config
        if name == "FlowMatchEulerDiscreteScheduler":
            if getattr(cfg, "stochastic_sampling", False):
                raise ValueError(f"{self.family}: stochastic_sampling=True is not supported; pass "
                                 "solver='stochastic' for specdiff's ancestral sampler")
            return get_solver("euler")
        if name == "EulerDiscreteScheduler":
            return get_solver("euler")
        if name == "UniPCMultistepScheduler":
            if not cfg.predict_x0 or getattr(sched, "solver_p", None) is not None or \
                    list(cfg.disable_corrector) or cfg.thresholding:
                raise ValueError(
                    f"{self.family}: UniPC is reproduced with predict_x0=True, no solver_p, no "
                    "disable_corrector and no thresholding; pass solver='unipc' or 'euler' to "
                    "override")
            return unipc_solver(order=int(cfg.solver_order), variant=cfg.solver_type,
                                lower_order_final=bool(cfg.lower_order_final))
        raise ValueError(
            f"{self.family}: SpectralPipeline reproduces the schedulers "
            f"{sorted(SCHEDULER_SOLVERS)}, not {name}; switch the pipeline's scheduler (e.g. "
            f"pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)) or pass "
            "solver='euler' (or 'heun', 'dpmpp_2m', 'unipc') to run that solver on this "
            "scheduler's time grid")

    # ------------------------------------------------------------------
    # helpers for subclasses
    # ------------------------------------------------------------------
    def draw_noise(self, shape, dtype) -> torch.Tensor:
        """The pipeline's initial noise: ``randn_tensor(shape, generator)`` in the pipeline's
        dtype (so the same seed gives the same noise as ``pipe(...)``), as float32."""
        from diffusers.utils.torch_utils import randn_tensor

        if self.dry:
            return torch.zeros(tuple(shape), dtype=torch.float32, device=self.device)
        gen = self.kw.get("generator")
        if isinstance(gen, list) and len(gen) != shape[0]:
            raise ValueError(
                f"You have passed a list of generators of length {len(gen)}, but requested an "
                f"effective batch size of {shape[0]}. Make sure the batch size matches the length "
                "of the generators.")
        return randn_tensor(tuple(shape), generator=gen, device=self.device,
                            dtype=dtype).to(torch.float32)

    def cache_context(self, name: str, **kwargs):
        mod = self.denoiser_module
        if hasattr(mod, "cache_context"):
            return mod.cache_context(name, **kwargs)
        return _null()

    def callback_inputs(self, names, x, t_next) -> dict:
        out = {}
        for k in names:
            if k == "latents":
                out[k] = self.to_latents(x, t_next)
            elif k in self.tensors:
                out[k] = self.tensors[k]
            else:
                raise ValueError(f"{self.family}: callback tensor input {k!r} is not available; "
                                 f"use one of {['latents', *self.callback_tensors]}")
        return out


@contextmanager
def _null():
    yield


@contextmanager
def forward_hook(module: torch.nn.Module, hook):
    """``module.register_forward_hook(hook)`` for the duration of a ``with`` block."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
