"""Training: data split and crops, loss goes down, resume is bit-exact, atomic checkpoints."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from specdiff.models import load
from specdiff.training import TrainConfig, default_config, load_photos, make_batch, train
from specdiff.training.data import SKIMAGE_EVAL, SKIMAGE_TRAIN, fit_spectrum

TINY = {"kind": "unet", "base": 8, "mults": [1, 2], "time_dim": 16}


def tiny_cfg(**kw):
    base = dict(model=TINY, steps=6, sizes=(16,), size_weights=(1.0,), pixels=4 * 16 * 16,
                warmup=2, checkpoint_every=3, log_every=1, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base).validate()


@pytest.fixture(scope="module")
def photos():
    return load_photos("skimage", "train")


def test_split_is_by_photo(photos):
    ev = load_photos("skimage", "eval")
    assert not set(SKIMAGE_TRAIN) & set(SKIMAGE_EVAL)
    assert {n.split("_")[0] for n in photos.names}.isdisjoint(ev.names)


def test_crops_are_deterministic_in_range_and_flipped(photos):
    a = photos.crops(8, 24, torch.Generator().manual_seed(3))
    b = photos.crops(8, 24, torch.Generator().manual_seed(3))
    assert a.shape == (8, 3, 24, 24) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    with pytest.raises(ValueError, match="smaller crop sizes"):
        photos.crops(1, 5000, torch.Generator())


def test_folder_data_split(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(5):
        arr = (torch.rand(40, 50, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / f"img{i}.png")
    tr, ev = load_photos(tmp_path, "train"), load_photos(tmp_path, "eval")
    assert len(tr.photos) == 4 and ev.names == ["img4.png"]
    assert tr.crops(2, 32, g, window=0).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="smaller window"):
        tr.crops(2, 32, g)  # 40x50 photos are smaller than the default 128 window
    with pytest.raises(ValueError, match="at least 2"):
        (tmp_path / "only").mkdir()
        (tmp_path / "img0.png").rename(tmp_path / "only" / "a.png")
        load_photos(tmp_path / "only", "train")


def test_fit_spectrum_recovers_a_power_law():
    from specdiff.testbeds import GaussianField

    x = GaussianField(50.0, 2.0, (64, 64)).sample(64, torch.Generator().manual_seed(0))
    A, beta = fit_spectrum(x)
    assert abs(beta - 2.0) < 0.1 and 35 < A < 70


def test_batch_is_a_function_of_seed_and_step(photos):
    cfg = tiny_cfg()
    x1, t1, v1 = make_batch(cfg, photos, 5)
    x2, t2, v2 = make_batch(cfg, photos, 5)
    assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(v1, v2)
    assert not torch.equal(x1, make_batch(cfg, photos, 6)[0])
    assert ((t1 > 0) & (t1 < 1)).all()


def test_a_few_steps_lower_the_loss(tmp_path, photos):
    cfg = tiny_cfg(steps=40, checkpoint_every=40, log_every=10, pixels=8 * 16 * 16, ema_decay=0.0)
    xt, t, v = make_batch(cfg, photos, 10_000)  # a held-out batch
    res = train(cfg, tmp_path, progress=False, photos=photos, spectrum_sizes=(16,))
    den = load(tmp_path)
    with torch.no_grad():
        before = float(((0 - v) ** 2).mean())  # zero-initialised output layer: v_hat = 0
        after = float(((den.net(xt, t) - v) ** 2).mean())
    assert after < 0.8 * before
    assert res.history[-1][1] < res.history[0][1]
    assert (tmp_path / "loss.png").stat().st_size > 1000


def _state(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def test_resume_is_bit_exact(tmp_path, photos):
    cfg = tiny_cfg()
    train(cfg, tmp_path / "a", progress=False, photos=photos, spectrum_sizes=(16,))
    r1 = train(cfg, tmp_path / "b", progress=False, photos=photos, stop_after=3)
    assert r1.step == 3 and r1.model_path is None
    r2 = train(cfg, tmp_path / "b", progress=False, photos=photos, spectrum_sizes=(16,))
    assert r2.step == 6
    ta, ma = _state(tmp_path / "a" / "train_state.safetensors")
    tb, mb = _state(tmp_path / "b" / "train_state.safetensors")
    assert ta.keys() == tb.keys() and any(k.startswith("optim.") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    la = [h[1] for h in json.loads(ma["history"])]
    lb = [h[1] for h in json.loads(mb["history"])]
    assert la == lb
    # the exported models are identical too
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(load(tmp_path / "a")(x, torch.tensor([0.5])),
                       load(tmp_path / "b")(x, torch.tensor([0.5])))


def test_resume_with_other_settings_is_refused(tmp_path, photos):
    train(tiny_cfg(steps=2), tmp_path, progress=False, photos=photos, stop_after=1)
    with pytest.raises(ValueError, match="other settings"):
        train(tiny_cfg(steps=2, lr=5e-4), tmp_path, progress=False, photos=photos)


def test_truncated_train_state_is_a_clear_error(tmp_path, photos):
    train(tiny_cfg(steps=2), tmp_path, progress=False, photos=photos, stop_after=1)
    p = tmp_path / "train_state.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        train(tiny_cfg(steps=2), tmp_path, progress=False, photos=photos)


def test_config_validation():
    with pytest.raises(ValueError, match="same"):
        TrainConfig(sizes=(16, 32), size_weights=(1.0,)).validate()
    with pytest.raises(ValueError, match="unknown model kind"):
        TrainConfig(model={"kind": "gan"}).validate()
    assert default_config("dit").model["kind"] == "dit"


def test_resolution_shift_of_training_times(photos):
    from specdiff.spectral import resolution_shift
    from specdiff.training.loop import resolution_shift_t

    t = torch.linspace(0.05, 0.95, 7)
    torch.testing.assert_close(resolution_shift_t(t, 1.0), t)
    # the same map as the SPD/SD3 time shift with rho = 2
    torch.testing.assert_close(resolution_shift_t(t, 2.0), 2 * t / (1 + t))
    assert float(resolution_shift_t(torch.tensor(0.5), 2.0)) == pytest.approx(resolution_shift(0.5, 2.0))
    # with shift_size=16, a 32^2 crop draws the unshifted times mapped by s = 2
    plain = make_batch(tiny_cfg(sizes=(32,), pixels=64 * 32 * 32), photos, step=0)[1]
    shifted = make_batch(tiny_cfg(sizes=(32,), pixels=64 * 32 * 32, shift_size=16), photos, step=0)[1]
    torch.testing.assert_close(shifted, resolution_shift_t(plain, 2.0))
    with pytest.raises(ValueError, match="shift_size"):
        tiny_cfg(shift_size=-1)
    assert default_config("unet").shift_size == 64


# --- SPD fine-tuning -------------------------------------------------------------------


class _GaussianVelocity(torch.nn.Module):
    """The exact velocity of a power-law Gaussian field, on any grid: a resolution-consistent
    model by construction (its posterior is independent per DCT bin)."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x, t):
        return (x - self.field.denoiser(x, t)) / t[:, None, None, None]


def test_spd_targets_are_exact_for_a_resolution_consistent_model(photos):
    """For the Gaussian field's exact denoiser, the coarse-grid answer *is* the fine-grid answer
    seen on the coarse grid, so the SPD target on a coarse state must equal the model's own
    coarse-grid velocity there (time map, resize scaling and target algebra all checked)."""
    from specdiff.testbeds import GaussianField
    from specdiff.training.loop import make_spd_batch

    gauss = _GaussianVelocity(GaussianField(60.0, 2.3, (32, 32), channels=3))
    for scale in (0.5, 0.25):
        cfg = tiny_cfg(init="x", objective="spd", sizes=(32,), spd_mix=(1, 0, 0),
                       spd_scales=(scale,), shift_size=16)
        for step in range(3):
            x, t, v = make_spd_batch(cfg, photos, step, gauss)
            side = round(32 * scale)
            assert x.shape[-2:] == (side, side)
            assert (t < 1).all() and (t > 0).all()
            torch.testing.assert_close(v, gauss(x, t), atol=2e-4, rtol=1e-4)
    # full-grid states: the teacher's own velocity; post-transition: back on the fine grid,
    # at the fine time, its low band the fine state's
    cfg = tiny_cfg(init="x", objective="spd", sizes=(32,), spd_mix=(0, 0, 1))
    x, t, v = make_spd_batch(cfg, photos, 0, gauss)
    torch.testing.assert_close(v, gauss(x, t))
    cfg_post = tiny_cfg(init="x", objective="spd", sizes=(32,), spd_mix=(0, 1, 0))
    xp, tp, _ = make_spd_batch(cfg_post, photos, 0, gauss)
    torch.testing.assert_close(tp, t)  # same step -> same crop, t and noise as the full state
    from specdiff.spectral import dct

    torch.testing.assert_close(dct(xp)[..., :16, :16], dct(x)[..., :16, :16], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(dct(xp)[..., 16:, 16:], dct(x)[..., 16:, 16:], atol=1e-2)
    # post-transition states only where SPD switches: t mapped into [t*, 1]
    _, tq, _ = make_spd_batch(cfg_post, photos, 0, gauss, post_t_min={(32, 16): 0.4})
    torch.testing.assert_close(tq, 0.4 + 0.6 * t)


def _init_model(tmp_path, photos):
    train(tiny_cfg(steps=6, sizes=(16, 32), size_weights=(1.0, 1.0)), tmp_path / "init",
          progress=False, photos=photos, spectrum_sizes=(16,))
    return str(tmp_path / "init")


def _coarse_loss(net, batches):
    with torch.no_grad():
        return sum(float(((net(x, t) - v) ** 2).mean()) for x, t, v in batches) / len(batches)


def test_spd_finetuning_lowers_the_coarse_loss_and_resumes_bit_exactly(tmp_path, photos):
    from specdiff.training.loop import make_spd_batch

    init = _init_model(tmp_path, photos)
    cfg = tiny_cfg(init=init, objective="spd", steps=16, sizes=(32,), pixels=4 * 32 * 32,
                   spd_mix=(0.8, 0.1, 0.1), lr=2e-3, ema_decay=0.0, checkpoint_every=8,
                   log_every=4)
    teacher = load(init).net
    held_out = [make_spd_batch(replace(cfg, spd_mix=(1, 0, 0)), photos, 10_000 + k, teacher)
                for k in range(4)]
    before = _coarse_loss(teacher, held_out)
    train(cfg, tmp_path / "a", progress=False, photos=photos, spectrum_sizes=(16,))
    after = _coarse_loss(load(tmp_path / "a").net, held_out)
    assert after < 0.8 * before
    # the teacher (the init weights) is rebuilt on resume: same result as one run
    train(cfg, tmp_path / "b", progress=False, photos=photos, stop_after=8)
    train(cfg, tmp_path / "b", progress=False, photos=photos, spectrum_sizes=(16,))
    ta, _ = _state(tmp_path / "a" / "train_state.safetensors")
    tb, _ = _state(tmp_path / "b" / "train_state.safetensors")
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_spd_config_errors(tmp_path, photos):
    with pytest.raises(ValueError, match="pass init="):
        tiny_cfg(objective="spd")
    with pytest.raises(ValueError, match="spd_scales"):
        tiny_cfg(init="x", objective="spd", spd_scales=(1.0,))
    with pytest.raises(ValueError, match=">= 8 pixels"):
        tiny_cfg(init="x", objective="spd", sizes=(16,), spd_scales=(0.25,))
    with pytest.raises(ValueError, match="objective"):
        tiny_cfg(objective="distill")
    init = _init_model(tmp_path, photos)
    other = {**TINY, "base": 16}
    with pytest.raises(ValueError, match="model config"):
        train(tiny_cfg(model=other, init=init, objective="spd"), tmp_path / "x", progress=False,
              photos=photos)
    with pytest.raises(FileNotFoundError):
        train(tiny_cfg(init=str(tmp_path / "nope"), objective="spd"), tmp_path / "y",
              progress=False, photos=photos)


def test_spd_finetune_recipe_takes_the_model_and_data_from_init():
    from specdiff.training import spd_finetune_config

    cfg = spd_finetune_config("unet-base", steps=10)
    base = load("unet-base")
    assert cfg.objective == "spd" and cfg.init == "unet-base" and cfg.steps == 10
    assert cfg.model == json.loads(json.dumps(base.meta["train"]["model"]))
    assert (cfg.window, cfg.shift_size) == (base.meta["train"]["window"], base.meta["train"]["shift_size"])


def test_recipe_config_builds_what_the_cli_runs():
    from specdiff.training.config import default_config, recipe_config, spd_finetune_config

    assert recipe_config("spd", init="unet-base") == spd_finetune_config("unet-base").validate()
    cfg = recipe_config("flow", model="unet", model_config={"base": 8}, steps=3, sizes=(16, 32))
    base = default_config("unet")
    assert cfg.model == {**base.model, "base": 8} and cfg.steps == 3
    assert cfg.size_weights == (1.0, 1.0)  # sizes without weights: equal weights
    with pytest.raises(ValueError, match="need objective spd"):
        recipe_config("flow", spd_mix=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="does not apply to objective spd"):
        recipe_config("spd", model_config={"base": 8})
