"""Partly trained models: a LoRA or an added module saves only what was trained, records its
base by name and SHA-256, reloads exactly, and refuses another base."""

import hashlib
import json

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open

from specdiff.models import build, load, save_model
from specdiff.models.config import config_from_dict
from specdiff.training.partial import (
    base_sha256,
    load_partial,
    read_partial,
    register_module,
    save_lora,
    save_module,
)

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = {"kind": "unet", "base": 8, "mults": [1, 2], "time_dim": 16}
DIT = {"kind": "dit", "patch": 4, "dim": 16, "depth": 2, "heads": 2, "time_dim": 16}
# (model config, LoRA targets, how many layers of the tiny net they hit: counted by hand from
# the architectures: UNet 8 residual blocks x (conv1, conv2); DiT 2 blocks x (qkv, proj))
CASES = {"unet": (UNET, ["conv1", "conv2"], 16), "dit": (DIT, ["qkv", "proj"], 4)}
SCHEDULE = {"schedule": {"scales": [0.5, 1.0], "delta": 0.05, "steps": 8}}


def _base(tmp_path, config, seed=0, name="base"):
    torch.manual_seed(seed)
    net = build(config)
    for p in net.parameters():  # zero-initialised output layers would hide any adapter
        p.data.normal_(0, 0.2)
    return str(save_model(tmp_path / f"{name}.safetensors", net.state_dict(), config_from_dict(config)))


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _io(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0.3, 0.7])


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def _lora_net(base, targets):
    net = load(base).net
    torch.manual_seed(1)
    # random A and B (peft's default B = 0 would make the adapter a no-op)
    return inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=targets,
                                              init_lora_weights=False), net)


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_lora_saves_only_the_adapter_and_reloads_exactly(kind, tmp_path):
    config, targets, layers = CASES[kind]
    base = _base(tmp_path, config)
    net = _lora_net(base, targets)
    path = save_lora(tmp_path / "lora.safetensors", net, base=base, meta=SCHEDULE)
    keys = _keys(path)
    assert len(keys) == 2 * layers and all(".lora_A." in k or ".lora_B." in k for k in keys)
    _, info = read_partial(path)
    assert info["kind"] == "lora" and info["base"] == base and info["base_sha256"] == _sha(base)
    assert sorted(info["config"]["target_modules"]) == sorted(targets) and info["config"]["r"] == 2
    x, t = _io()
    part = load_partial(path)
    with torch.no_grad():
        want = net.eval()(x, t)
        assert torch.equal(part.net(x, t), want)
        assert not torch.allclose(load(base).net(x, t), want, atol=1e-3)  # the adapter matters
    assert part.meta == SCHEDULE and part.kind == "lora"
    # the Denoiser view: x0_hat = x - t v on the LoRA network
    torch.testing.assert_close(part.model(x, t), x - t[:, None, None, None] * want)
    # base frozen, adapter trainable: ready to train further
    assert all(p.requires_grad == (".lora_" in n) for n, p in part.net.named_parameters())


def test_a_partial_model_refuses_another_base(tmp_path):
    base = _base(tmp_path, UNET)
    other = _base(tmp_path, UNET, seed=5, name="other")
    path = save_lora(tmp_path / "lora.safetensors", _lora_net(base, ["conv1"]), base=base)
    with pytest.raises(ValueError) as e:
        load_partial(path, base=other)
    assert _sha(base) in str(e.value) and _sha(other) in str(e.value)
    assert "pass base=" in str(e.value)
    # the recorded base moved and was replaced by another file under the same name
    (tmp_path / "base.safetensors").write_bytes((tmp_path / "other.safetensors").read_bytes())
    (tmp_path / "base.json").unlink()
    with pytest.raises(ValueError, match=_sha(other)):
        load_partial(path)


def test_saving_refuses_a_base_that_was_trained_too(tmp_path):
    base = _base(tmp_path, UNET)
    net = _lora_net(base, ["conv1"])
    with torch.no_grad():
        net.stem.weight.add_(0.01)
    with pytest.raises(ValueError, match="differs from the checkpoint .* at stem.weight"):
        save_lora(tmp_path / "x.safetensors", net, base=base)
    with pytest.raises(ValueError, match="no peft LoRA adapter"):
        save_lora(tmp_path / "x.safetensors", load(base).net, base=base)
    assert not (tmp_path / "x.safetensors").exists()


class Refiner(torch.nn.Module):
    """An added module on a frozen base: a time-gated convolution on the base's output."""

    def __init__(self, base, width=4):
        super().__init__()
        self.base = base
        self.head = torch.nn.Sequential(torch.nn.Conv2d(6, width, 3, padding=1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(width, 3, 3, padding=1))
        self.gate = torch.nn.Linear(1, 3)

    def forward(self, x, t):
        v = self.base(x, t)
        return v + self.head(torch.cat([x, v], 1)) * self.gate(t[:, None])[:, :, None, None]


register_module("test-refiner")(Refiner)


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_added_module_saves_only_itself_and_reloads_exactly(kind, tmp_path):
    config = CASES[kind][0]
    base = _base(tmp_path, config)
    torch.manual_seed(2)
    mod = Refiner(load(base).net.requires_grad_(False), width=5)
    path = save_module(tmp_path / "refiner.safetensors", mod, base=base, builder="test-refiner",
                       config={"width": 5}, meta=SCHEDULE)
    assert _keys(path) == {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias",
                           "gate.weight", "gate.bias"}
    part = load_partial(path)
    x, t = _io()
    with torch.no_grad():
        assert torch.equal(part.net(x, t), mod(x, t))
    assert part.kind == "module" and part.config == {"width": 5} and part.meta == SCHEDULE
    assert not any(p.requires_grad for p in part.net.base.parameters())
    assert all(p.requires_grad for p in part.net.head.parameters())
    other = _base(tmp_path, config, seed=9, name="other")
    with pytest.raises(ValueError, match=_sha(other)):
        load_partial(path, base=other)


def test_added_module_needs_its_builder_and_a_base_attribute(tmp_path):
    base = _base(tmp_path, UNET)
    mod = Refiner(load(base).net)
    path = save_module(tmp_path / "r.safetensors", mod, base=base, builder="not-registered")
    with pytest.raises(ValueError, match="needs the module builder 'not-registered'"):
        load_partial(path)
    assert torch.equal(load_partial(path, builder=Refiner).net.gate.weight, mod.gate.weight)
    # a builder that builds another shape: the file does not fit it
    with pytest.raises(ValueError, match="does not fit"):
        load_partial(path, builder=lambda net: _Wider(net))
    with pytest.raises(ValueError, match="attribute `base`"):
        save_module(tmp_path / "s.safetensors", torch.nn.Linear(2, 2), base=base, builder="x")


class _Wider(Refiner):
    def __init__(self, base):
        super().__init__(base)
        self.extra = torch.nn.Linear(2, 2)


def test_whole_models_are_not_partial_files(tmp_path):
    base = _base(tmp_path, UNET)
    with pytest.raises(ValueError, match="not a specdiff partial model"):
        read_partial(base)
    with pytest.raises(FileNotFoundError):
        read_partial(tmp_path / "missing.safetensors")


def test_shipped_bases_are_recorded_by_name_and_their_file_hash():
    from specdiff.models import CHECKPOINT_DIR

    side = json.loads((CHECKPOINT_DIR / "unet.json").read_text())
    assert base_sha256("unet") == side["sha256"]
