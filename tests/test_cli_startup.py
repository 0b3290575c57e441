"""The command line answers ``--help`` and argument errors without importing torch (issue 16:
every command took 6.5 s even for ``--help``), and the torch-free name lists it parses with
are the ones the library defines."""

import subprocess
import sys

import pytest

PROBE = """
import sys
from specdiff.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("torch" in sys.modules, code)
"""


@pytest.mark.parametrize("argv,code", [
    (["--help"], 0),
    (["train", "--help"], 0),
    (["generate", "--help"], 0),
    (["bench", "--methods"], 2),  # argparse: expected one argument
    (["train", "--objective", "nope", "--out", "x"], 2),  # not a choice
    (["schedule", "--steps", "0"], 2),  # a type check of the parser
    ([], 1),  # no command: the usage
])
def test_help_and_argument_errors_do_not_import_torch(argv, code):
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip().splitlines()[-1] == f"False {code}", out.stderr


def test_torch_free_name_lists_match_the_library():
    from specdiff.analysis.methods import ALL_METHODS, SPD_DELTAS
    from specdiff.analysis.names import METHOD_KEYS
    from specdiff.analysis.names import SPD_DELTAS as NAMES_DELTAS
    from specdiff.commands.model import objective_files
    from specdiff.limits import MAX_STEPS
    from specdiff.plans import MAX_STEPS as PLANS_MAX
    from specdiff.training.objectives import objective_names

    assert METHOD_KEYS == ALL_METHODS and NAMES_DELTAS == SPD_DELTAS
    assert objective_files() == objective_names() == ["flow", "slim", "spd"]
    assert MAX_STEPS == PLANS_MAX == 10_000


def test_the_package_names_load_on_first_use():
    import specdiff
    from specdiff import plans, sampling, transitions

    assert specdiff.sample is sampling.sample and specdiff.Plan is plans.Plan
    assert specdiff.Spectral is transitions.Spectral
    assert set(specdiff.__all__) <= set(dir(specdiff))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        specdiff.nope  # noqa: B018
