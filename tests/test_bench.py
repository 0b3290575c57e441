"""Benchmark plumbing on tiny models (speed numbers belong in docs, not tests)."""

import json

import pytest
import torch

from specdiff.bench import (
    BenchConfig,
    build_plans,
    gaussian_reference,
    image_grid,
    load_bench_model,
    markdown_table,
    run_bench,
)
from specdiff.models import UNet, UNetConfig, save_model

TINY = UNetConfig(base=8, mults=(1, 2), time_dim=16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_model(path, net.state_dict(), TINY,
               meta={"data": "skimage", "spectrum": {"32": [3.0, 2.3]}})
    return str(path)


def test_plans_are_named_and_priced(tiny_model):
    methods = ("baseline", "matched", "spd", "spd3", "pyramidal", "bottleneck", "cascade")
    cfg = BenchConfig(model=tiny_model, size=(32, 32), steps=8, deltas=(0.05,), n=2,
                      time_batch=1, methods=methods).validate()
    bm = load_bench_model(tiny_model, (32, 32))
    flops = {}
    plans = build_plans(cfg, bm, flops)
    names = [p.name for p in plans]
    assert names[0] == "baseline 8 steps"
    assert any(n.startswith("SPD 0.5,1") for n in names)
    assert any(n.startswith("Pyramidal") for n in names)
    assert any(n.startswith("x0 cascade") for n in names)
    assert any(n.startswith("full res,") for n in names)
    assert all(tuple(st.grid) in flops for p in plans for st in p.stages)
    for p in plans:  # every progressive plan is cheaper than the baseline here
        assert p.full_grid == (32, 32)
        assert p.cost(flops) <= plans[0].cost(flops) * 1.05


def test_optimal_plan_row(tiny_model):
    cfg = BenchConfig(model=tiny_model, size=(16, 16), steps=6, n=2, time_batch=1,
                      methods=("baseline", "optimal"), optimal_tolerances=(0.5,)).validate()
    plans = build_plans(cfg, load_bench_model(tiny_model, (16, 16)), {})
    opt = [p for p in plans if p.name.startswith("optimal_plan")]
    assert len(opt) == 1 and dict(opt[0].meta)["w2"] <= dict(opt[0].meta)["target"] + 1e-12


def test_run_bench_end_to_end(tiny_model, tmp_path):
    cfg = BenchConfig(model=tiny_model, size=(16, 16), steps=4, n=2, time_batch=1,
                      deltas=(0.1,), methods=("baseline", "spd", "matched"), n_real=8)
    res = run_bench(cfg, tmp_path, progress=False)
    rows = res["rows"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["flop_ratio"] == 1.0
    assert len(rows) >= 2 and all(len(r["plan"]) >= 1 for r in rows)
    assert all(r["wall_samples"] == 2 for r in rows)
    spd = [r for r in rows if r["method"].startswith("SPD")][0]
    assert spd["flop_ratio"] > 1 and 0 <= spd["ssim_vs_baseline"] <= 1
    assert set(res["references"]) == {"held-out real crops (floor)",
                                      "training crops (a perfect model of the training data)",
                                      "Gaussian field fitted to training crops (bar)"}
    for f in ("results.md", "results.json", "pareto.png", "grid.png", "spectrum.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["method"] == rows[0]["method"]
    assert "| baseline 4 steps |" in markdown_table(res)


def test_gaussian_testbed_reports_exact_w2(tmp_path):
    cfg = BenchConfig(model="gaussian", size=(16, 16), steps=4, n=2, time_batch=2,
                      deltas=(0.1,), methods=("baseline", "spd"), n_real=8)
    res = run_bench(cfg, None, progress=False)
    w2 = [r["exact_w2"] for r in res["rows"]]
    assert all(v is not None and v >= 0 for v in w2)


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


def test_image_grid_layout():
    g = image_grid([torch.zeros(3, 3, 4, 4), torch.zeros(2, 3, 4, 4)], pad=1)
    assert g.shape == (3, 2 * 5 + 1, 3 * 5 + 1)
