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
    # generate: everything the arguments and the folder's JSON decide, before loading
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--scales", "0.5", "--out", "{out}"],
     "scales must end at 1.0"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--scales", "1,0.5", "--out", "{out}"],
     "scales must end at 1.0"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--delta", "1.5", "--out", "{out}"],
     "must lie in (0, 1)"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--delta", "0.01,0.02", "--out",
      "{out}"], "need one delta per transition (1), got 2"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--spectrum", "foo", "--out", "{out}"],
     "unknown spectrum 'foo'"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--spectrum", "1,-2", "--out",
      "{out}"], "beta must lie in (0, 10)"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--solver", "rk4", "--out", "{out}"],
     "solver (--solver) must be one of auto, unipc"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--size", "128x128", "--scales",
      "0.1,1", "--out", "{out}"], "needs stage sides that are multiples of 2"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--frames", "9", "--out", "{out}"],
     "is for video pipelines"),
    # SD3 with a patch-4 transformer (read from transformer/config.json): 288 px is a 36^2
    # latent grid, whose half (18) is no multiple of 4 (it is of SD3's usual 2)
    (["generate", "--pipeline", "{sd3}", "--prompt", "x", "--spectrum", "flux", "--size",
      "288x288", "--out", "{out}"], "needs stage sides that are multiples of 4 (nearest: 16)"),
    (["generate", "--pipeline", "{sd15}", "--prompt", "x", "--out", "{out}"],
     "SpectralPipeline does not support StableDiffusionPipeline"),
    (["generate", "--pipeline", "{alien}", "--prompt", "x", "--out", "{out}"],
     "names pipeline class 'NoSuchPipeline'"),
    # train --init
    (["train", "--init", "dit", "--model", "unet", "--steps", "2", "--out", "{out}"],
     "is a dit model, not unet: pass --model dit or leave --model out"),
    (["train", "--objective", "spd", "--init", "dit", "--model", "unet", "--steps", "2", "--out",
      "{out}"], "is a dit model, not unet"),
    (["train", "--init", "dit", "--model-config", '{{"dim": 64}}', "--steps", "2", "--out",
      "{out}"], "does not apply with init"),
    # train --objective slim (docs/slim.md)
    (["train", "--objective", "slim", "--lambda-spatial", "-0.1", "--steps", "2", "--out",
      "{out}"], "must be >= 0"),
    (["train", "--objective", "slim", "--freq-alpha", "nan", "--steps", "2", "--out", "{out}"],
     "finite number"),
    (["train", "--teacher", "unet", "--steps", "2", "--out", "{out}"], "need objective slim"),
    (["train", "--objective", "slim", "--teacher", "dit", "--steps", "2", "--out", "{out}"],
     "needs UNet features"),
    (["train", "--objective", "slim", "--model", "dit", "--steps", "2", "--out", "{out}"],
     "must be a 'wgunet' or a 'unet'"),
    (["bench", "--compare", "unet,unet", "--out", "{out}"], "lists a model twice"),
    # found by a sweep of bad values over every command (accepted before)
    (["sample", "--scales", "0.001,1", "--out", "{out}"], "below the smallest stage side 8"),
    (["bench", "--fd-model", "{dir}/nope.pt", "--out", "{out}"], "feature model"),
    (["train", "--pixels", "0", "--out", "{out}"], "must hold at least one crop"),
    (["train", "--sizes", "16,16", "--out", "{out}"], "must be distinct"),
    (["train", "--stop-after", "0", "--steps", "2", "--out", "{out}"], "positive integer"),
    (["analyze", "{npy}", "--scales", "0.5", "--out", "{out}"], "scales must end at 1.0"),
    (["generate", "--pipeline", "{pipe}", "--prompt", "x", "--guidance", "nan", "--out", "{out}"],
     "guidance (--guidance) must be a finite number"),
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
def test_bad_input_fails_first_in_one_line(argv, msg, spots, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    def never(*a, **k):
        raise AssertionError("the pipeline was loaded before the arguments were checked")

    monkeypatch.setattr("specdiff.integrations.generate.load_pipeline", never)

    np.save(spots / "f.npy", np.zeros((2, 1, 16, 16)))
    pipe = spots / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    for name, cls in (("sdxl", "StableDiffusionXLPipeline"), ("sd15", "StableDiffusionPipeline"),
                      ("alien", "NoSuchPipeline")):
        (spots / name).mkdir()
        (spots / name / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    sd3 = spots / "sd3"
    for sub, obj in (("", {"_class_name": "StableDiffusion3Pipeline"}),
                     ("transformer", {"patch_size": 4, "sample_size": 128}),
                     ("vae", {"block_out_channels": [8, 8, 8, 8]})):
        (sd3 / sub).mkdir(parents=True, exist_ok=True)
        (sd3 / sub / ("config.json" if sub else "model_index.json")).write_text(json.dumps(obj))
    data = spots / "data"
    data.mkdir()
    for i in range(5):  # the 5th (sorted) file is the held-out one: make it unreadable
        Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(data / f"{i}.png")
    (data / "4.png").write_bytes(b"not a png")
    (spots / "dir").mkdir()
    names = {"afile": spots / "afile", "out": spots / "out", "dir": spots / "dir",
             "npy": spots / "f.npy", "pipe": pipe, "data": data, "bad": "4.png",
             "sdxl": spots / "sdxl", "sd15": spots / "sd15", "alien": spots / "alien",
             "sd3": sd3}
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
