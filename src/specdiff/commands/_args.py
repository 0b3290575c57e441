"""argparse value types shared by every command (sizes, number lists, JSON objects)."""

from __future__ import annotations

import argparse
import json

from ..limits import MAX_STEPS


def floats(text: str) -> tuple[float, ...]:
    """``"0.5,1"`` -> ``(0.5, 1.0)``; at least one number."""
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number, e.g. 0.5,1")
    return vals


def ints(text: str) -> tuple[int, ...]:
    """``"32,64"`` -> ``(32, 64)``; at least one integer."""
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer, e.g. 32,64")
    return vals


def size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)`` (height x width); ``"128"`` -> ``(128, 128)``."""
    parts = text.lower().replace("x", " ").replace("*", " ").replace(",", " ").split()
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 1024x1024) or N, got {text!r}")
    return vals[0], vals[1]


def json_object(text: str) -> dict:
    """A JSON object given on the command line, e.g. ``'{"base": 16}'``."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError('expected a JSON object, e.g. \'{"base": 16}\'')
    return d


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (thread counts, sides, image counts)."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {v}")
    return v


def steps(text: str) -> int:
    """A sampling step count in ``[1, MAX_STEPS]``."""
    v = _int(text)
    if not 1 <= v <= MAX_STEPS:
        raise argparse.ArgumentTypeError(
            f"steps must be between 1 and {MAX_STEPS} (samplers use 1-1000), got {v}")
    return v
