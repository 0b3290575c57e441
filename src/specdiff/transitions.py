"""Transitions: how the state enters a stage's grid (DESIGN.md sections 3-4).

A transition is a small frozen object that a :class:`specdiff.plans.Stage`
carries: the way the sampler moves from the previous stage's grid to its own.
Every kind goes through the one resize primitive of :mod:`specdiff.spectral`:

- :class:`Spectral` (``basis`` dct / fft / haar) carries the flow state: an
  exact resize that fills new bins with noise and shifts the time,
  ``t_new = rho t / (1 + (rho - 1) t)`` (SPD Eq. 5-6).
- :class:`Pyramid` is Pyramid Flow's 2x jump (nearest upsample + block noise,
  gamma = 1/3): ``resize(basis="pyramid")``, the same law as ``haar`` and,
  given the same noise, the same numbers.
- :class:`X0Renoise` (``up`` bicubic / dct / ...) replaces the state by the
  upsampled clean estimate plus fresh noise at the next stage's first time
  (SwD sampling, self-cascade, hires-fix): the resize at ``t = 0`` (or an
  interpolation) plus fresh noise. It does not carry the state, so the next
  stage may start at any ``t > 0``.

One plan may mix them (a spectral carry at one switch, an x0 re-noise at the
next). The legacy strings (``"dct"``, ``"pyramid"``, ``"x0_bicubic"``, ...)
are read in one place, :func:`as_transition`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .spectral import SPECTRAL_BASES, UPSAMPLE_MODES, Generator, resize, resolution_shift, x0_renoise

__all__ = ["Transition", "Spectral", "Pyramid", "X0Renoise", "as_transition", "LEGACY_KINDS"]


class Transition:
    """What every transition answers. Subclasses are frozen dataclasses."""

    #: the state (and its time) is carried through: the next stage starts at
    #: :meth:`entry_time`; otherwise the next stage restarts from a clean estimate
    carries_state: ClassVar[bool] = True

    @property
    def kind(self) -> str:
        """Short label (the legacy string of this transition, e.g. ``"dct"``, ``"x0_bicubic"``)."""
        raise NotImplementedError

    @property
    def coupling_basis(self) -> str | None:
        """Basis in which seed-coupled noise is split between grids (None: fresh noise only)."""
        return None

    def check(self, old: Sequence[int], new: Sequence[int]) -> None:
        """Raise ``ValueError`` if this transition cannot map grid ``old`` to ``new``."""

    def entry_time(self, t_end: float, old: Sequence[int], new: Sequence[int]) -> float:
        """Time at which the next stage starts when leaving ``old`` at ``t_end``."""
        raise ValueError(f"{self.kind} has no derived entry time: the next stage chooses it")

    def __str__(self) -> str:
        return self.kind


def _rho(old, new) -> float:
    return math.sqrt(math.prod(new) / math.prod(old))


@dataclass(frozen=True)
class Spectral(Transition):
    """Exact flow-state resize in an orthonormal basis (SPD's transition).

    ``basis``: ``"dct"`` (any ratio; the paper's), ``"fft"`` (any ratio) or
    ``"haar"`` (exactly 2x per changed axis).
    """

    basis: str = "dct"

    def __post_init__(self):
        if self.basis not in SPECTRAL_BASES:
            raise ValueError(f"Spectral basis must be one of {SPECTRAL_BASES}, got {self.basis!r}")

    @property
    def kind(self) -> str:
        return self.basis

    @property
    def coupling_basis(self) -> str:
        return self.basis

    def check(self, old, new) -> None:
        if self.basis == "haar" and not all(b in (a, 2 * a) or 2 * b == a for a, b in zip(old, new)):
            raise ValueError(
                f"Spectral('haar') needs exactly 2x between stages, got {tuple(old)} -> {tuple(new)}; "
                "use scales like (0.25, 0.5, 1) or Spectral('dct')")

    def entry_time(self, t_end, old, new) -> float:
        return float(resolution_shift(t_end, _rho(old, new)))

    def apply(self, x: torch.Tensor, t, shape, *, noise=None, generator: Generator = None):
        """``(x_new, t_new)``: :func:`specdiff.spectral.resize` in this basis."""
        return resize(x, t, shape, noise=noise, generator=generator, basis=self.basis)


@dataclass(frozen=True)
class Pyramid(Transition):
    """Pyramid Flow's jump (arXiv 2410.05954): nearest 2x upsample plus block noise.

    The block-noise correlation gamma = 1/3 is the one value whose result is
    white, and then the jump equals the Haar expansion given the same noise
    (methods.md section 6.1); it needs exactly 2x on the last two axes.
    """

    @property
    def kind(self) -> str:
        return "pyramid"

    @property
    def coupling_basis(self) -> str:
        return "haar"  # pyramid renoise == haar expansion given the same noise

    def check(self, old, new) -> None:
        old, new = tuple(old), tuple(new)
        if len(old) < 2 or new != (*old[:-2], 2 * old[-2], 2 * old[-1]):
            raise ValueError(
                f"Pyramid() needs exactly 2x on the last two axes between stages, got {old} -> {new}; "
                "use scales like (0.25, 0.5, 1) or Spectral('dct')")

    def entry_time(self, t_end, old, new) -> float:
        return float(resolution_shift(t_end, _rho(old, new)))

    def apply(self, x: torch.Tensor, t, shape, *, noise=None, generator: Generator = None):
        return resize(x, t, shape, noise=noise, generator=generator, basis="pyramid")


@dataclass(frozen=True)
class X0Renoise(Transition):
    """``(1 - t') Up(x0_hat) + t' eps``: upsample the clean estimate, add fresh noise.

    ``up``: ``"bicubic"`` (SwD, self-cascade), ``"dct"`` (band-limited; diagonal in
    the DCT basis, so the Gaussian testbed prices it exactly), ``"bilinear"``,
    ``"nearest"``, ``"fft"``, ``"haar"``. The estimate is taken with the
    previous stage's model at its last time (free when that time is 0).
    """

    carries_state: ClassVar[bool] = False
    up: str = "bicubic"

    def __post_init__(self):
        if self.up not in UPSAMPLE_MODES:
            raise ValueError(f"X0Renoise up must be one of {UPSAMPLE_MODES}, got {self.up!r}")

    @property
    def kind(self) -> str:
        return f"x0_{self.up}"

    def apply(self, x0_hat: torch.Tensor, t_new: float, shape, *, noise=None,
              generator: Generator = None) -> torch.Tensor:
        """The next stage's first state at ``t_new``."""
        return x0_renoise(x0_hat, t_new, shape, noise=noise, generator=generator, mode=self.up)


_BY_KIND: dict[str, Transition] = {
    **{b: Spectral(b) for b in SPECTRAL_BASES},
    "pyramid": Pyramid(),
    **{f"x0_{m}": X0Renoise(m) for m in UPSAMPLE_MODES},
}

#: the strings the ``transition=`` arguments have always accepted
LEGACY_KINDS = (*SPECTRAL_BASES, "pyramid", "x0_bicubic", "x0_dct")


def as_transition(value: Transition | str) -> Transition:
    """A :class:`Transition` from itself or a legacy string (``"dct"``, ``"pyramid"``, ``"x0_dct"``, ...)."""
    if isinstance(value, Transition):
        return value
    if isinstance(value, str) and value in _BY_KIND:
        return _BY_KIND[value]
    raise ValueError(
        f"transition must be a Spectral(...), Pyramid() or X0Renoise(...) object or one of "
        f"{LEGACY_KINDS}, got {value!r}")
