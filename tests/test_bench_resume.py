"""A stopped bench loses nothing: finished (repeat, batch) units are saved as they end and
a rerun reuses them, giving the samples and quality numbers of an uninterrupted run."""

import json

import pytest
import torch

from specdiff.analysis import bench
from specdiff.analysis.bench import BenchConfig, build_plans, load_bench_model, run_bench
from specdiff.cli import main

# tiny_model (conftest.py) records its data spectrum at this side
TINY_SPECTRUM_SIDE = 16
# 2 repeats x 4 batches = 8 units, each sampling every plan on one image
CFG = dict(size=(16, 16), steps=4, n=4, time_batch=1, repeats=2, deltas=(0.1,),
           methods=("baseline", "spd", "matched"), n_real=8)
TIMING = ("wall_median_s", "wall_min_s", "wall_max_s", "speedup", "speedup_over_flop_ratio")


class Stop(Exception):
    pass


def _spy(monkeypatch, stop_at=None):
    """Count sample() calls (raising Stop at call ``stop_at``) and keep the final samples."""
    seen = {"calls": 0, "samples": None}
    real_sample, real_write = bench.sample, bench.write_outputs

    def sample(*a, **k):
        seen["calls"] += 1
        if seen["calls"] == stop_at:
            raise Stop
        return real_sample(*a, **k)

    def write_outputs(out, res, plans, samples, *a, **k):
        seen["samples"] = samples
        return real_write(out, res, plans, samples, *a, **k)

    monkeypatch.setattr(bench, "sample", sample)
    monkeypatch.setattr(bench, "write_outputs", write_outputs)
    return seen


def _untimed(path):
    res = json.loads((path / "results.json").read_text())
    res.pop("timing")
    for r in res["rows"]:
        for k in TIMING:
            r.pop(k)
    return res


def test_interrupted_then_resumed_equals_a_straight_run(tiny_model, tmp_path, monkeypatch,
                                                        capsys):
    cfg = BenchConfig(model=tiny_model, **CFG)
    n_plans = len(build_plans(cfg, load_bench_model(tiny_model, (16, 16)), {}))
    straight = _spy(monkeypatch)
    run_bench(cfg, tmp_path / "a", progress=False)

    # stop inside the 4th unit: 3 units are saved, the half-done one is not
    out = tmp_path / "b"
    _spy(monkeypatch, stop_at=3 * n_plans + 2)
    with pytest.raises(Stop):
        run_bench(cfg, out, progress=False)
    state = json.loads((out / "partial" / "state.json").read_text())
    assert [(u["repeat"], u["batch"]) for u in state["units"]] == [(0, 0), (0, 1), (0, 2)]
    assert sorted(f.name for f in (out / "partial").glob("*.safetensors")) == [
        "batch_0000.safetensors", "batch_0001.safetensors", "batch_0002.safetensors"]
    md = (out / "results.md").read_text()
    assert "Partial results" in md and "3/8 batches" in md and "pending" in md
    assert "repeat 0: batches done 0-2 of 0-3" in md and "repeat 1: batches done none" in md
    assert not (out / "results.json").exists()

    capsys.readouterr()
    resumed = _spy(monkeypatch)
    res = run_bench(cfg, out, progress=True)
    assert "resuming: 3/8 batches done" in capsys.readouterr().err
    assert resumed["calls"] == 5 * n_plans  # only the 5 missing units ran
    for x, y in zip(straight["samples"], resumed["samples"], strict=True):
        assert x.shape == (4, 3, 16, 16) and torch.equal(x, y)
    assert _untimed(out) == _untimed(tmp_path / "a")  # SWD, LSD, PSNR, SSIM, FLOPs, plans
    assert not (out / "partial").exists()
    # the resumed units keep the first session's timings, and the results say so
    first = state["units"][0]
    assert res["timing"]["units"][0]["session"] == first["session"]
    assert list(res["timing"]["units"][0]["wall_s"].values()) == first["times"]
    assert len(res["timing"]["sessions"]) == 2 and all(r["wall_samples"] == 8 for r in res["rows"])
    assert "timings come from 2 sessions" in (out / "results.md").read_text()


def test_another_config_is_refused_and_fresh_discards(tiny_model, tmp_path, monkeypatch):
    cfg = BenchConfig(model=tiny_model, **CFG)
    _spy(monkeypatch, stop_at=2)
    with pytest.raises(Stop):
        run_bench(cfg, tmp_path, progress=False)
    assert (tmp_path / "partial" / "state.json").is_file()
    monkeypatch.undo()
    other = BenchConfig(model=tiny_model, **{**CFG, "steps": 3, "repeats": 1})
    with pytest.raises(ValueError, match=r"another config \(steps: 4 there, 3 now.*another "
                                         r"--out, or --fresh"):
        run_bench(other, tmp_path, progress=False)
    res = run_bench(other, tmp_path, progress=False, fresh=True)
    assert res["config"]["steps"] == 3 and not (tmp_path / "partial").exists()
    assert json.loads((tmp_path / "results.json").read_text())["config"]["steps"] == 3


def test_cli_fresh_flag_and_one_line_refusal(tiny_model, tmp_path, capsys):
    args = ["bench", "--model", tiny_model, "--size", "16x16", "--steps", "4", "--n", "2",
            "--time-batch", "1", "--repeats", "1", "--deltas", "0.1",
            "--methods", "baseline,spd", "--n-real", "8", "--out", str(tmp_path)]
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "state.json").write_text(json.dumps(
        {"format": bench.PARTIAL_FORMAT, "fingerprint": {"steps": 50}, "plans": None,
         "sessions": {}, "units": []}))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fresh" in err and "another config" in err
    assert main([*args, "--fresh"]) == 0
    cap = capsys.readouterr()
    assert "| full 4 steps (baseline) |" in cap.out and not (tmp_path / "partial").exists()
    # progress from the start: every phase has its line on stderr
    for phase in ("loading model", "counting FLOPs", "plans;", "quality:", "reference rows",
                  "writing"):
        assert phase in cap.err, phase
