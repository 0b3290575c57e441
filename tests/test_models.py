"""Embedded models: any-resolution forward, RoPE positions, checkpoint IO and its errors."""

import json
import math

import pytest
import torch

from specdiff import sample
from specdiff.models import (
    CHECKPOINT_DIR,
    DiT,
    DiTConfig,
    EmbeddedModel,
    UNet,
    UNetConfig,
    build,
    default_times,
    load,
    save_model,
)
from specdiff.models.config import config_from_dict, config_to_dict
from specdiff.models.dit import apply_rope, rope_angles
from specdiff.plans import full_plan, measure_eval_cost

TINY_UNET = UNetConfig(base=8, mults=(1, 2), time_dim=16)
TINY_UNET_ATTN = UNetConfig(base=8, mults=(1, 2), time_dim=16, mid_attention=2)
TINY_DIT = DiTConfig(patch=4, dim=32, depth=2, heads=2, time_dim=16)


def _randomise(net, seed=0):
    # zero-initialised output layers would make every model the identity; perturb them
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("cfg", [TINY_UNET, TINY_UNET_ATTN, TINY_DIT],
                         ids=["unet", "unet-attention", "dit"])
@pytest.mark.parametrize("hw", [(16, 16), (20, 28), (13, 9)])
def test_any_resolution_forward(cfg, hw):
    net = _randomise(build(cfg))
    x = torch.randn(2, 3, *hw)
    v = net(x, torch.tensor([0.3, 0.9]))
    assert v.shape == x.shape and torch.isfinite(v).all()
    # batch independence: sample 0 does not depend on sample 1
    v0 = net(x[:1], torch.tensor([0.3]))
    torch.testing.assert_close(v0, v[:1], rtol=1e-4, atol=1e-5)


def test_wrong_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="expects"):
        build(TINY_UNET)(torch.randn(1, 1, 16, 16), torch.tensor([0.5]))


def test_rope_positions_are_extent_normalised():
    # coarse token i sits exactly between fine tokens 2i and 2i+1: same image extent
    coarse = rope_angles(4, 4, 16, 32.0, 100.0).reshape(4, 4, -1)
    fine = rope_angles(8, 8, 16, 32.0, 100.0).reshape(8, 8, -1)
    mid = 0.25 * (fine[0::2, 0::2] + fine[1::2, 0::2] + fine[0::2, 1::2] + fine[1::2, 1::2])
    torch.testing.assert_close(coarse, mid)
    # first K pairs follow the row, last K the column
    assert torch.equal(coarse[0, 0, :4], coarse[0, 3, :4])
    assert torch.equal(coarse[0, 0, 4:], coarse[3, 0, 4:])


def test_rope_is_a_relative_rotation():
    ang = rope_angles(1, 6, 8, 6.0, 10.0)  # positions 0.5 .. 5.5 along x
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    qr = apply_rope(q.expand(1, 1, 6, 8), ang.cos(), ang.sin())[0, 0]
    kr = apply_rope(k.expand(1, 1, 6, 8), ang.cos(), ang.sin())[0, 0]
    torch.testing.assert_close(qr.norm(dim=-1), q.norm().expand(6))
    dots = qr @ kr.T
    torch.testing.assert_close(dots[0, 2], dots[3, 5], rtol=1e-5, atol=1e-5)


def test_dit_flops_include_attention():
    den = EmbeddedModel(build(TINY_DIT), TINY_DIT)
    fl = measure_eval_cost(den, [(16, 16), (32, 32)], 3)
    # linear layers scale 4x with the pixels; attention 16x: the total must exceed 4x
    assert fl[(32, 32)] / fl[(16, 16)] > 4.2


def test_config_roundtrip_and_errors():
    for cfg in (TINY_UNET, TINY_DIT):
        assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown model kind"):
        config_from_dict({"kind": "vae"})
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_dict({"kind": "unet", "widht": 3})
    with pytest.raises(ValueError, match="divisible"):
        config_from_dict({"kind": "dit", "dim": 30, "heads": 4})
    with pytest.raises(ValueError, match="heads must divide"):
        config_from_dict({"kind": "unet", "base": 8, "mults": [1, 2], "mid_attention": 3})


def test_unet_mid_attention_keeps_cost_proportional_to_pixels():
    from torch.utils.flop_counter import FlopCounterMode

    net = build(UNetConfig(base=8, mults=(1, 2, 2, 2), time_dim=16, mid_attention=2)).eval()
    assert net.mid_attn is not None
    flops = {}
    for s in (32, 64):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            net(torch.randn(1, 3, s, s), torch.tensor([0.5]))
        flops[s] = fc.get_total_flops()
    assert 3.9 < flops[64] / flops[32] < 4.2


@pytest.fixture
def saved(tmp_path):
    net = _randomise(UNet(TINY_UNET))
    path = save_model(tmp_path / "m.safetensors", net.state_dict(), TINY_UNET,
                      meta={"spectrum": {"64": [10.0, 2.0]}}, record={"command": "test"})
    return net, path


def test_save_load_roundtrip_is_exact(saved):
    net, path = saved
    den = load(path)
    assert isinstance(den, EmbeddedModel) and den.config == TINY_UNET
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        expect = x - t[:, None, None, None] * net(x, t)
    assert torch.equal(den(x, t), expect)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["record"]["command"] == "test" and len(side["sha256"]) == 64
    # spectrum at another size: A scales with the number of elements
    A, beta = den.spectrum(128)
    assert beta == 2.0 and math.isclose(A, 40.0)
    assert load(path.parent).config == TINY_UNET  # a folder resolves to its model file


def test_truncated_checkpoint_is_rejected(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load(path)
    path.write_bytes(data[:10])
    with pytest.raises(ValueError, match="truncated"):
        load(path)


def test_corrupt_checkpoint_fails_checksum(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load(path)


def test_mismatched_checkpoint_is_rejected(tmp_path):
    other = UNet(UNetConfig(base=16, mults=(1, 2), time_dim=16))
    path = save_model(tmp_path / "m.safetensors", other.state_dict(), TINY_UNET)
    with pytest.raises(ValueError, match="does not match its model config"):
        load(path)


def test_foreign_or_missing_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a specdiff model"):
        load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="no model named"):
        load(tmp_path / "nope.safetensors")


def test_one_stage_plan_equals_plain_solver_with_the_model(saved):
    _, path = saved
    den = load(path)
    times = default_times(4, (16, 16))
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = sample(den, full_plan(times, (16, 16)), noise=noise)
    x = noise.clone()
    for t, tn in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        x0 = den(x, torch.full((2,), t))
        x = x + (tn - t) * (x - x0) / t
    assert torch.equal(out, x)


def test_default_times_use_the_resolution_shift():
    t = default_times(2, (128, 128))
    assert math.isclose(float(t[1]), 2 * 0.5 / (1 + 0.5))  # shift 2 at the midpoint
    assert torch.equal(default_times(4, (32, 32)), default_times(4, (64, 64)))  # shift >= 1


@pytest.mark.parametrize("name", ["unet", "unet-base", "dit", "unet-slim"])
def test_shipped_checkpoints_load(name):
    path = CHECKPOINT_DIR / f"{name}.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not shipped in this checkout")
    assert path.stat().st_size < 25 * 2**20
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["record"]["command"].startswith("specdiff train")
    den = load(name)
    assert isinstance(den, EmbeddedModel) and isinstance(den.net, UNet | DiT)  # WGUNet is a UNet
    A, beta = den.spectrum(128)
    assert A > 0 and 1 < beta < 4
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(den(x, torch.tensor([0.5]))).all()


@pytest.mark.parametrize("name, objective, init", [("unet", "spd", "unet-base"),
                                                   ("unet-slim", "slim", "")])
def test_shipped_record_reproduces_its_training_config(name, objective, init):
    """The command in NAME.json, parsed by today's CLI, gives exactly the config it was trained
    with (unet: SPD fine-tuning of the shipped unet-base; unet-slim: slim distillation from
    the shipped unet)."""
    import shlex
    from unittest import mock

    import specdiff.training.loop as loop
    from specdiff.cli import main
    from specdiff.training.loop import TrainConfig

    side = json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())
    seen = {}

    def fake_train(cfg, out, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    argv = shlex.split(side["record"]["command"])[1:]
    with mock.patch.object(loop, "train", fake_train), pytest.raises(SystemExit):
        main(argv)
    assert seen["cfg"] == TrainConfig.from_dict(side["meta"]["train"])
    assert seen["cfg"].objective == objective and seen["cfg"].init == init
