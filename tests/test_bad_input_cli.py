"""Bad CLI input fails before any work: exit status 2, one stderr line naming the fix, and
nothing written (issue 16, "fail fast, fail clearly"). No model is loaded or sampled."""

import json

import pytest

from specdiff.cli import main


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's errors exit
        return int(e.code)


@pytest.fixture
def spots(tmp_path):
    """``afile``: a plain file; ``out``: an --out folder that must not appear."""
    (tmp_path / "afile").write_text("x")
    return tmp_path


CASES = [
    # output locations
    (["sample", "--out", "{afile}"], "is a file, not a folder"),
    (["sample", "--out", "{afile}/sub"], "is a file, not a folder"),
    (["bench", "--out", "{afile}"], "is a file, not a folder"),
    (["bench", "--out", "{afile}/sub"], "is a file, not a folder"),
    (["train", "--steps", "2", "--out", "{afile}"], "is a file, not a folder"),
    (["train", "--steps", "2", "--out", "{afile}/sub"], "is a file, not a folder"),
    (["analyze", "{npy}", "--out", "{afile}"], "is a file, not a folder"),
    (["testbed", "--grid", "16", "--steps", "8", "--out", "{afile}/x"], "is a file, not a folder"),
    (["schedule", "--model", "flux", "--plot", "{dir}"], "is a folder; give a file path"),
    (["schedule", "--model", "flux", "--plot", "{afile}/snr.png"], "is a file, not a folder"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--out", "{afile}"],
     "is a file, not a folder"),
    # generate before loading
    (["generate", "--pipeline", "{dir}", "--prompt", "x", "--out", "{out}"], "model_index.json"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--steps", "0", "--out", "{out}"],
     "between 1 and 10000"),
    # thread counts
    (["sample", "--threads", "-1", "--out", "{out}"], "positive integer"),
    (["sample", "--threads", "0", "--out", "{out}"], "positive integer"),
    (["bench", "--threads", "0", "--out", "{out}"], "positive integer"),
    (["demo", "--threads", "-1", "--out", "{out}"], "positive integer"),
    (["train", "--threads", "0", "--out", "{out}"], "positive integer"),
    # step counts
    (["schedule", "--model", "flux", "--steps", "100000000"], "between 1 and 10000"),
    (["schedule", "--model", "flux", "--steps", "0"], "between 1 and 10000"),
    (["testbed", "--steps", "0", "--out", "{out}"], "between 1 and 10000"),
    (["analyze", "{npy}", "--steps", "20000", "--out", "{out}"], "between 1 and 10000"),
    (["sample", "--steps", "0", "--out", "{out}"], "between 1 and 10000"),
    (["bench", "--steps", "100000", "--out", "{out}"], "between 1 and 10000"),
    (["demo", "--steps", "0", "--out", "{out}"], "between 1 and 10000"),
    # values accepted silently before
    (["analyze", "{npy}", "--size", "0", "--out", "{out}"], "positive integer"),
    (["analyze", "{npy}", "--delta", "1.5", "--out", "{out}"], "must lie in (0, 1)"),
    (["testbed", "--grid", "16", "--steps", "8", "--deltas", "-1", "--out", "{out}"],
     "must lie in (0, 1)"),
    (["bench", "--deltas", "0", "--out", "{out}"], "must lie in (0, 1)"),
    (["bench", "--n-real", "0", "--out", "{out}"], "n_real (--n-real) must be at least 2"),
    (["bench", "--n", "1", "--time-batch", "1", "--out", "{out}"], "need n >= 2"),
    (["sample", "--delta", "0", "--out", "{out}"], "must lie in (0, 1)"),
    (["train", "--steps", "2", "--data", "{data}", "--out", "{out}"], "{bad}"),
]


@pytest.mark.parametrize("argv,msg", CASES, ids=[" ".join(a[:3]) + f" #{i}"
                                                 for i, (a, _) in enumerate(CASES)])
def test_bad_input_fails_first_in_one_line(argv, msg, spots, capsys):
    import numpy as np
    from PIL import Image

    np.save(spots / "f.npy", np.zeros((2, 1, 16, 16)))
    pipe = spots / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    data = spots / "data"
    data.mkdir()
    for i in range(5):  # the 5th (sorted) file is the held-out one: make it unreadable
        Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(data / f"{i}.png")
    (data / "4.png").write_bytes(b"not a png")
    (spots / "dir").mkdir()
    names = {"afile": spots / "afile", "out": spots / "out", "dir": spots / "dir",
             "npy": spots / "f.npy", "pipe": pipe, "data": data, "bad": "4.png"}
    argv = [a.format(**names) for a in argv]
    before = sorted(p.name for p in spots.rglob("*"))
    code = _code(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert msg.format(**names) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"specdiff {argv[0]}: error: "), err
    assert not (spots / "out").exists()
    assert sorted(p.name for p in spots.rglob("*")) == before
