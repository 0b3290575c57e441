"""Tuning-free Self-Cascade (specdiff.cascade): the grids of each step up, the spectral and
fixed re-noise times, the plan, and seeded, batch-independent sampling through
``specdiff sample --cascade``."""

import json
import math

import pytest
import torch

from specdiff.analysis.bench import seeded_noise
from specdiff.analysis.generate import SampleConfig, generate
from specdiff.cascade import (
    OFFICIAL_STRENGTH,
    cascade_grids,
    cascade_renoise_times,
    self_cascade_plan,
)
from specdiff.cli import main
from specdiff.models import default_times, load
from specdiff.plans import PowerSpectrum
from specdiff.sampling import sample
from specdiff.transitions import X0Renoise

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grids_double_then_take_the_integer_factor_left():
    assert cascade_grids((128, 128), (512, 512)) == [(128, 128), (256, 256), (512, 512)]
    assert cascade_grids((128, 128), (384, 384)) == [(128, 128), (384, 384)]
    # 12x: doubling to 4x (8x would not divide 12), then the remaining 3x in one step
    assert cascade_grids((64, 96), (768, 1152)) == [(64, 96), (128, 192), (256, 384),
                                                     (768, 1152)]
    assert cascade_grids((3, 16, 16), (3, 32, 32)) == [(3, 16, 16), (3, 32, 32)]
    for target in [(256, 128), (192, 192), (128, 128), (64, 64)]:
        with pytest.raises(ValueError, match="integer factor >= 2"):
            cascade_grids((128, 128), target)
    with pytest.raises(ValueError, match="only the last two axes"):
        cascade_grids((3, 16, 16), (5, 32, 32))


def test_spectral_renoise_time_is_the_activation_time_of_the_pivots_nyquist():
    grids = [(128, 128), (256, 256), (512, 512)]
    spectra = {256: (40.0, 2.0), 512: (160.0, 2.0)}  # A grows with the element count
    got = cascade_renoise_times(grids, spectrum_at=lambda g: spectra[g[-1]], delta=0.05)
    want = []
    for lo, hi in zip(grids, grids[1:]):
        A, beta = spectra[hi[-1]]
        P = A * (lo[-1] / 2) ** -beta  # the strongest frequency the pivot lacks
        want.append(1 / (1 + math.sqrt(0.05 / (P * (1 + P - 0.05)))))  # SPD Eq. 9
    assert got == pytest.approx(want, rel=1e-12)
    assert all(0 < t < 1 for t in got)
    # a larger delta tolerates more signal: the band emerges later (a lower re-noise time)
    later = cascade_renoise_times(grids, spectrum_at=lambda g: spectra[g[-1]], delta=0.2)
    assert all(b < a for a, b in zip(got, later))


def test_fixed_strength_and_bad_arguments():
    grids = [(128, 128), (256, 256), (512, 512)]
    assert cascade_renoise_times(grids, strength=OFFICIAL_STRENGTH) == [0.7, 0.7]
    with pytest.raises(ValueError, match="not both or neither"):
        cascade_renoise_times(grids, strength=0.7, delta=0.05)
    with pytest.raises(ValueError, match="not both or neither"):
        cascade_renoise_times(grids)
    with pytest.raises(ValueError, match="strength must lie in"):
        cascade_renoise_times(grids, strength=1.0)
    with pytest.raises(ValueError, match="at least two grids"):
        cascade_renoise_times(grids[:1], strength=0.5)


def test_plan_walks_each_grids_schedule_from_its_renoise_time():
    grids = [(32, 32), (64, 64), (128, 128)]
    steps = 10
    plan = self_cascade_plan(lambda g: default_times(steps, g), grids, (0.6, 0.35), steps=steps)
    assert [st.grid for st in plan.stages] == grids
    assert plan.stages[0].transition is None
    assert all(st.transition == X0Renoise("bicubic") for st in plan.stages[1:])
    first = plan.stages[0].times
    assert first == pytest.approx(tuple(default_times(steps, grids[0]).tolist()), abs=1e-7)
    assert [st.times[0] for st in plan.stages[1:]] == pytest.approx([0.6, 0.35])
    assert [st.times[-1] for st in plan.stages] == [0.0, 0.0, 0.0]
    assert [st.steps for st in plan.stages] == [10, 6, 4]  # round(10 t), the span covered
    assert plan.meta.family == "cascade" and plan.meta.renoise_at == (0.6, 0.35)
    with pytest.raises(ValueError, match="re-noise times in"):
        self_cascade_plan(lambda g: default_times(steps, g), grids, (0.6,), steps=steps)


def test_sampling_is_seeded_and_batch_independent(tiny_model):
    model = load(tiny_model)
    grids = cascade_grids((16, 16), (32, 32))
    plan = self_cascade_plan(lambda g: default_times(4, g), grids, (0.5,), steps=4)
    noise, fresh = seeded_noise(7, 3, (32, 32), 0, 2)
    both = sample(model, plan, noise=noise, generator=fresh)
    noise1, fresh1 = seeded_noise(7, 3, (32, 32), 1, 1)  # image 1 alone
    one = sample(model, plan, noise=noise1, generator=fresh1)
    assert both.shape == (2, 3, 32, 32)
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)
    again = sample(model, plan, noise=noise, generator=seeded_noise(7, 3, (32, 32), 0, 2)[1])
    assert torch.equal(both, again)
    assert not torch.allclose(both[0], both[1])


def test_sample_command_runs_a_cascade(tiny_model, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["sample", "--model", tiny_model, "--size", "32x32", "--steps", "4", "--n", "2",
                 "--cascade", "--pivot", "16", "--threads", "1", "--quiet", "--out",
                 str(out)]) == 0
    info = json.loads((out / "sample.json").read_text())
    assert info["cascade"] == "spectral" and info["scales"] == [0.5, 1.0]
    assert info["plan"].startswith("4 steps at 16x16")
    assert len(list(out.glob("*_seed*.png"))) == 2
    cfg = SampleConfig(model=tiny_model, size=(32, 32), steps=4, n=1, cascade="strength",
                       pivot=16, strength=0.7)
    assert generate(cfg, tmp_path / "s", progress=False)["plan"].endswith("3 steps at 32x32")
    capsys.readouterr()
    for argv, msg in [(["--size", "48x48", "--cascade", "--pivot", "32"], "integer factor"),
                      (["--cascade-strength", "0.7"], "needs --cascade"),
                      (["--size", "64x64", "--cascade", "--pivot", "32", "--cascade-strength",
                        "1.5"], "must lie in (0, 1)")]:
        code = main(["sample", "--model", tiny_model, *argv, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_the_spectrum_power_law_is_what_the_criterion_reads():
    spec = PowerSpectrum(50.0, 2.2)
    t = cascade_renoise_times([(64, 64), (128, 128)], spectrum_at=lambda g: spec, delta=0.05)
    t_named = cascade_renoise_times([(64, 64), (128, 128)],
                                    spectrum_at=lambda g: (50.0, 2.2), delta=0.05)
    assert t == t_named
