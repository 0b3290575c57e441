"""``specdiff bench --compare``: other models on the same seeds, noise and metrics.

Known answers: a compared model's baseline samples equal sampling that model directly
from the same seeds (the core sampler, no bench code); its FLOPs are those counted on it
by ``torch.utils.flop_counter``; the main model's rows are those of a bench without
``--compare``.
"""

from __future__ import annotations

import json

import pytest
import torch

from specdiff.analysis.bench import BenchConfig, run_bench, seeded_noise
from specdiff.cli import main
from specdiff.models import UNetConfig, WGUNetConfig, build, default_times, load, save_model
from specdiff.plans import full_plan, measure_eval_cost
from specdiff.sampling import sample

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SPECTRUM_SIDE = 16


@pytest.fixture(scope="module")
def slim_model(tmp_path_factory):
    """A tiny wavelet-gated UNet with seeded non-trivial weights and a recorded spectrum."""
    cfg = WGUNetConfig(base=4, mults=(1, 2), time_dim=16, groups=4, mid_attention=0)
    torch.manual_seed(3)
    net = build(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("slim") / "slim.safetensors"
    save_model(path, net.state_dict(), cfg, meta={"data": "skimage",
                                                  "spectrum": {"16": [3.0, 2.3]}})
    return str(path)


def _cfg(main_model, **kw):
    base = dict(model=main_model, size=(16, 16), steps=4, n=2, time_batch=2, deltas=(0.1,),
                continuations=("keep",), methods=("baseline", "spd", "matched"), n_real=8)
    base.update(kw)
    return BenchConfig(**base)


def test_compared_rows_are_that_model_sampled_from_the_same_seeds(tiny_model, slim_model,
                                                                  tmp_path):
    alone = run_bench(_cfg(tiny_model), None, progress=False)
    res = run_bench(_cfg(tiny_model, compare=(slim_model,)), tmp_path, progress=False)
    rows = {r["method"]: r for r in res["rows"]}
    # the main model's rows are unchanged by the comparison
    for r in alone["rows"]:
        assert rows[r["method"]]["swd_x1e3"] == pytest.approx(r["swd_x1e3"], rel=1e-6)
    mine = rows[f"{slim_model}: full 4 steps (baseline)"]
    assert f"{slim_model}: spd 0.5/1 delta=0.1" in rows
    # FLOPs: four evaluations of the slim net at 16^2, counted on it
    net = load(slim_model)
    flops = measure_eval_cost(net, [(16, 16)], 3)[(16, 16)]
    assert mine["gflops_per_image"] * 1e9 == pytest.approx(4 * flops, rel=1e-9)
    assert res["flops_per_eval"][f"{slim_model} 16x16"] == flops
    # its samples: the core sampler on that model with the bench's seeds
    noise, gens = seeded_noise(0, 3, (16, 16), 0, 2)
    want = sample(net, full_plan(default_times(4, (16, 16)), (16, 16)), noise=noise,
                  generator=gens).clamp(-1, 1)
    names = json.loads((tmp_path / "grid_rows.json").read_text())
    assert names.index(mine["method"]) > 0
    from specdiff.analysis import metrics as M
    from specdiff.training.data import eval_crops

    real = eval_crops(8, 16, source="skimage", seed=1234, window=128)
    assert mine["swd_x1e3"] == pytest.approx(1e3 * M.SlicedWasserstein(real)(want)["mean"],
                                             rel=1e-5)
    # the alternative at that cost: the main model with fewer full-resolution steps; the slim
    # baseline costs 4 / 4.3 main evaluations, so one full-resolution step (the fewest)
    main_flops = measure_eval_cost(load(tiny_model), [(16, 16)], 3)[(16, 16)]
    assert 3 < 4 * main_flops / (4 * flops) < 8
    assert rows["full 1 steps"]["gflops_per_image"] * 1e9 == pytest.approx(main_flops, rel=1e-9)
    assert "full 1 steps" not in {r["method"] for r in alone["rows"]}


@pytest.mark.parametrize("compare, match", [
    (("a", "a"), "twice"),
    (("gaussian",), "gaussian"),
    (("",), "names or paths"),
])
def test_bad_compare_lists(tiny_model, compare, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tiny_model, compare=compare).validate()
    with pytest.raises(ValueError, match="repeats the main model"):
        _cfg(tiny_model, compare=(tiny_model,)).validate()


def test_a_compared_model_of_other_images_is_refused(tiny_model, tmp_path):
    cfg = UNetConfig(channels=1, base=8, mults=(1, 2), time_dim=16)
    path = tmp_path / "grey.safetensors"
    save_model(path, build(cfg).state_dict(), cfg, meta={"spectrum": {"16": [3.0, 2.3]}})
    with pytest.raises(ValueError, match="1-channel images"):
        run_bench(_cfg(tiny_model, compare=(str(path),)), None, progress=False)


def test_cli_compare_error_is_one_line(tiny_model, tmp_path, capsys):
    rc = main(["bench", "--model", tiny_model, "--compare", f"{tiny_model}", "--size", "16x16",
               "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "repeats the main model" in err[0]


def test_paired_bootstrap_of_the_swd_change():
    from specdiff.analysis import metrics as M
    from specdiff.analysis.bench import paired_swd_intervals

    g = torch.Generator().manual_seed(0)
    real = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    base = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    ref = M.SlicedWasserstein(real)
    # blurred: its patches are smooth where the real ones are white (SWD normalises each
    # patch, so a contrast change alone would not count)
    worse = torch.nn.functional.avg_pool2d(base, 3, stride=1, padding=1)
    iv = paired_swd_intervals(ref, [base, base.clone(), worse], 20)
    # the same images on the same resamples: exactly no change; blurred: a
    # worse SWD on every resample, so the whole interval sits above 0
    assert iv[0] == (0.0, 0.0) and iv[1] == (0.0, 0.0)
    assert 0 < iv[2][0] <= iv[2][1]
    with pytest.raises(ValueError, match="bootstrap"):
        BenchConfig(bootstrap=3).validate()


def test_bench_reports_the_interval(tiny_model, slim_model):
    res = run_bench(_cfg(tiny_model, compare=(slim_model,), bootstrap=10), None, progress=False)
    rows = res["rows"]
    assert rows[0]["swd_vs_baseline_p05_p95"] == [0.0, 0.0]
    lo, hi = rows[1]["swd_vs_baseline_p05_p95"]
    assert lo <= hi
    from specdiff.analysis.bench import markdown_table

    assert f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" in markdown_table(res)
