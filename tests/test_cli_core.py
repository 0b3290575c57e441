"""Core commands end to end: schedule, testbed, analyze."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from specdiff.cli import main


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_schedule_flux_reproduces_official_switch_steps(capsys):
    code, out, _ = run(["schedule", "--model", "flux", "--size", "1024x1024", "--steps", "50",
                        "--json", "--delta", "0.01,0.05"], capsys)
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [r["switch_steps"] for r in rows] == [[18], [28]]
    for r in rows:
        assert [s["grid"] for s in r["stages"]] == [[64, 64], [128, 128]]
    assert rows[0]["stages"][0]["t_star"] == pytest.approx(0.853, abs=1e-3)
    code, out, _ = run(["schedule", "--model", "flux", "--size", "1024x1024", "--steps", "50"], capsys)
    assert code == 0 and "| 0.01 | 0 | 64x64 | 18 |" in out and "| 0.05 | 0 | 64x64 | 28 |" in out


def test_schedule_wan_video_and_custom_spectrum(capsys, tmp_path):
    code, out, _ = run(["schedule", "--model", "wan", "--size", "480x832", "--frames", "81",
                        "--json", "--plot", str(tmp_path / "snr.png")], capsys)
    assert code == 0
    stages = json.loads(out.split("\nwrote")[0])["rows"][0]["stages"]
    assert stages[0]["grid"] == [21, 30, 52] and stages[1]["grid"] == [21, 60, 104]
    assert (tmp_path / "snr.png").stat().st_size > 1000
    code, out, _ = run(["schedule", "--A", "100", "--beta", "2", "--size", "64", "--steps", "20"],
                       capsys)
    assert code == 0 and "32x32" in out


@pytest.mark.parametrize("argv,msg", [
    (["schedule", "--model", "flux", "--delta", "1.5"], "delta"),
    (["schedule", "--model", "flux", "--scales", "0.5,0.8"], "scales must end at 1.0"),
    (["schedule", "--model", "flux", "--size", "1000x1000"], "multiples of 16"),
    (["schedule", "--model", "wan", "--frames", "80"], "4k+1"),
    (["schedule", "--A", "3"], "both --A and --beta"),
    (["schedule"], "choose --model"),
    (["analyze", "/nonexistent/folder"], "no such file"),
    (["testbed", "--schedule", "karras"], "schedule must be 'flux' or 'shift:S'"),
])
def test_bad_input_exits_with_one_line(argv, msg, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1


def test_testbed_command_writes_table_json_and_plot(capsys, tmp_path):
    code, out, _ = run(["testbed", "--grid", "16", "--steps", "8", "--solvers", "euler",
                        "--deltas", "0.05", "--no-optimal", "--out", str(tmp_path)], capsys)
    assert code == 0
    assert "full 8 steps (baseline)" in out and "spd 0.5/1 delta=0.05" in out
    data = json.loads((tmp_path / "testbed.json").read_text())
    assert data["rows"][0]["family"] == "baseline"
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_analyze_recovers_a_fitted_spectrum(capsys, tmp_path):
    import torch
    from skimage import io

    from specdiff.testbeds import GaussianField

    field = GaussianField(40.0, 2.0, (64, 64))
    x = field.sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    np.save(tmp_path / "field.npy", x.numpy())
    code, out, _ = run(["analyze", str(tmp_path / "field.npy"), "--out", str(tmp_path / "a")], capsys)
    assert code == 0
    spec = json.loads((tmp_path / "a" / "spectrum.json").read_text())
    assert spec["A"] == pytest.approx(40.0, rel=0.15) and spec["beta"] == pytest.approx(2.0, abs=0.1)
    assert (tmp_path / "a" / "rapsd.png").exists()
    # a folder of images (read as [-1, 1], centre-cropped)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        im = ((np.clip(x[i, 0].numpy() / 8, -1, 1) + 1) * 127.5).astype(np.uint8)
        io.imsave(imgs / f"{i}.png", np.pad(im, ((0, 0), (0, 10))), check_contrast=False)
    code, out, _ = run(["analyze", str(imgs), "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "A = " in out and "beta = " in out


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "specdiff", "schedule", "--model", "flux", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["rows"]
