"""specdiff.analysis.generate: the images of one plan, seed-coupled."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from specdiff.analysis.bench import load_bench_model
from specdiff.analysis.generate import SampleConfig, generate, sample_plan
from specdiff.images import to_uint8
from specdiff.models import UNet, UNetConfig, default_times, load, save_model
from specdiff.plans import full_plan, spd_plan
from specdiff.sampling import sample
from specdiff.spectral import make_noise

TINY = UNetConfig(base=8, mults=(1, 2), time_dim=16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet(TINY)
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_model(path, net.state_dict(), TINY, meta={"data": "skimage", "spectrum": {"16": [3.0, 2.3]}})
    return str(path)


def test_plans_follow_the_config(tiny_model):
    bm = load_bench_model(tiny_model, (16, 16))
    times = default_times(6, (16, 16))
    base = sample_plan(SampleConfig(model=tiny_model, size=(16, 16), steps=6, scales=(1.0,)), bm)
    assert base.stages == full_plan(times, (16, 16)).stages
    cfg = SampleConfig(model=tiny_model, size=(16, 16), steps=6, delta=0.2, continuation="respace")
    spd = spd_plan(times, (16, 16), (0.5, 1.0), A=3.0, beta=2.3, delta=0.2, continuation="respace")
    assert sample_plan(cfg, bm).stages == spd.stages


def test_generate_writes_the_seeded_images(tiny_model, tmp_path):
    cfg = SampleConfig(model=tiny_model, size=(16, 16), steps=4, n=2, seed=5, delta=0.2)
    info = generate(cfg, tmp_path, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["000_seed5.png", "001_seed6.png", "grid.png", "sample.json"]
    assert json.loads((tmp_path / "sample.json").read_text()) == info
    # image 1 independently: seed 6's noise through the core sampler
    model = load(tiny_model)
    plan = spd_plan(default_times(4, (16, 16)), (16, 16), (0.5, 1.0), A=3.0, beta=2.3, delta=0.2)
    x = sample(model, plan, noise=make_noise((1, 3, 16, 16), [torch.Generator().manual_seed(6)]))
    png = np.asarray(Image.open(tmp_path / "001_seed6.png"))
    assert (png == to_uint8(x.float().clamp(-1, 1))[0]).all()
    assert info["pixel_cost_vs_full"] == pytest.approx(plan.cost("tokens") / 4)
    with pytest.raises(ValueError, match="n \\(images\\) must be"):
        generate(SampleConfig(model=tiny_model, n=0), tmp_path)
    with pytest.raises(ValueError, match="trained model"):
        generate(SampleConfig(model="gaussian", size=(16, 16)), tmp_path)
