"""Spectrum fits of tensors and images (specdiff.analysis.spectrum)."""

import json

import numpy as np
import pytest
import torch

from specdiff.analysis.spectrum import (
    collect_files,
    fit_arrays,
    fit_record,
    implied_switches,
    load_arrays,
    switch_table,
)
from specdiff.cli import main
from specdiff.testbeds import GaussianField


def test_tensors_are_read_as_stored_and_the_fit_recovers_the_field(tmp_path):
    field = GaussianField(40.0, 2.0, (64, 64))
    x = field.sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    np.save(tmp_path / "field.npy", x.numpy())
    torch.save(x[0, 0].clone(), tmp_path / "one.pt")  # (H, W) -> (1, 1, H, W)
    arrays = load_arrays([tmp_path / "field.npy", tmp_path / "one.pt"])
    assert torch.equal(arrays[0], x) and torch.equal(arrays[1], x[:1, :1])
    fit = fit_arrays(arrays[:1])
    assert fit.A == pytest.approx(40.0, rel=0.15) and fit.beta == pytest.approx(2.0, abs=0.1)
    assert fit.grid == (64, 64) and fit.frames == 16 and fit.samples == 16
    assert fit_arrays(arrays).samples == 17 and fit_arrays(arrays).video_frames == 0
    with pytest.raises(ValueError, match="different spatial sizes"):
        fit_arrays([x, x[..., :32, :32]])


def test_switches_rows_errors_and_record():
    field = GaussianField(40.0, 2.0, (64, 64))
    fit = fit_arrays([field.sample(8, torch.Generator().manual_seed(1), dtype=torch.float64)])
    rows = implied_switches(fit, 50, 3.0, (0.5, 1.0), (0.05, 1.5))
    assert rows[1] == {"delta": 1.5, "error": rows[1]["error"]} and "delta" in rows[1]["error"]
    st = rows[0]["stages"][0]
    table = switch_table(rows).splitlines()
    assert table[2] == (f"| 0.05 | 32x32 | {st['t_star']:.4f} | {st['t_new']:.4f} | "
                        f"{rows[0]['switch_steps'][0]} | {rows[0]['cost_ratio_tokens']:.3f} |")
    assert table[3].startswith("| 1.5 | ")
    rec = fit_record(fit, rows)
    assert rec["spd"] == [{"delta": 0.05, "t_star": [st["t_star"]],
                           "switch_steps": rows[0]["switch_steps"]}]
    assert rec["A"] == fit.A and len(rec["freqs"]) == len(rec["power"])


def test_collect_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        collect_files([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no images"):
        collect_files([tmp_path])
    (tmp_path / "b.npy").write_bytes(b"")
    (tmp_path / "a.PNG").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"")
    assert [f.rsplit("/", 1)[-1] for f in collect_files([tmp_path])] == ["a.PNG", "b.npy"]


def test_analyze_counts_images_not_channel_planes(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["analyze", str(folder), "--out", str(tmp_path / "a")]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head == f"# Spectrum of {folder}: 5 images of 16x16"
    rec = json.loads((tmp_path / "a" / "spectrum.json").read_text())
    # the RAPSD still averages every channel plane: 5 images x 3 channels
    assert (rec["samples"], rec["frames"], rec["video_frames"]) == (5, 15, 0)

    # tensors count their leading axis N, not N x C; (N, C, T, H, W) ones also count N x T frames
    x = rng.standard_normal((4, 3, 16, 16))
    np.save(tmp_path / "x.npy", x)
    assert main(["analyze", str(tmp_path / "x.npy"), "--out", str(tmp_path / "b")]) == 0
    assert ": 4 tensor samples of 16x16" in capsys.readouterr().out.splitlines()[0]
    np.save(tmp_path / "v.npy", rng.standard_normal((2, 4, 3, 16, 16)))  # 2 videos of 3 frames
    assert main(["analyze", str(tmp_path / "v.npy"), str(folder / "0.png"),
                 "--out", str(tmp_path / "c")]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.endswith(": 1 image, 2 tensor samples, 6 video frames of 16x16")
    rec = json.loads((tmp_path / "c" / "spectrum.json").read_text())
    assert (rec["samples"], rec["frames"], rec["video_frames"]) == (3, 2 * 4 * 3 + 3, 6)
