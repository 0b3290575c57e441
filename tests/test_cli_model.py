"""`specdiff train | sample | bench | demo` end to end on a tiny model."""

import json

import pytest

from specdiff.cli import main

TINY = '{"base": 8, "mults": [1, 2], "time_dim": 16}'


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--model", "unet", "--model-config", TINY, "--steps", "3",
               "--sizes", "16", "--pixels", "1024", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_train_writes_model_and_curve(trained, capsys):
    assert (trained / "model.safetensors").is_file() and (trained / "loss.png").is_file()
    side = json.loads((trained / "model.json").read_text())
    assert side["meta"]["train"]["steps"] == 3 and "spectrum" in side["meta"]
    # running again resumes a finished run: nothing to do, still exit 0
    assert main(["train", "--model", "unet", "--model-config", TINY, "--steps", "3", "--sizes",
                 "16", "--pixels", "1024", "--out", str(trained), "--quiet"]) == 0
    assert "step 3/3" in capsys.readouterr().out


def test_sample_seed_coupled_modes(trained, tmp_path):
    from PIL import Image

    common = ["--model", str(trained), "--size", "16x16", "--n", "2", "--steps", "4",
              "--seed", "3", "--quiet"]
    assert main(["sample", *common, "--scales", "1", "--out", str(tmp_path / "base")]) == 0
    assert main(["sample", *common, "--scales", "0.5,1", "--delta", "0.2",
                 "--out", str(tmp_path / "spd")]) == 0
    for d in ("base", "spd"):
        files = sorted(p.name for p in (tmp_path / d).glob("*.png"))
        assert files == ["000_seed3.png", "001_seed4.png", "grid.png"]
    info = json.loads((tmp_path / "spd" / "sample.json").read_text())
    assert info["plan"].count("steps at") == 2 and info["continuation"] == "keep"
    assert main(["sample", *common, "--scales", "0.5,1", "--delta", "0.2", "--continuation",
                 "respace", "--out", str(tmp_path / "respace")]) == 0
    assert json.loads((tmp_path / "respace" / "sample.json").read_text())["continuation"] == "respace"
    # same seed again: identical image
    assert main(["sample", *common, "--scales", "1", "--out", str(tmp_path / "again")]) == 0
    import numpy as np

    a = np.asarray(Image.open(tmp_path / "base" / "000_seed3.png"))
    b = np.asarray(Image.open(tmp_path / "again" / "000_seed3.png"))
    assert a.shape == (16, 16, 3) and (a == b).all()


def test_bench_and_demo_run(trained, tmp_path, capsys):
    assert main(["bench", "--model", str(trained), "--size", "16x16", "--steps", "4", "--n", "2",
                 "--time-batch", "1", "--deltas", "0.1", "--methods", "baseline,spd",
                 "--n-real", "8", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| full 4 steps (baseline) |" in out and (tmp_path / "b" / "pareto.png").is_file()
    assert main(["demo", "--model", str(trained), "--size", "32x32", "--n-real", "8", "--steps",
                 "3", "--n", "2", "--time-batch", "1", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "SPD:" in out and (tmp_path / "d" / "grid.png").is_file()
    assert (tmp_path / "d" / "spectrum.png").is_file()


def test_user_errors_are_one_line_exit_2(trained, tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "no model named" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((trained / "model.safetensors").read_bytes()[:200])
    assert main(["sample", "--model", str(bad), "--size", "16x16", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "--model", str(trained), "--methods", "baseline,warp",
                 "--out", str(tmp_path)]) == 2
    assert "unknown methods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--size", "abc", "--out", str(tmp_path)])


def test_train_spd_finetune_from_a_model(trained, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["train", "--objective", "spd", "--init", str(trained), "--steps", "2",
                 "--sizes", "16", "--pixels", "512", "--spd-mix", "1,0,0", "--out", str(out),
                 "--quiet"]) == 0
    side = json.loads((out / "model.json").read_text())
    assert side["meta"]["train"]["objective"] == "spd"
    assert side["meta"]["train"]["init"] == str(trained)
    assert side["config"] == json.loads((trained / "model.json").read_text())["config"]
    assert main(["train", "--spd-mix", "1,0,0", "--out", str(tmp_path / "x")]) == 2
    assert "--objective spd" in capsys.readouterr().err
    assert main(["train", "--objective", "spd", "--init", str(tmp_path / "none"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "no model named" in capsys.readouterr().err
