"""Measuring tools, kept apart from the core (DESIGN.md section 10).

- :mod:`~specdiff.analysis.methods`: the methods compared side by side, each
  defined once (constructor, constants, closed-form transition).
- :mod:`~specdiff.analysis.optimize`: :func:`optimal_plan`, the cheapest plan
  at a target quality on the exact Gaussian testbed.
- :mod:`~specdiff.analysis.testbed`: the exact comparison behind ``specdiff testbed``.
- :mod:`~specdiff.analysis.bench`: the side-by-side benchmark on a model
  (``specdiff bench`` / ``demo``).
- :mod:`~specdiff.analysis.metrics`: SWD, RAPSD distance, PSNR/SSIM, Frechet distance.
- :mod:`~specdiff.analysis.schedule`: SPD schedule tables (``specdiff schedule``).
- :mod:`~specdiff.analysis.spectrum`: spectrum fits of images, tensors and
  latents (``specdiff analyze``).
- :mod:`~specdiff.analysis.generate`: images of one plan (``specdiff sample``).

Imports flow one way: the core and the models never import this package.
"""

from __future__ import annotations

import importlib

# imported on first use (PEP 562): the CLI reads .names without importing torch
_EXPORTS = {
    "BenchConfig": "bench", "build_plans": "bench", "demo_config": "bench", "run_bench": "bench",
    "SampleConfig": "generate", "generate": "generate", "ALL_METHODS": "methods",
    "METHODS": "methods", "Method": "methods", "Setting": "methods",
    "has_closed_form": "methods", "optimal_plan": "optimize", "schedule_row": "schedule",
    "schedule_rows": "schedule", "fit_arrays": "spectrum", "load_arrays": "spectrum",
    "compare_on_testbed": "testbed", "long_step_study": "testbed", "run_testbed": "testbed",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
