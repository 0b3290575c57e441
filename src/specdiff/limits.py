"""Plain constants the command line needs before anything heavy is imported.

Kept free of torch so ``specdiff --help`` and argument errors answer at once; the
modules that own each constant re-export it (``plans.MAX_STEPS``).
"""

#: the most steps a time grid may have: no sampler uses more, and a typo such as
#: ``--steps 100000000`` would otherwise build a grid that fills the memory
MAX_STEPS = 10_000
