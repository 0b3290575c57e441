"""Plans: which grid each part of the time grid runs on (DESIGN.md section 4).

A :class:`Plan` is data: stages, each a grid shape and a descending slice of
times, plus the transition used between stages. The sampler
(:func:`specdiff.sample`) walks it; :meth:`Plan.cost` prices it.

Time grids follow the flow frame (``t = 1`` noise) and are built once for the
full-resolution target with the model's own shift. Between two stages with a
spectral transition, the next stage starts at ``resolution_shift(t_end, rho)``
with ``rho = sqrt(N_next / N_prev)``: the plan stores that value, the sampler
checks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from .limits import MAX_STEPS
from .solvers import get_solver
from .spectral import resolution_shift, sequence_items
from .transitions import LEGACY_KINDS, Transition, X0Renoise, as_transition

TRANSITIONS = LEGACY_KINDS
"""The legacy transition strings the ``transition=`` arguments accept (see
:mod:`specdiff.transitions` for the objects: ``Spectral``, ``Pyramid``, ``X0Renoise``)."""


# ---------------------------------------------------------------------------
# spectra and the SPD transition time
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerSpectrum:
    """``P(w) = A * w**-beta``: variance of the full-resolution DCT coefficient at
    radial frequency ``w`` (cycles per image, ``w = |k| / 2``)."""

    A: float
    beta: float
    name: str = ""

    def __post_init__(self):
        if not (self.A > 0 and math.isfinite(self.A)):
            raise ValueError(f"spectrum amplitude A must be positive, got {self.A}")
        if not (0 < self.beta < 10):
            raise ValueError(f"spectrum exponent beta must lie in (0, 10), got {self.beta}")

    def __call__(self, w):
        return self.A * w ** (-self.beta)


#: Constants fitted by the SPD authors (official configs.yaml; methods.md section 1).
SPECTRA: dict[str, PowerSpectrum] = {
    "flux": PowerSpectrum(203.615097, 1.915461, "FLUX.1 VAE"),
    "wan": PowerSpectrum(219.484718, 2.422687, "Wan 2.1 VAE"),
    "pixelgen": PowerSpectrum(3745.46, 2.4493, "PixelGen (pixel space)"),
}


def get_spectrum(spec: str | PowerSpectrum | tuple[float, float]) -> PowerSpectrum:
    if isinstance(spec, PowerSpectrum):
        return spec
    if isinstance(spec, str):
        if spec not in SPECTRA:
            raise ValueError(f"unknown spectrum {spec!r}; known: {sorted(SPECTRA)} or pass (A, beta)")
        return SPECTRA[spec]
    A, beta = spec
    return PowerSpectrum(float(A), float(beta))


def _as_number(value, name: str) -> float:
    """``float(value)`` for a real number; ``ValueError`` naming ``name`` otherwise.

    ``float()`` alone would accept a string (``'0.05'``) and bools, and fail with a
    ``TypeError`` on ``None``."""
    if not isinstance(value, str | bytes | bool) and value is not None:
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def _check_delta(delta: float) -> None:
    if not (0 < _as_number(delta, "delta") < 1):
        raise ValueError(f"delta (noise-dominated tolerance) must lie in (0, 1), e.g. 0.05; "
                         f"got {delta}")


def activation_time(P: float, delta: float = 0.01) -> float:
    """SPD paper Eq. 9: ``t_w = 1 / (1 + sqrt(delta / (P (1 + P - delta))))``.

    The time after which a frequency with data power ``P`` stops being
    noise-dominated (per-frequency SNR ``((1-t)/t)^2 P`` reaches
    ``delta / (1 + P - delta)``).
    """
    _check_delta(delta)
    if not P > 0:
        raise ValueError(f"power must be positive, got {P}")
    return 1.0 / (1.0 + math.sqrt(delta / (P * (1.0 + P - delta))))


def spd_transition_time(A: float, beta: float, scale: float, min_side: int,
                        delta: float = 0.01) -> float:
    """SPD paper Eq. 10: when a stage at ``scale`` must hand over to a finer grid.

    ``t* = activation_time(A * w**-beta)`` at the coarse grid's Nyquist
    frequency in full-resolution units, ``w = scale * min_side / 2``.
    Check: FLUX constants, scale 0.5, min_side 128, delta 0.01 -> 0.853
    (and ``resolution_shift(0.853, 2) = 0.920``).
    """
    if not (0 < scale < 1):
        raise ValueError(f"scale must lie in (0, 1) for a coarse stage, got {scale}")
    if min_side < 2:
        raise ValueError(f"min_side must be at least 2, got {min_side}")
    w = scale * min_side / 2.0
    return activation_time(PowerSpectrum(A, beta)(w), delta)


# ---------------------------------------------------------------------------
# time grids
# ---------------------------------------------------------------------------


# MAX_STEPS (specdiff.limits, free of torch for the CLI's parsers): far above what any
# sampler uses (10-1000), far below what exhausts memory (10^8 steps build tens of GB of plan)


def check_steps(num_steps: int, name: str = "num_steps") -> int:
    """``num_steps`` as an ``int``; ``ValueError`` naming ``name`` unless it is a whole
    number in ``[1, MAX_STEPS]``."""
    try:
        whole = not isinstance(num_steps, str | bytes | bool) and int(num_steps) == num_steps
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or num_steps < 1:
        raise ValueError(f"{name} must be a positive whole number of steps such as 50, got "
                         f"{num_steps!r}")
    if num_steps > MAX_STEPS:
        raise ValueError(f"{name} must be at most {MAX_STEPS} (specdiff.plans.MAX_STEPS; no "
                         f"sampler uses more), got {num_steps}")
    return int(num_steps)


def flow_times(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """``shift * u / (1 + (shift - 1) u)`` at ``u = linspace(1, 0, num_steps + 1)`` (SD3 shift).

    Returns a float64 ``(num_steps + 1,)`` descending tensor from 1 to 0.
    """
    check_steps(num_steps)
    if not _as_number(shift, "shift") > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return resolution_shift(u, shift)


def flux_mu(seq_len: int, base_seq: int = 256, max_seq: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent ``mu`` (diffusers ``calculate_shift``), linear in tokens."""
    m = (max_shift - base_shift) / (max_seq - base_seq)
    return seq_len * m + (base_shift - m * base_seq)


def flux_times(num_steps: int, seq_len: int, *, mu: float | None = None) -> torch.Tensor:
    """FLUX.1's schedule: ``sigmas = linspace(1, 1/N, N)`` warped by ``e^mu`` and a final 0.

    ``sigma' = e^mu / (e^mu + 1/sigma - 1)`` with ``mu = flux_mu(seq_len)`` from the
    *full-resolution* packed token count (4096 at 1024^2, mu = 1.15).
    """
    check_steps(num_steps)
    try:
        tokens_ok = not isinstance(seq_len, bool) and int(seq_len) == seq_len and seq_len >= 1
    except (TypeError, ValueError, OverflowError):
        tokens_ok = False
    if not tokens_ok:
        # mu is linear in seq_len: 0 or a negative count gives a shift but a meaningless one
        raise ValueError(f"seq_len must be the positive packed token count of the full-resolution "
                         f"latent (4096 at 1024x1024), got {seq_len!r}")
    if mu is None:
        mu = flux_mu(seq_len)
    elif not math.isfinite(_as_number(mu, "mu")):
        raise ValueError(f"mu must be a finite number, got {mu}")
    s = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    em = math.exp(mu)
    s = em / (em + (1.0 / s - 1.0))
    return torch.cat([s, s.new_zeros(1)])


def wan_times(num_steps: int, shift: float = 5.0) -> torch.Tensor:
    """Wan 2.1's UniPC flow schedule: ``linspace(1, 1/1000, N+1)[:-1]`` shifted, then 0.

    diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)``
    (it also nudges the first sigma by -1e-6, omitted here). Shift 5.0 is the
    SPD reference runs' 720p setting, 3.0 the 480p default.
    """
    check_steps(num_steps)
    u = torch.linspace(1.0, 1.0 / 1000, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([resolution_shift(u, shift), u.new_zeros(1)])


def _as_times(times) -> torch.Tensor:
    t = torch.as_tensor(times, dtype=torch.float64).flatten()
    if t.numel() < 2:
        raise ValueError("a time grid needs at least two entries (start and end)")
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise ValueError("time grid entries must lie in [0, 1]")
    if not (t[1:] < t[:-1]).all():
        raise ValueError("time grid must be strictly decreasing (t = 1 is noise)")
    return t


def respace(reference, t_start: float, t_end: float, num_steps: int) -> list[float]:
    """``num_steps`` steps from ``t_start`` to ``t_end`` following a grid's own profile.

    The reference grid is read as a monotone function of its fractional index
    (piecewise linear); the new points are evenly spaced in that index between
    the positions of ``t_start`` and ``t_end``. Pass a number instead of a grid
    to use the SD3 shift profile with that shift.
    """
    check_steps(num_steps)
    if not (0 <= t_end < t_start <= 1):
        raise ValueError(f"need 1 >= t_start > t_end >= 0, got {t_start}, {t_end}")
    if isinstance(reference, int | float):
        ref = flow_times(1024, float(reference))
    else:
        ref = _as_times(reference)
    n = ref.numel() - 1
    idx = torch.arange(n + 1, dtype=torch.float64)
    # position u(t) along the reference: the ref is decreasing in index
    rr, ii = ref.flip(0), idx.flip(0)

    def pos(t):
        t = min(max(t, float(rr[0])), float(rr[-1]))
        j = int(torch.searchsorted(rr, torch.tensor(t, dtype=torch.float64)).clamp(1, n))
        w = (t - rr[j - 1]) / (rr[j] - rr[j - 1])
        return float(ii[j - 1] + w * (ii[j] - ii[j - 1]))

    u = torch.linspace(pos(t_start), pos(t_end), num_steps + 1, dtype=torch.float64)
    j = u.floor().long().clamp(0, n - 1)
    w = u - j
    out = ref[j] * (1 - w) + ref[j + 1] * w
    out[0], out[-1] = t_start, t_end
    return [float(v) for v in out]


# ---------------------------------------------------------------------------
# the Plan
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage: a grid, the descending times it walks (first = entry, last = exit),
    the transition that enters it (``None`` for the first stage) and the key of the
    model that runs it (``None``: the default model).

    ``Stage(grid, times)`` with no transition takes the plan's ``transition=``
    (``Spectral("dct")`` unless told otherwise) when the :class:`Plan` is built.
    """

    grid: tuple[int, ...]
    times: tuple[float, ...]
    transition: Transition | None = None
    model: str | None = None

    def __post_init__(self):
        if self.transition is not None and not isinstance(self.transition, Transition):
            object.__setattr__(self, "transition", as_transition(self.transition))
        if self.model is not None and not (isinstance(self.model, str) and self.model):
            raise ValueError(f"a stage's model key must be a non-empty string or None, got {self.model!r}")

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    @property
    def elements(self) -> int:
        return math.prod(self.grid)


CostModel = (str | Callable[[tuple[int, ...]], float]
             | Mapping[tuple[int, ...] | tuple[str | None, tuple[int, ...]], float])

#: the model key of stages that name none (``Stage.model = None``)
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class PlanMeta:
    """What a constructor knew when it built a plan (typed; read by tables, never parsed).

    ``family`` names the constructor (``"full"``, ``"spd"``, ``"fraction"``,
    ``"pyramidal"``, ``"bottleneck"``, ``"cascade"``, ``"scalewise"``,
    ``"optimal"``; ``""`` for a hand-built plan). The other fields are ``None``
    where the family has no such notion.
    """

    family: str = ""
    scales: tuple[float, ...] | None = None
    delta: float | tuple[float, ...] | None = None
    t_star: tuple[float, ...] | None = None
    continuation: str | None = None
    switch_steps: tuple[int, ...] | None = None
    fractions: tuple[float, ...] | None = None
    switch_times: tuple[float, ...] | None = None
    renoise_at: tuple[float, ...] | None = None
    # optimal_plan: the closed-form quality it found and the bar it had to meet
    w2: float | None = None
    kl: float | None = None
    cost: float | None = None
    target: float | None = None
    quality: str | None = None
    baseline_w2: float | None = None
    baseline_kl: float | None = None
    deltas: tuple[float, ...] | None = None
    solver: str | None = None

    def as_dict(self) -> dict:
        """The fields that are set, for JSON output."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) not in (None, "")}


@dataclass(frozen=True, init=False)
class Plan:
    """Stages, each with the transition that enters it and its model key.

    Build with the constructors below, or by hand from :class:`Stage` objects
    (one plan may mix transitions and models). ``transition=`` fills the entry
    transition of every later stage that has none (a legacy string such as
    ``"dct"`` or ``"x0_bicubic"``, or a :class:`Transition`).

    Invariants (checked): every stage's times strictly decrease; the last
    stage ends at ``t = 0``; after a carried transition the next stage starts
    at the time the resize returns; after an x0 re-noise it restarts at ``t > 0``;
    all grids have the same rank.
    """

    stages: tuple[Stage, ...]
    name: str = ""
    meta: PlanMeta = field(default=PlanMeta(), compare=False)

    def __init__(self, stages, transition: Transition | str | None = None, name: str = "",
                 meta: PlanMeta | None = None):
        stages = tuple(stages)
        if not stages or not all(isinstance(st, Stage) for st in stages):
            raise ValueError("a plan needs at least one stage, each a specdiff.plans.Stage")
        default = as_transition(transition if transition is not None else "dct")
        if stages[0].transition is not None:
            raise ValueError("the first stage has no entering transition (leave Stage.transition None)")
        stages = stages[:1] + tuple(st if st.transition is not None else replace(st, transition=default)
                                    for st in stages[1:])
        if meta is None:
            meta = PlanMeta()
        if not isinstance(meta, PlanMeta):
            raise ValueError(f"meta must be a specdiff.plans.PlanMeta, got {type(meta).__name__}")
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "meta", meta)
        self._validate()

    def _validate(self) -> None:
        rank = len(self.stages[0].grid)
        last = len(self.stages) - 1
        for i, st in enumerate(self.stages):
            if len(st.grid) != rank or any(int(g) < 1 for g in st.grid):
                raise ValueError(f"stage {i} grid {st.grid} is not a valid {rank}-D grid")
            if len(st.times) < 1:
                raise ValueError(f"stage {i} has no times")
            ts = st.times
            if any(not (0 <= a <= 1) for a in ts) or any(b >= a for a, b in zip(ts, ts[1:])):
                raise ValueError(f"stage {i} times must strictly decrease within [0, 1]: {ts}")
            # a single time is allowed only before an x0 re-noise (one estimate, no step)
            if len(ts) < 2 and (i == last or self.stages[i + 1].transition.carries_state):
                raise ValueError(f"stage {i} needs at least one step")
        if self.stages[-1].times[-1] != 0:
            raise ValueError("the last stage must end at t = 0")
        for i in range(last):
            a, b = self.stages[i], self.stages[i + 1]
            if a.grid == b.grid:
                raise ValueError(f"stages {i} and {i + 1} have the same grid {a.grid}; merge them")
            tr = b.transition
            tr.check(a.grid, b.grid)
            if tr.carries_state:
                expected = self.entry_time(i)
                if abs(b.times[0] - expected) > 1e-9:
                    raise ValueError(
                        f"stage {i + 1} starts at {b.times[0]} but the {tr.kind} "
                        f"transition from t={a.times[-1]} gives {expected}"
                    )
            elif not b.times[0] > 0:
                raise ValueError(f"stage {i + 1} must restart at t > 0 after an x0 transition")

    # --- structure -------------------------------------------------------
    @property
    def transitions(self) -> tuple[Transition, ...]:
        """The transition entering each stage after the first (``len(stages) - 1`` of them)."""
        return tuple(st.transition for st in self.stages[1:])

    @property
    def transition(self) -> str:
        """Label of the plan's transitions: the common kind (``"dct"`` for one stage) or ``"mixed"``."""
        kinds = {tr.kind for tr in self.transitions}
        if not kinds:
            return "dct"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def carries_state(self) -> bool:
        """Every transition carries the state (no x0 re-noise anywhere)."""
        return all(tr.carries_state for tr in self.transitions)

    @property
    def model_keys(self) -> tuple[str, ...]:
        """The model keys the stages name (``DEFAULT_MODEL`` for stages naming none), in order."""
        keys = [st.model or DEFAULT_MODEL for st in self.stages]
        return tuple(dict.fromkeys(keys))

    def coupling_basis(self, coupled: bool = True) -> str:
        """Basis in which the seed noise is split between the stages' grids.

        The common basis of the carried transitions (``"dct"`` when there are
        none). Coupled, it raises ``ValueError`` when carried transitions
        disagree: one full-resolution noise cannot be band-split in two bases
        at once. With ``coupled=False`` only the first stage's start is a
        projection of the seed noise, and the first carried basis is used.
        """
        ordered = [tr.coupling_basis for tr in self.transitions if tr.coupling_basis is not None]
        if not coupled:
            return ordered[0] if ordered else "dct"
        bases = set(ordered)
        if len(bases) > 1:
            raise ValueError(
                f"seed-coupled noise needs one basis for all carried transitions, this plan mixes "
                f"{sorted(bases)}; sample it with coupled=False (fresh noise at each transition)")
        return bases.pop() if bases else "dct"

    @property
    def full_grid(self) -> tuple[int, ...]:
        return self.stages[-1].grid

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def entry_time(self, i: int) -> float:
        """Time at which stage ``i + 1`` starts for a carried transition out of stage ``i``."""
        a, b = self.stages[i], self.stages[i + 1]
        return b.transition.entry_time(a.times[-1], a.grid, b.grid)

    def evaluations(self, solver="euler") -> list[int]:
        """Model evaluations per stage (an x0 transition out of ``t > 0`` costs one more,
        charged to the stage whose model takes that estimate)."""
        sv = get_solver(solver)
        out = []
        for i, st in enumerate(self.stages):
            n = sv.evaluations(st.times) if st.steps else 0
            nxt = self.stages[i + 1] if i + 1 < len(self.stages) else None
            if nxt is not None and not nxt.transition.carries_state and st.times[-1] > 0:
                n += 1
            out.append(n)
        return out

    def eval_costs(self, cost_model: CostModel = "tokens") -> list[float]:
        """Cost of one evaluation on each stage's grid with its model, in units of one
        evaluation of the last stage's model on the full grid."""
        full, full_model = self.full_grid, self.stages[-1].model
        return [_unit_cost(st.grid, st.model, full, full_model, cost_model) for st in self.stages]

    def cost(self, cost_model: CostModel = "tokens", solver="euler") -> float:
        """Total cost in units of one full-resolution model evaluation.

        ``cost_model``: ``"tokens"`` (cost ~ elements: convnets, MLPs),
        ``"attention"`` (cost ~ elements^2: attention-dominated transformers),
        a callable ``grid -> cost``, or a mapping such as the measured FLOPs from
        :func:`measure_eval_cost`, keyed by ``grid`` or, for plans that run
        several models, by ``(model_key, grid)`` (tried first).
        """
        return sum(
            n * c for n, c in zip(self.evaluations(solver), self.eval_costs(cost_model), strict=True)
        )

    def speedup_bound(self, cost_model: CostModel = "tokens", solver="euler",
                      baseline_evaluations: int | None = None) -> float:
        """Predicted speed-up over full resolution with ``baseline_evaluations`` evaluations
        (default: as many as this plan makes). Transitions are taken as free."""
        base = baseline_evaluations or sum(self.evaluations(solver))
        return base / self.cost(cost_model, solver)

    def describe(self, solver="euler", cost_model: CostModel = "tokens") -> list[dict]:
        """One row per stage: grid, entering transition, model, steps, evaluations, time span,
        relative cost."""
        rows = []
        evals = self.evaluations(solver)
        costs = self.eval_costs(cost_model)
        for i, st in enumerate(self.stages):
            rows.append({
                "stage": i, "grid": "x".join(map(str, st.grid)),
                "transition": st.transition.kind if st.transition is not None else "-",
                "model": st.model or DEFAULT_MODEL, "steps": st.steps,
                "evaluations": evals[i], "t_start": st.times[0], "t_end": st.times[-1],
                "eval_cost": costs[i], "cost": evals[i] * costs[i],
            })
        return rows

    def with_name(self, name: str) -> Plan:
        return Plan(self.stages, None, name, self.meta)

    def with_models(self, models: Sequence[str | None]) -> Plan:
        """The same plan with stage ``i`` run by model key ``models[i]``."""
        models = list(models)
        if len(models) != len(self.stages):
            raise ValueError(f"need one model key per stage ({len(self.stages)}), got {len(models)}")
        return Plan(tuple(replace(st, model=m) for st, m in zip(self.stages, models, strict=True)),
                    None, self.name, self.meta)


def _unit_cost(grid, model, full, full_model, cost_model) -> float:
    if isinstance(cost_model, str):
        ratio = math.prod(grid) / math.prod(full)
        if cost_model == "tokens":
            return ratio
        if cost_model == "attention":
            return ratio**2
        raise ValueError(
            f"cost_model must be 'tokens', 'attention', a callable or a mapping, got {cost_model!r}"
        )
    if callable(cost_model):
        return float(cost_model(tuple(grid))) / float(cost_model(tuple(full)))

    def lookup(m, g):
        g = tuple(g)
        for key in ((m, g), (m or DEFAULT_MODEL, g), g):
            if key in cost_model:
                return float(cost_model[key])
        raise ValueError(f"the cost mapping has no entry for grid {g} (model {m or DEFAULT_MODEL})")

    return lookup(model, grid) / lookup(full_model, full)


def measure_eval_cost(denoiser, grids: Sequence[Sequence[int]], channels: int, *,
                      batch: int = 1, cond: dict | None = None,
                      dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    """FLOPs of one denoiser call per grid, counted by ``torch.utils.flop_counter``.

    Returns ``{grid: flops}``; pass it as ``cost_model`` to :meth:`Plan.cost`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for g in grids:
        g = tuple(int(v) for v in g)
        x = torch.zeros(batch, channels, *g, dtype=dtype, device=device)
        t = torch.full((batch,), 0.5, dtype=dtype, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            denoiser(x, t, **(cond or {}))
        out[g] = float(fc.get_total_flops())
    return out


# ---------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------


def _as_grid(grid) -> tuple[int, ...]:
    g = tuple(int(v) for v in grid)
    if not g or any(v < 1 for v in g):
        raise ValueError(f"grid must be a tuple of positive sizes, got {grid}")
    return g


def check_scales(scales) -> tuple[float, ...]:
    """Stage scales as floats, positive and strictly increasing to 1.0 (returned exactly 1.0);
    ``ValueError`` naming ``scales`` otherwise (a bare number, a string, 0, a wrong order)."""
    items = sequence_items(scales)
    if items is None:
        # a bare 0.5 would fail with a TypeError and a string would be read digit by digit
        raise ValueError(f"scales must be a sequence of numbers increasing to 1.0 such as "
                         f"(0.5, 1.0), got {type(scales).__name__} {scales!r}")
    s = tuple(_as_number(v, "each of scales") for v in items)
    if not s or abs(s[-1] - 1.0) > 1e-9:
        raise ValueError(f"scales must end at 1.0 (the full grid), got {scales}")
    if any(v <= 0 for v in s) or any(b <= a for a, b in zip(s, s[1:])):
        raise ValueError(f"scales must be positive and strictly increasing to 1.0, got {scales}")
    return s[:-1] + (1.0,)



def stage_grids(grid, scales, *, multiple: int = 1, axes: int = 2) -> list[tuple[int, ...]]:
    """Grid of each stage: the last ``axes`` axes scaled and rounded to ``multiple``.

    Video ``(T, H, W)`` keeps ``T`` with the default ``axes=2``. ``multiple`` keeps
    sizes divisible by a patch size (2 for FLUX's 2x2 packing).
    """
    grid = _as_grid(grid)
    scales = check_scales(scales)
    if not 1 <= axes <= len(grid):
        raise ValueError(f"axes must be between 1 and {len(grid)}, got {axes}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if any(g % multiple for g in grid[-axes:]):
        raise ValueError(f"full grid {grid} is not divisible by multiple={multiple}")
    out = []
    for s in scales:
        g = list(grid)
        for a in range(len(grid) - axes, len(grid)):
            k = int(round(grid[a] * s / multiple))
            if k == 0 and multiple > 1:  # (multiple 1: the plans' own 1x1-stage check says it)
                # rounding up to one multiple would silently give a stage many times the
                # size asked for (scale 0.001 on 128 with multiple 8: 8, not 0.128)
                raise ValueError(
                    f"scale {s:g} asks for a side of {grid[a] * s:g} on the {grid} grid, below "
                    f"the smallest stage side {multiple} (stage sides are multiples of "
                    f"{multiple}); use scales of at least {multiple / grid[a]:.3g}")
            g[a] = max(multiple, k * multiple)
        out.append(tuple(g))
    for a, b in zip(out, out[1:]):
        if a == b:
            raise ValueError(
                f"scales {scales} give the same grid {a} twice on {grid} (multiple={multiple}); "
                "use fewer or more distinct scales"
            )
    return out


def full_plan(times, grid) -> Plan:
    """One stage at full resolution: the plain solver."""
    t = _as_times(times)
    if t[-1] != 0:
        raise ValueError("the time grid must end at 0")
    return Plan((Stage(_as_grid(grid), tuple(float(v) for v in t)),), None, "full",
                PlanMeta(family="full"))


def _per_stage_transitions(transition, n_stages: int) -> list[Transition]:
    """One entering transition per later stage from one value or a sequence of them."""
    if isinstance(transition, Transition | str):
        return [as_transition(transition)] * (n_stages - 1)
    trs = [as_transition(tr) for tr in transition]
    if len(trs) != n_stages - 1:
        raise ValueError(f"need one transition per stage switch ({n_stages - 1}), got {len(trs)}")
    return trs


def _check_transitions(trs: Sequence[Transition], grids) -> None:
    for tr, a, b in zip(trs, grids[:-1], grids[1:], strict=True):
        tr.check(a, b)


def _per_stage_models(models, n_stages: int) -> list[str | None]:
    if models is None:
        return [None] * n_stages
    models = list(models)
    if len(models) != n_stages:
        raise ValueError(f"need one model key per stage ({n_stages}), got {len(models)}")
    return models


def _keep_plan(t: torch.Tensor, grids, switch_idx: list[int], transition, name: str,
               meta: PlanMeta) -> Plan:
    """Stages on the global grid: stage i ends at ``t[switch_idx[i]]``; the next one
    restarts there with that entry replaced by the shifted time (SPD's rule)."""
    trs = _per_stage_transitions(transition, len(grids))
    if not all(tr.carries_state for tr in trs):
        raise ValueError("this plan keeps the global time grid across switches, so every "
                         "transition must carry the state: use Spectral(...) or Pyramid()")
    _check_transitions(trs, grids)
    stages, start, first = [], 0, float(t[0])
    for i, g in enumerate(grids):
        end = switch_idx[i] if i < len(switch_idx) else len(t) - 1
        times = [first] + [float(v) for v in t[start + 1 : end + 1]]
        stages.append(Stage(g, tuple(times), trs[i - 1] if i else None))
        if i < len(grids) - 1:
            first = trs[i].entry_time(float(t[end]), g, grids[i + 1])
            start = end
    return Plan(tuple(stages), None, name, meta)


def staged_plan(grids, spans, steps, profile, transition="dct", name: str = "",
                meta: PlanMeta | None = None, *, models=None) -> Plan:
    """Stages with their own spacing, transition and model.

    Stage ``i`` walks ``spans[i] = (t_start, t_end)`` in ``steps[i]`` steps along
    ``profile`` (a reference time grid or an SD3 shift; one for all stages or a
    list with one per stage). ``transition`` is one transition (object or legacy
    string) for every switch or a sequence with one per switch, so one plan can
    mix them: after a carried transition (``Spectral``, ``Pyramid``) the next
    stage starts at the time the resize returns (its ``t_start`` is ignored and
    may be ``None``); after an ``X0Renoise`` it starts at its own ``t_start``.
    ``models`` gives each stage's model key (default: all ``None``).
    """
    grids = [tuple(g) for g in grids]
    trs = _per_stage_transitions(transition, len(grids))
    keys = _per_stage_models(models, len(grids))
    _check_transitions(trs, grids)
    if len(spans) != len(grids) or len(steps) != len(grids):
        raise ValueError(f"need one span and one step count per stage ({len(grids)})")
    stages = []
    t_start = spans[0][0]
    profiles = profile if isinstance(profile, list) else [profile] * len(grids)
    for i, g in enumerate(grids):
        t_end = spans[i][1]
        if t_start is None or not (t_start > t_end):
            raise ValueError(
                f"stage {i} would run from t={t_start} to t={t_end:.4f}; switch times must "
                "decrease and stay below the previous stage's entry time (and a stage entered "
                "by an x0 re-noise needs its own start time)"
            )
        times = tuple(respace(profiles[i], t_start, t_end, int(steps[i])))
        stages.append(Stage(g, times, trs[i - 1] if i else None, keys[i]))
        if i < len(grids) - 1:
            tr = trs[i]
            t_start = tr.entry_time(t_end, g, grids[i + 1]) if tr.carries_state else spans[i + 1][0]
    return Plan(tuple(stages), None, name, meta)


def spd_switch_times(grid, scales, spectrum, delta: float = 0.01, *, multiple: int = 1,
                     axes: int = 2) -> list[float]:
    """SPD transition time out of each coarse stage (paper Eq. 10), from the actual grids."""
    spec = get_spectrum(spectrum)
    grids = stage_grids(grid, scales, multiple=multiple, axes=axes)
    deltas = check_delta(delta, len(grids) - 1)
    full_min = min(_as_grid(grid)[-axes:]) if axes >= 2 else _as_grid(grid)[-1]
    out = []
    for s, g, d in zip(check_scales(scales)[:-1], grids[:-1], deltas, strict=True):
        w = min(g[-axes:]) / 2.0
        if full_min < 2:
            raise ValueError("grid too small for SPD")
        if min(g[-axes:]) < 2:
            # a 1-pixel side has no frequency band to hand over: Eq. 10 is meaningless there
            raise ValueError(
                f"scales: scale {s:g} gives the stage grid {g} on {tuple(grid)}, whose smaller "
                f"side is below 2; use scales of at least {2 / full_min:.3g} on this grid")
        out.append(activation_time(spec(w), d))
    return out


def check_delta(delta, n: int) -> list[float]:
    """SPD's ``delta`` as one float per transition (``n`` of them), each in (0, 1);
    ``ValueError`` naming ``delta`` otherwise (``None``, a string, a wrong count)."""
    deltas = _per_transition(delta, n, "delta")
    for d in deltas:
        _check_delta(d)
    return deltas


def _per_transition(value, n, what):
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)] * n
    items = sequence_items(value)
    if items is None:
        raise ValueError(f"{what} must be a number or one number per transition ({n}), got "
                         f"{type(value).__name__} {value!r}")
    v = [_as_number(x, what) for x in items]
    if len(v) != n:
        raise ValueError(f"need one {what} per transition ({n}), got {len(v)}")
    return v


def spd_plan(times, grid, scales, *, A: float | None = None, beta: float | None = None,
             spectrum=None, delta=0.01, continuation: str = "keep",
             transition: Transition | str = "dct", multiple: int = 1, axes: int = 2) -> Plan:
    """Spectral Progressive Diffusion plan (SPD paper Eq. 9-10).

    Stage ``i`` (grid from ``scales[i]``) hands over at the first grid time
    ``<= t*_i`` (:func:`spd_transition_time` at the stage's own Nyquist
    frequency). ``continuation="keep"`` replaces that one entry by the shifted
    time and keeps the rest of the grid: total evaluations unchanged, the
    paper's rule. ``continuation="respace"`` spreads the remaining evaluations
    over ``[t_new, 0]`` with the grid's own profile, which removes the one long
    step after each switch.

    Args:
        times: full-resolution time grid (e.g. :func:`flux_times`), descending to 0.
        grid: full-resolution grid, e.g. ``(128, 128)`` latents or ``(21, 60, 104)``.
        scales: increasing to 1.0, e.g. ``(0.5, 1.0)``.
        A, beta / spectrum: power law of the data (``spectrum`` may be a name in
            :data:`SPECTRA`, a :class:`PowerSpectrum` or ``(A, beta)``).
        delta: noise-dominated tolerance in (0, 1), one value or one per transition.
    """
    t = _as_times(times)
    if t[-1] != 0:
        raise ValueError("the time grid must end at 0")
    if spectrum is None:
        if A is None or beta is None:
            raise ValueError("give the data spectrum: A= and beta=, or spectrum=")
        spectrum = (A, beta)
    spec = get_spectrum(spectrum)
    if continuation not in ("keep", "respace"):
        raise ValueError(f"continuation must be 'keep' or 'respace', got {continuation!r}")
    grids = stage_grids(grid, scales, multiple=multiple, axes=axes)
    tr = as_transition(transition)
    if not tr.carries_state:
        raise ValueError("SPD carries the state: use transition Spectral('dct'|'fft'|'haar') or "
                         "Pyramid() (or the strings 'dct', 'fft', 'haar', 'pyramid')")
    _check_transitions([tr] * (len(grids) - 1), grids)
    tstars = spd_switch_times(grid, scales, spec, delta, multiple=multiple, axes=axes)
    n = len(t) - 1
    meta = PlanMeta(family="spd", delta=delta if isinstance(delta, int | float) else tuple(delta),
                    t_star=tuple(tstars), scales=tuple(scales), continuation=continuation)
    name = f"spd {'/'.join(f'{s:g}' for s in scales)} delta={delta}"
    if continuation == "keep":
        idx, last = [], 0
        for ts in tstars:
            below = (t <= ts).nonzero()
            j = int(below[0]) if below.numel() else n
            j = min(max(j, last + 1), n - 1)
            idx.append(j)
            last = j
        if len(idx) and idx[-1] >= n:
            raise ValueError("too few steps for this many stages")
        return _keep_plan(t, grids, idx, tr, name, replace(meta, switch_steps=tuple(idx)))
    # respace: find each switch on the current (respaced) grid
    stages, cur, first, used = [], t, float(t[0]), 0
    for i, g in enumerate(grids):
        if i < len(grids) - 1:
            below = (cur <= tstars[i]).nonzero()
            j = int(below[0]) if below.numel() else len(cur) - 1
            j = min(max(j, 1), len(cur) - 2)
        else:
            j = len(cur) - 1
        times_i = [first] + [float(v) for v in cur[1 : j + 1]]
        stages.append(Stage(g, tuple(times_i), tr if i else None))
        used += j
        if i < len(grids) - 1:
            first = tr.entry_time(float(cur[j]), g, grids[i + 1])
            remaining = n - used
            if remaining < 1:
                raise ValueError("too few steps for this many stages")
            cur = torch.tensor(respace(t, first, 0.0, remaining), dtype=torch.float64)
    return Plan(tuple(stages), None, name + " respace", meta)


def fraction_plan(times, grid, scales, fractions, *, transition: Transition | str = "dct",
                  multiple: int = 1, axes: int = 2) -> Plan:
    """Switch after fixed fractions of the steps (e.g. ``fractions=(0.36,)``), SPD's keep rule."""
    t = _as_times(times)
    grids = stage_grids(grid, scales, multiple=multiple, axes=axes)
    fr = [float(f) for f in fractions]
    if len(fr) != len(grids) - 1 or any(not 0 < f < 1 for f in fr) or fr != sorted(fr):
        raise ValueError(f"need {len(grids) - 1} increasing fractions in (0, 1), got {fractions}")
    n = len(t) - 1
    idx = []
    for f in fr:
        j = min(max(int(round(f * n)), (idx[-1] + 1) if idx else 1), n - 1)
        idx.append(j)
    name = f"fraction {'/'.join(f'{s:g}' for s in scales)} at {'/'.join(f'{f:g}' for f in fr)}"
    return _keep_plan(t, grids, idx, transition, name,
                      PlanMeta(family="fraction", scales=tuple(scales), fractions=tuple(fr)))


def pyramidal_plan(grid, scales=(0.25, 0.5, 1.0), steps=(20, 20, 20), *,
                   switch_times: Sequence[float] | None = None, profile=1.0,
                   transition: Transition | str = "pyramid", multiple: int = 1,
                   axes: int = 2) -> Plan:
    """Pyramidal-Flow-style plan: fixed steps per stage over fixed time windows.

    Pyramid Flow (arXiv 2410.05954) splits ``[1, 0]`` into equal windows
    (``stage_range = [0, 1/3, 2/3, 1]``) and walks each with its own steps;
    the jump between windows is the gamma = 1/3 renoise (``transition="pyramid"``,
    which needs 2x per stage; ``"dct"`` for other ratios). ``profile`` is the
    SD3 shift used inside every window (or a reference time grid).
    """
    grids = stage_grids(grid, scales, multiple=multiple, axes=axes)
    k = len(grids)
    steps = _per_transition(steps, k, "step count") if not isinstance(steps, int) else [steps] * k
    if switch_times is None:
        switch_times = [1.0 - (i + 1) / k for i in range(k - 1)]
    sw = [float(v) for v in switch_times]
    if len(sw) != k - 1:
        raise ValueError(f"need {k - 1} switch times, got {len(sw)}")
    spans = [(1.0, sw[0] if sw else 0.0)] + [(None, s) for s in sw[1:]] + ([(None, 0.0)] if sw else [])
    name = f"pyramidal {'/'.join(f'{s:g}' for s in scales)} steps {'/'.join(str(int(s)) for s in steps)}"
    return staged_plan(grids, spans, steps, profile, transition, name,
                       PlanMeta(family="pyramidal", scales=tuple(scales), switch_times=tuple(sw)))


def bottleneck_plan(times, grid, *, low_scale: float = 0.5, fractions=(0.1, 0.8),
                    steps=None, transition: Transition | str = "dct", multiple: int = 1,
                    axes: int = 2) -> Plan:
    """Bottleneck sampling (high -> low -> high; arXiv 2503.18940), spectral transitions.

    Full resolution until ``fractions[0]`` of the grid's steps (layout), then
    ``low_scale`` until ``fractions[1]``, then full resolution to the end. The
    downscale is an exact truncation (time decreases); the upscale re-adds the
    high band as noise. Each stage is respaced along the grid's profile with
    ``steps`` steps (default: the steps the fractions cover).
    """
    t = _as_times(times)
    n = len(t) - 1
    full = _as_grid(grid)
    low = stage_grids(full, (low_scale, 1.0), multiple=multiple, axes=axes)[0]
    a, b = (int(round(f * n)) for f in fractions)
    if not 0 < a < b < n:
        raise ValueError(f"fractions must satisfy 0 < f1 < f2 < 1 on {n} steps, got {fractions}")
    if steps is None:
        steps = (a, b - a, n - b)
    grids = [full, low, full]
    spans = [(1.0, float(t[a])), (None, float(t[b])), (None, 0.0)]
    name = f"bottleneck {low_scale:g} at {fractions[0]:g}-{fractions[1]:g}"
    return staged_plan(grids, spans, steps, t, transition, name,
                       PlanMeta(family="bottleneck", scales=(low_scale, 1.0),
                                fractions=tuple(fractions)))


def cascade_plan(times, grid, scales=(0.5, 1.0), *, renoise_at: Sequence[float] = (0.7,),
                 steps=None, up: str = "bicubic", multiple: int = 1, axes: int = 2,
                 models: Sequence[str | None] | None = None) -> Plan:
    """x0-renoise cascade (hires-fix, tuning-free self-cascade).

    Stage 0 generates a complete sample on the coarsest grid; stage ``k``
    upsamples the previous clean result (``up``: ``"bicubic"`` or ``"dct"``),
    re-noises it to ``renoise_at[k-1]`` with fresh noise and denoises to 0
    (self-cascade's SDXL default strength is 0.7). ``steps`` per stage default
    to the grid's steps scaled by each stage's time span. ``models`` names the
    model of each stage (e.g. a base and a tuned high-resolution model).
    """
    t = _as_times(times)
    grids = stage_grids(grid, scales, multiple=multiple, axes=axes)
    tr = X0Renoise(up)
    ren = [float(v) for v in renoise_at]
    if len(ren) != len(grids) - 1 or any(not 0 < v < 1 for v in ren):
        raise ValueError(f"need {len(grids) - 1} renoise times in (0, 1), got {renoise_at}")
    n = len(t) - 1
    if steps is None:
        steps = [n] + [max(1, int(round(n * v))) for v in ren]
    spans = [(1.0, 0.0)] + [(v, 0.0) for v in ren]
    name = f"cascade {'/'.join(f'{s:g}' for s in scales)} renoise {'/'.join(f'{v:g}' for v in ren)}"
    return staged_plan(grids, spans, steps, t, tr, name,
                       PlanMeta(family="cascade", scales=tuple(scales), renoise_at=tuple(ren)),
                       models=models)


def scalewise_plan(grid, scales, times, *, up: str = "bicubic", multiple: int = 1,
                   axes: int = 2, model: str | None = None) -> Plan:
    """Scale-wise distillation sampling (SwD, arXiv 2503.16397): one evaluation per scale.

    Step ``i`` predicts x0 on ``scales[i]`` at ``times[i]``, upsamples it and
    re-noises to ``times[i + 1]``; the last scale takes one step to 0. Meant for
    a SwD-trained student (e.g. scales 64/80/96/128 of 128 with
    times 1, 0.8956, 0.7363, 0.6007, 0). ``model`` is the key of the student that
    runs every stage.
    """
    tr = X0Renoise(up)
    grids = stage_grids(grid, scales, multiple=multiple, axes=axes)
    t = [float(v) for v in times]
    if len(t) != len(grids) + 1 or t[-1] != 0 or any(b >= a for a, b in zip(t, t[1:])):
        raise ValueError("need len(scales) + 1 strictly decreasing times ending at 0")
    stages = [Stage(g, (t[i],), tr if i else None, model) for i, g in enumerate(grids[:-1])]
    stages.append(Stage(grids[-1], (t[-2], 0.0), tr, model))
    return Plan(tuple(stages), None, f"scalewise {len(grids)} scales",
                PlanMeta(family="scalewise", scales=tuple(scales)))


def matched_full_plan(times_fn: Callable[[int], torch.Tensor], grid, cost: float) -> Plan:
    """Full resolution with as many steps as ``cost`` buys (at least 1): the
    'fewer full-resolution steps at matched cost' baseline. ``times_fn(n)``
    builds the model's own ``n``-step grid."""
    n = max(1, int(round(cost)))
    return full_plan(times_fn(n), grid).with_name(f"full {n} steps")
