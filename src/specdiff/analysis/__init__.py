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

from .bench import BenchConfig, build_plans, demo_config, run_bench
from .generate import SampleConfig, generate
from .methods import ALL_METHODS, METHODS, Method, Setting, has_closed_form
from .optimize import optimal_plan
from .schedule import schedule_row, schedule_rows
from .spectrum import fit_arrays, load_arrays
from .testbed import compare_on_testbed, long_step_study, run_testbed

__all__ = ["optimal_plan", "METHODS", "ALL_METHODS", "Method", "Setting", "has_closed_form",
           "compare_on_testbed", "long_step_study", "run_testbed", "BenchConfig", "run_bench",
           "build_plans", "demo_config", "SampleConfig", "generate", "schedule_row",
           "schedule_rows", "load_arrays", "fit_arrays"]
