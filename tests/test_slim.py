"""Slim spectral diffusion: the wavelet-gated UNet and the spectrum-aware distillation.

Known answers: the Haar transform of a 2x2 block by hand and against the project's own
Haar resize (independent code), Parseval for the DFT loss, numpy's FFT for the spectral
weights, the gates' initial state (WG-Down starts as picking each block's top-left pixel
times one), the FLOP ratio counted by ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specdiff.models import UNetConfig, WGUNetConfig, build, load, save_model
from specdiff.models.wavelet import WaveletGateDown, WaveletGateUp, haar_dwt2, haar_idwt2
from specdiff.plans import measure_eval_cost
from specdiff.spectral import project_noise, resize
from specdiff.training import TrainConfig, load_photos, train
from specdiff.training.objectives import objective_class
from specdiff.training.objectives.flow import TERM, make_batch
from specdiff.training.objectives.slim import (
    FREQ,
    SPATIAL,
    SlimOptions,
    feature_loss,
    frequency_loss,
    make_slim_batch,
    slim_config,
    spectral_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_WG = {"kind": "wgunet", "base": 8, "mults": [1, 2], "time_dim": 16, "groups": 4,
           "mid_attention": 0}
TINY_UNET = {"kind": "unet", "base": 8, "mults": [1, 2], "time_dim": 16, "groups": 4}


# --- the Haar transform and the gates ----------------------------------------------------


def test_haar_of_one_block_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    ll, lh, hl, hh = (b.item() for b in haar_dwt2(x))
    assert (ll, lh, hl, hh) == (5.0, -2.0, -1.0, 0.0)  # (a+b+c+d)/2, (a+b-c-d)/2, ...


def test_haar_low_band_is_the_projects_haar_resize_and_the_transform_is_orthonormal():
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bands = haar_dwt2(x)
    # the orthonormal low band is the project's Haar noise projection; the flow-state resize
    # keeps the image's intensity, the block mean: half of it
    assert torch.allclose(bands[0], project_noise(x, (4, 6), basis="haar"), atol=1e-12)
    assert torch.allclose(bands[0] / 2, resize(x, 0.0, (4, 6), basis="haar")[0], atol=1e-12)
    assert torch.allclose(sum(b.pow(2).sum() for b in bands), x.pow(2).sum())  # energy
    assert torch.allclose(haar_idwt2(*bands), x, atol=1e-12)
    # one band alone: LL = 1 spreads 1/2 over its block
    one = haar_idwt2(torch.ones(1, 1, 1, 1), *(torch.zeros(1, 1, 1, 1),) * 3)
    assert torch.equal(one, torch.full((1, 1, 2, 2), 0.5))


def test_gates_start_neutral():
    x = torch.randn(2, 8, 6, 10, generator=torch.Generator().manual_seed(1))
    down = WaveletGateDown(8)
    # every gate 1/2 at init: (LL + LH + HL + HH) / 2 = the top-left pixel of each 2x2 block
    assert torch.allclose(down(x), x[..., ::2, ::2], atol=1e-6)
    up = WaveletGateUp(8, 4)
    y = up.proj(x)
    want = 0.5 * haar_idwt2(*y.reshape(2, 4, 4, 6, 10).unbind(1))
    out = up(x)
    assert out.shape == (2, 4, 12, 20) and torch.allclose(out, want, atol=1e-6)


@pytest.mark.parametrize("module", [WaveletGateDown(4), haar_dwt2])
def test_odd_sides_are_refused_with_the_sizes_that_work(module):
    with pytest.raises(ValueError, match="even feature-map sides"):
        module(torch.zeros(1, 4, 6, 7))


# --- the wavelet-gated UNet ---------------------------------------------------------------


def test_wgunet_runs_on_any_grid_and_its_features_are_the_forwards():
    torch.manual_seed(0)
    net = build(TINY_WG)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for shape in ((1, 3, 16, 16), (2, 3, 13, 22)):
        x, t = torch.randn(shape), torch.rand(shape[0])
        v, feats = net.forward_features(x, t)
        assert v.shape == shape and torch.equal(v, net(x, t))
        ph, pw = -(-shape[2] // 2) * 2, -(-shape[3] // 2) * 2  # padded to a multiple of 2
        assert [tuple(f.shape) for f in feats] == [(shape[0], 8, ph, pw),
                                                    (shape[0], 16, ph // 2, pw // 2)]
    # batch independence
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0.2, 0.5, 0.9])
    assert torch.allclose(net(x, t)[1:2], net(x[1:2], t[1:2]), atol=1e-5)


def test_the_default_slim_config_is_at_least_8x_cheaper_than_the_shipped_unet():
    teacher = load("unet")
    slim = build(WGUNetConfig())
    grid = (128, 128)
    ft = measure_eval_cost(teacher, [grid], 3)[grid]
    fs = measure_eval_cost(lambda x, t: slim(x, t), [grid], 3)[grid]
    assert ft / fs >= 8.0, ft / fs
    # and the plain UNet of the same widths is not (the wavelet resampling is what gets there)
    plain = build(UNetConfig(base=12, groups=4, mid_attention=4))
    assert ft / measure_eval_cost(lambda x, t: plain(x, t), [grid], 3)[grid] < 8.0


def test_wgunet_config_round_trips_and_checks():
    from specdiff.models.config import config_from_dict, config_to_dict

    c = WGUNetConfig(base=16, gate_ratio=0.5)
    assert config_from_dict(config_to_dict(c)) == c
    with pytest.raises(ValueError, match="gate_ratio"):
        WGUNetConfig(gate_ratio=0).validate()
    with pytest.raises(ValueError, match="divisible by groups"):
        WGUNetConfig(base=10).validate()


# --- the loss terms -------------------------------------------------------------------------


def test_frequency_loss_without_weighting_is_the_mse():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, 8, 10, generator=g), torch.randn(2, 3, 8, 10, generator=g)
    w = spectral_weights(torch.randn(2, 3, 8, 10, generator=g), alpha=0.0)
    assert torch.allclose(w, torch.ones_like(w))
    assert torch.allclose(frequency_loss(a, b, w), torch.nn.functional.mse_loss(a, b), rtol=1e-5)


def test_spectral_weights_are_the_inverse_magnitude_normalised():
    x0 = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mag = np.abs(np.fft.fft2(x0.numpy(), norm="ortho"))
    mag = np.maximum(mag, 1e-3 * mag.mean(axis=(-2, -1), keepdims=True))
    want = (1 / mag) / (1 / mag).mean(axis=(-2, -1), keepdims=True)
    got = spectral_weights(x0, alpha=-1.0)
    assert np.allclose(got.numpy(), want, rtol=1e-5)
    # an empty bin (a constant image has only DC) takes the floor, not an infinite weight
    flat = spectral_weights(torch.ones(1, 1, 4, 4), alpha=-1.0)
    assert torch.isfinite(flat).all() and flat[0, 0, 0, 0] < flat[0, 0, 1, 1]


def test_feature_loss_is_relative_per_level():
    g = torch.Generator().manual_seed(4)
    f1, f2 = torch.randn(2, 4, 8, 8, generator=g), 100 * torch.randn(2, 6, 4, 4, generator=g)
    # off by the feature itself at every level: relative error 1 whatever the scale
    assert torch.allclose(feature_loss([2 * f1, 2 * f2], [f1, f2]), torch.tensor(1.0))
    assert feature_loss([f1, f2], [f1, f2]) == 0


# --- the objective through the engine ------------------------------------------------------


@pytest.fixture(scope="module")
def photos():
    return load_photos("skimage", "train")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny UNet teacher with seeded, non-trivial weights."""
    cfg = UNetConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                        for k, v in TINY_UNET.items() if k != "kind"}, mid_attention=0)
    torch.manual_seed(1)
    net = build(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(path, net.state_dict(), cfg, meta={"data": "skimage", "data_range": [-1, 1]})
    return str(path)


def slim_cfg(teacher, **kw):
    options = {"teacher": teacher, **kw.pop("options", {})}
    base = dict(model=TINY_WG, steps=4, sizes=(16,), size_weights=(1.0,), pixels=4 * 16 * 16,
                warmup=2, checkpoint_every=2, log_every=1, lr=1e-3, objective="slim",
                options=options)
    base.update(kw)
    return TrainConfig(**base).validate()


def test_slim_trains_resumes_bit_exactly_and_exports_the_student_only(tmp_path, photos, teacher):
    cfg = slim_cfg(teacher)
    kw = dict(progress=False, photos=photos, spectrum_sizes=(16,))
    ra = train(cfg, tmp_path / "a", **kw)
    train(cfg, tmp_path / "b", stop_after=2, **kw)
    rb = train(cfg, tmp_path / "b", **kw)
    assert [h[1] for h in ra.history] == [h[1] for h in rb.history]
    assert all(set(h[3]) == {TERM, SPATIAL, FREQ} for h in ra.history)
    assert all(np.isfinite(v) for h in ra.history for v in h[3].values())
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a(x, torch.tensor([0.3])), b(x, torch.tensor([0.3])))
    assert a.config == WGUNetConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                       for k, v in TINY_WG.items() if k != "kind"})
    rec = json.loads((tmp_path / "a" / "model.json").read_text())
    assert rec["meta"]["train"]["options"]["teacher"] == teacher
    assert (tmp_path / "a" / "loss.png").stat().st_size > 0


def test_the_data_only_variant_draws_flows_batches_and_builds_no_teacher(photos, teacher):
    cfg = slim_cfg(teacher, model=TINY_UNET, options={"lambda_spatial": 0, "lambda_freq": 0})
    obj = objective_class("slim")(cfg)
    torch.manual_seed(0)
    specs = obj.models()
    assert set(specs) == {"student"}
    b = make_slim_batch(cfg, photos, 3, None, obj.options)
    x, t, v = make_batch(cfg, photos, 3)
    assert set(b) == {"x", "t", "v"}
    assert torch.equal(b["x"], x) and torch.equal(b["t"], t) and torch.equal(b["v"], v)
    terms = obj.loss({"student": specs["student"].module}, b, None)
    assert set(terms) == {TERM}


def test_the_teacher_sees_the_students_noised_crops(photos, teacher):
    cfg = slim_cfg(teacher)
    obj = objective_class("slim")(cfg)
    specs = obj.models()
    t_net = specs["teacher"].module.eval()
    b = make_slim_batch(cfg, photos, 1, t_net, obj.options)
    with torch.no_grad():
        want, feats = load(teacher).net.forward_features(b["x"], b["t"])
    assert torch.equal(b["v_teacher"], want)
    assert all(torch.equal(f, g) for f, g in zip(b["features"], feats, strict=True))
    # the weights are of the clean crops: x0 = x - t v (the data velocity)
    x0 = b["x"] - b["t"][:, None, None, None] * b["v"]
    assert torch.allclose(b["weights"], spectral_weights(x0, -1.0), rtol=1e-4, atol=1e-4)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("options, match", [
    ({"lambda_spatial": -0.1}, ">= 0"),
    ({"lambda_freq": -1}, ">= 0"),
    ({"alpha": float("nan")}, "finite"),
    ({"lambda_freq": "0.1"}, "finite number"),
    ({"teacher": ""}, "needs a teacher"),
    ({"lambdas": 1}, "has no option"),
])
def test_bad_options(options, match, teacher):
    with pytest.raises(ValueError, match=match):
        slim_cfg(teacher, options=options)


def test_a_dit_student_is_refused(teacher):
    with pytest.raises(ValueError, match="wgunet' or 'unet"):
        slim_cfg(teacher, model={"kind": "dit"})


def _teacher_with(tmp_path, config, meta):
    torch.manual_seed(0)
    path = tmp_path / "t.safetensors"
    save_model(path, build(config).state_dict(), config, meta=meta)
    return str(path)


@pytest.mark.parametrize("config, meta, match", [
    (UNetConfig(channels=1, base=8, mults=(1, 2), time_dim=16, groups=4), {}, "1 channels"),
    (UNetConfig(base=8, mults=(1, 2), time_dim=16, groups=4), {"data_range": [0, 1]},
     r"data in \[0, 1\]"),
    (UNetConfig(base=8, mults=(1, 2, 2), time_dim=16, groups=4), {}, "as many levels"),
])
def test_a_teacher_that_cannot_teach_is_refused(tmp_path, config, meta, match):
    cfg = slim_cfg(_teacher_with(tmp_path, config, meta))
    with pytest.raises(ValueError, match=match):
        objective_class("slim")(cfg).models()


def test_recipe_follows_the_teacher_and_refuses_other_objectives_flags():
    from specdiff.training.config import recipe_config

    cfg = slim_config("unet")
    assert cfg.model == {**json.loads(json.dumps(WGUNetConfig().__dict__)), "mults": [1, 2, 3, 4]}
    assert cfg.shift_size == load("unet").meta["train"]["shift_size"]
    assert cfg.options == {"teacher": "unet"}
    plain = recipe_config("slim", model="unet", options={"lambda_freq": 0.0})
    assert plain.model["kind"] == "unet" and plain.model["base"] == 12
    assert plain.options == {"teacher": "unet", "lambda_freq": 0.0}
    with pytest.raises(ValueError, match="need objective slim"):
        recipe_config("flow", options={"teacher": "unet"})
    with pytest.raises(ValueError, match="need objective spd"):
        recipe_config("slim", spd_delta=0.2)
    assert SlimOptions().distills and not SlimOptions(lambda_spatial=0, lambda_freq=0).distills
