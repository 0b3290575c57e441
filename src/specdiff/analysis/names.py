"""The method keys and the SPD tolerance sweep, free of torch (for the CLI's parsers).

:mod:`.methods` defines the methods themselves; a test checks that its keys are these.
"""

#: the SPD tolerance sweep (paper Eq. 9); 0.01 is the paper's FLUX setting
SPD_DELTAS = (0.01, 0.05, 0.1, 0.2)
#: every method key of :data:`specdiff.analysis.methods.METHODS`, in table order
METHOD_KEYS = ("baseline", "matched", "spd", "spd3", "optimal", "pyramidal", "bottleneck",
               "cascade")
