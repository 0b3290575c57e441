"""Benchmark plumbing on tiny models (speed numbers belong in docs, not tests)."""

import json

import pytest
import torch

from specdiff.analysis.bench import (
    BenchConfig,
    build_plans,
    demo_config,
    gaussian_reference,
    load_bench_model,
    markdown_table,
    run_bench,
)
from specdiff.models import default_times
from specdiff.plans import full_plan, pyramidal_plan, spd_plan
from specdiff.testbeds import GaussianField
from specdiff.transitions import X0Renoise

# tiny_model (conftest.py) records its data spectrum at this side
TINY_SPECTRUM_SIDE = 32


def test_plans_are_the_shared_methods_and_priced(tiny_model):
    methods = ("baseline", "matched", "spd", "spd3", "pyramidal", "bottleneck", "cascade")
    cfg = BenchConfig(model=tiny_model, size=(32, 32), steps=8, deltas=(0.05,), n=2,
                      time_batch=1, methods=methods).validate()
    bm = load_bench_model(tiny_model, (32, 32))
    flops = {}
    plans = build_plans(cfg, bm, flops)
    by_name = {p.name: p for p in plans}
    times = default_times(8, (32, 32))
    assert plans[0].name == "full 8 steps (baseline)"
    assert plans[0].stages == full_plan(times, (32, 32)).stages
    # SPD with the checkpoint's spectrum at 32^2 (A=3, beta=2.3), both continuations
    spd = spd_plan(times, (32, 32), (0.5, 1.0), A=3.0, beta=2.3, delta=0.05)
    assert by_name["spd 0.5/1 delta=0.05"].stages == spd.stages
    assert "spd 0.5/1 delta=0.05 respace" in by_name and "spd 0.25/0.5/1 delta=0.05" in by_name
    pyr = pyramidal_plan((32, 32), (0.25, 0.5, 1.0), (2, 2, 4), profile=times, transition="dct")
    assert by_name["pyramidal 0.25/0.5/1 steps 2/2/4"].stages == pyr.stages
    # the model-side cascade upsamples bicubically (the testbed prices the dct stand-in)
    assert by_name["cascade 0.5/1 renoise 0.7"].transitions == (X0Renoise("bicubic"),)
    assert "bottleneck 0.5 at 0.1-0.8" in by_name
    fewer = [p for p in plans if p.meta.family == "full" and p is not plans[0]]
    assert fewer and all(len(p.stages) == 1 and p.steps < 8 for p in fewer)
    assert all(tuple(st.grid) in flops for p in plans for st in p.stages)
    for p in plans[1:]:  # every other plan is cheaper than the baseline here
        assert p.full_grid == (32, 32)
        assert p.cost(flops) < 8 * 1.05


def test_optimal_plan_row(tiny_model):
    cfg = BenchConfig(model=tiny_model, size=(16, 16), steps=6, n=2, time_batch=1,
                      methods=("baseline", "optimal"), optimal_tolerances=(0.5,)).validate()
    plans = build_plans(cfg, load_bench_model(tiny_model, (16, 16)), {})
    opt = [p for p in plans if p.meta.family == "optimal"]
    assert len(opt) == 1 and opt[0].meta.w2 <= opt[0].meta.target + 1e-12
    assert opt[0].name.startswith("optimal tol=0.5 ")


def test_run_bench_end_to_end(tiny_model, tmp_path):
    cfg = BenchConfig(model=tiny_model, size=(16, 16), steps=4, n=2, time_batch=1,
                      deltas=(0.1,), methods=("baseline", "spd", "matched"), n_real=8)
    res = run_bench(cfg, tmp_path, progress=False)
    rows = res["rows"]
    assert len(rows) >= 2 and all(len(r["plan"]) >= 1 for r in rows)
    assert all(r["wall_samples"] == 2 for r in rows)
    spd = [r for r in rows if r["method"].startswith("spd")][0]
    # FLOP ratio: the UNet's FLOPs grow with the pixels, so a 8^2 + 16^2 plan beats 4 x 16^2
    assert spd["flop_ratio"] > 1 and 0 <= spd["ssim_vs_baseline"] <= 1
    assert set(res["references"]) == {"held-out real crops (floor)",
                                      "training crops (a perfect model of the training data)",
                                      "Gaussian field fitted to training crops (bar)"}
    for f in ("results.md", "results.json", "pareto.png", "grid.png", "spectrum.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["method"] == \
        "full 4 steps (baseline)"
    assert "| full 4 steps (baseline) |" in markdown_table(res)


def test_gaussian_testbed_reports_the_exact_w2():
    from specdiff.training.data import fit_spectrum, load_photos

    cfg = BenchConfig(model="gaussian", size=(16, 16), steps=4, n=2, time_batch=2,
                      deltas=(0.1,), continuations=("keep",),
                      methods=("baseline", "spd", "pyramidal", "cascade"), n_real=8)
    res = run_bench(cfg, None, progress=False)
    w2 = {r["method"]: r["exact_w2"] for r in res["rows"]}
    # independently: the field fitted to the same training crops, the plans from the core
    A, beta = fit_spectrum(load_photos("skimage", "train").crops(
        256, 16, torch.Generator().manual_seed(0)))
    field = GaussianField(A, beta, (16, 16), channels=3)
    times = default_times(4, (16, 16))
    assert w2["full 4 steps (baseline)"] == pytest.approx(field.w2(full_plan(times, (16, 16))),
                                                          rel=1e-12)
    spd = spd_plan(times, (16, 16), (0.5, 1.0), A=A, beta=beta, delta=0.1)
    assert w2["spd 0.5/1 delta=0.1"] == pytest.approx(field.w2(spd), rel=1e-12)
    pyr = pyramidal_plan((16, 16), (0.25, 0.5, 1.0), (1, 1, 2), profile=times, transition="dct")
    assert w2["pyramidal 0.25/0.5/1 steps 1/1/2"] == pytest.approx(field.w2(pyr), rel=1e-12)
    # a bicubic upsample has no closed form: no number rather than a wrong one
    assert w2["cascade 0.5/1 renoise 0.7"] is None


def test_gaussian_reference_matches_colour_statistics():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 1, 16, 16, generator=g)
    real = torch.cat([base, 0.5 * base, -base + 0.2], dim=1)  # fully correlated colours
    fake = gaussian_reference(real, 64, g)
    torch.testing.assert_close(fake.mean(dim=(0, 2, 3)), real.mean(dim=(0, 2, 3)), atol=0.1,
                               rtol=0)
    c = torch.corrcoef(fake.permute(1, 0, 2, 3).reshape(3, -1))
    assert c[0, 1] > 0.95 and c[0, 2] < -0.95


def test_config_errors():
    with pytest.raises(ValueError, match="unknown methods"):
        BenchConfig(methods=("baseline", "magic")).validate()
    with pytest.raises(ValueError, match="multiple of time_batch"):
        BenchConfig(n=5, time_batch=2).validate()
    with pytest.raises(ValueError, match="include 'baseline'"):
        BenchConfig(methods=("spd",)).validate()


def test_demo_config_is_baseline_against_spd():
    cfg = demo_config(model="unet", size=(64, 64), n=4, time_batch=2)
    assert cfg.methods == ("baseline", "spd") and cfg.deltas == (0.05,)
    assert cfg.continuations == ("keep",) and cfg.repeats == 1 and cfg.size == (64, 64)
    with pytest.raises(ValueError, match="multiple of time_batch"):
        demo_config(n=3, time_batch=2)
