"""The training engine: objectives as plug-ins, bit-exact resume for one- and two-model
objectives, frozen models, partly trained (LoRA) models, per-term loss history."""

import json
from dataclasses import dataclass, replace

import pytest
import torch
from safetensors import safe_open

from specdiff.models import build, load
from specdiff.training import TrainConfig, load_photos, train
from specdiff.training.batches import draw_flow_step, step_generator
from specdiff.training.objectives import (
    REGISTRY,
    Frozen,
    Objective,
    Trained,
    objective_class,
    objective_names,
    register,
)
from specdiff.training.objectives.flow import TERM

TINY = {"kind": "unet", "base": 8, "mults": [1, 2], "time_dim": 16}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw):
    base = dict(model=TINY, steps=4, sizes=(16,), size_weights=(1.0,), pixels=4 * 16 * 16,
                warmup=2, checkpoint_every=2, log_every=1, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base).validate()


@pytest.fixture(scope="module")
def photos():
    return load_photos("skimage", "train")


def _state(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def _straight_and_resumed(cfg, tmp_path, photos, half):
    """Train ``cfg`` in one call (``a``) and in two (``b``, stopped after ``half`` steps);
    returns both train states and results."""
    kw = dict(progress=False, photos=photos, spectrum_sizes=(16,))
    ra = train(cfg, tmp_path / "a", **kw)
    r1 = train(cfg, tmp_path / "b", stop_after=half, **kw)
    assert r1.step == half and r1.model_path is None
    rb = train(cfg, tmp_path / "b", **kw)
    return (_state(tmp_path / "a" / "train_state.safetensors"),
            _state(tmp_path / "b" / "train_state.safetensors"), ra, rb)


def _assert_same_states(sa, sb):
    (ta, ma), (tb, mb) = sa, sb
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ha, hb = json.loads(ma["history"]), json.loads(mb["history"])
    assert [[h[0], h[1], h[3]] for h in ha] == [[h[0], h[1], h[3]] for h in hb]


# --- flow and spd through the engine ----------------------------------------------------


@pytest.fixture(scope="module")
def init_model(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("init")
    train(tiny_cfg(steps=3, sizes=(16, 32), size_weights=(1.0, 1.0)), out, progress=False,
          photos=photos, spectrum_sizes=(16,))
    return str(out)


@pytest.mark.parametrize("objective", ["flow", "spd"])
def test_flow_and_spd_resume_bit_exactly(objective, tmp_path, photos, init_model):
    extra = {} if objective == "flow" else dict(init=init_model, objective="spd", sizes=(32,),
                                                pixels=4 * 32 * 32, spd_mix=(0.5, 0.25, 0.25))
    cfg = tiny_cfg(**extra)
    sa, sb, ra, rb = _straight_and_resumed(cfg, tmp_path, photos, half=2)
    _assert_same_states(sa, sb)
    # one trained model "net" in the single-model layout; spd's frozen teacher saves nothing
    names = set(build(TINY).state_dict())
    tensors, md = sa
    assert {k[len("model."):] for k in tensors if k.startswith("model.")} == names
    assert {k[len("ema."):] for k in tensors if k.startswith("ema.")} == names
    assert all(k.split(".")[0] in ("model", "ema", "optim") for k in tensors)
    assert json.loads(md["models"]) == ["net"]
    # one loss term per step, the history's loss column is that term
    assert [h[0] for h in ra.history] == [1, 2, 3, 4]
    assert all(list(h[3]) == [TERM] and h[3][TERM] == h[1] for h in rb.history)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(load(tmp_path / "a")(x, torch.tensor([0.4])),
                       load(tmp_path / "b")(x, torch.tensor([0.4])))


def test_the_spd_teacher_stays_the_init_model(tmp_path, photos, init_model):
    seen = []
    spd = objective_class("spd")

    class Watch(spd):
        def batch(self, nets, photos, step, process, update):
            seen.append(nets["teacher"])
            return super().batch(nets, photos, step, process, update)

    register("spd-watch")(Watch)
    try:
        cfg = tiny_cfg(init=init_model, objective="spd-watch", sizes=(32,), pixels=4 * 32 * 32,
                       steps=2)
        train(cfg, tmp_path, progress=False, photos=photos, spectrum_sizes=(16,))
    finally:
        REGISTRY.pop("spd-watch")
    teacher = seen[-1]
    ref = load(init_model).net.state_dict()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, ref[k]) for k, v in teacher.state_dict().items())
    # ... while the student moved away from it
    student = load(tmp_path).net.state_dict()
    assert not all(torch.equal(v, ref[k]) for k, v in student.items())


# --- a two-model objective: generator + critic with an update ratio -------------------


@dataclass(frozen=True)
class GanOptions:
    critic_updates: int = 3  # critic updates per generator update
    critic_lr: float = 2e-3


class _Critic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x).mean(dim=(1, 2, 3))


class ToyGan(Objective):
    """Generator ``net`` (flow regression + adversarial term), critic (LSGAN) seeing the image
    and a frozen feature map of it; critic first, ``critic_updates`` times per step."""

    Options = GanOptions
    runs: list = []

    def models(self):
        net = build(self.cfg.model)
        critic = _Critic()
        features = torch.nn.Conv2d(3, 1, 3, padding=1)
        self.features_at_start = {k: v.clone() for k, v in features.state_dict().items()}
        self.nets = {"critic": critic, "features": features, "net": net}
        ToyGan.runs.append(self)
        return {"critic": Trained(critic, lr=self.options.critic_lr,
                                  updates=self.options.critic_updates, betas=(0.0, 0.99), ema=False),
                "features": Frozen(features),
                "net": Trained(net)}

    def batch(self, nets, photos, step, process, update):
        stream = step * 16 + 2 * update.index + (update.model == "critic")
        _, x0, t, eps = draw_flow_step(self.cfg, photos, step_generator(self.cfg.seed, stream, process))
        tb = t[:, None, None, None]
        return (1 - tb) * x0 + tb * eps, t, x0, eps

    def _score(self, nets, x):
        return nets["critic"](torch.cat([x, nets["features"](x)], dim=1))

    def _generator_score(self, nets, x):
        return self._score(nets, x)

    def loss(self, nets, batch, update):
        xt, t, x0, eps = batch
        tb = t[:, None, None, None]
        if update.model == "critic":
            with torch.no_grad():
                fake = xt - tb * nets["net"](xt, t)
            return {"critic": ((self._score(nets, x0) - 1) ** 2).mean()
                    + (self._score(nets, fake) ** 2).mean()}
        v = nets["net"](xt, t)
        return {"flow": torch.nn.functional.mse_loss(v, eps - x0),
                "adversarial": 0.1 * ((self._generator_score(nets, xt - tb * v) - 1) ** 2).mean()}


@pytest.fixture
def toy_gan():
    register("toy-gan")(ToyGan)
    ToyGan.runs.clear()
    yield
    REGISTRY.pop("toy-gan")


def test_two_model_objective_resumes_bit_exactly(tmp_path, photos, toy_gan):
    cfg = tiny_cfg(objective="toy-gan", steps=4, options={"critic_updates": 3})
    sa, sb, ra, rb = _straight_and_resumed(cfg, tmp_path, photos, half=2)
    _assert_same_states(sa, sb)
    tensors, md = sa
    # both trained models checkpointed (the critic under its prefix, without EMA), the frozen
    # feature map not at all
    assert json.loads(md["models"]) == ["critic", "net"]
    critic_keys = set(_Critic().state_dict())
    assert {k[len("critic/model."):] for k in tensors if k.startswith("critic/model.")} == critic_keys
    assert not any(k.startswith(("critic/ema.", "features")) for k in tensors)
    assert {k[len("ema."):] for k in tensors if k.startswith("ema.")} == set(build(TINY).state_dict())
    # the update ratio: 3 critic updates per generator update, 4 steps
    assert int(tensors["critic/optim.0.step"]) == 12 and int(tensors["optim.0.step"]) == 4
    # each model its own learning rate on the run's schedule: the last step (k = 3 of 4,
    # warm-up 2) is half-way down the cosine, 0.1 + 0.9 / 2 = 0.55 of the peak
    (cg,) = json.loads(md["critic/param_groups"])
    (ng,) = json.loads(md["param_groups"])
    assert cg["lr"] == pytest.approx(0.55 * 2e-3) and ng["lr"] == pytest.approx(0.55 * 1e-3)
    assert cg["betas"] == [0.0, 0.99]
    # the loss terms of both models, logged per step; the loss column is their sum
    assert set(rb.history[-1][3]) == {"critic", "flow", "adversarial"}
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    # the frozen model: eval mode, no gradients, weights untouched
    run = ToyGan.runs[-1]
    feats = run.nets["features"]
    assert not feats.training and not any(p.requires_grad for p in feats.parameters())
    assert all(torch.equal(v, run.features_at_start[k]) for k, v in feats.state_dict().items())
    # the generator's EMA is the exported model
    assert torch.equal(load(tmp_path / "a").net.state_dict()["out.weight"], tensors["ema.out.weight"])


class DetachedCriticGan(ToyGan):
    """ToyGan whose generator update sees the critic through detached parameters: the same
    numbers for the generator, no gradient into the critic at all."""

    def _generator_score(self, nets, x):
        critic = nets["critic"]
        params = {k: v.detach() for k, v in critic.named_parameters()}
        return torch.func.functional_call(critic, params, (torch.cat([x, nets["features"](x)], 1),))


def test_the_generator_update_leaves_no_gradient_in_the_critic(tmp_path, photos, toy_gan):
    """The generator's adversarial loss back-propagates into the critic's parameters too; the
    engine must clear that before the critic's next update. A run where those gradients never
    exist must end bit-identical."""
    register("toy-gan-detached")(DetachedCriticGan)
    try:
        kw = dict(progress=False, photos=photos, spectrum_sizes=(16,))
        cfg = tiny_cfg(objective="toy-gan", steps=3, options={"critic_updates": 1})
        train(cfg, tmp_path / "a", **kw)
        train(replace(cfg, objective="toy-gan-detached"), tmp_path / "b", **kw)
    finally:
        REGISTRY.pop("toy-gan-detached")
    ta, _ = _state(tmp_path / "a" / "train_state.safetensors")
    tb, _ = _state(tmp_path / "b" / "train_state.safetensors")
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


# --- a partly trained model: LoRA on a frozen base ------------------------------------


class ToyLora(Objective):
    """Flow regression of a LoRA on the frozen ``cfg.init`` network; exports the LoRA only."""

    exports = None
    runs: list = []

    def models(self):
        from peft import LoraConfig, inject_adapter_in_model

        from specdiff.training.objectives import init_weights

        net = build(self.cfg.model)
        net.load_state_dict(init_weights(self.cfg)[0])
        net = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["conv1", "conv2"]),
                                      net)
        ToyLora.runs.append(self)
        return {"net": Trained(net)}

    def batch(self, nets, photos, step, process, update):
        from specdiff.training.objectives.flow import make_batch

        return make_batch(self.cfg, photos, step, process)

    def loss(self, nets, batch, update):
        x, t, v = batch
        return {"mse": torch.nn.functional.mse_loss(nets["net"](x, t), v)}

    def export(self, weights, out, history, *, photos, command, spectrum_sizes=(64, 128)):
        from specdiff.training.partial import save_lora

        self.exported = weights["net"]
        return save_lora(out / "lora.safetensors", weights["net"], base=self.cfg.init,
                         meta={"schedule": {"scales": [0.5, 1.0], "delta": 0.05}})


def test_lora_objective_trains_saves_and_resumes_only_the_adapter(tmp_path, photos, init_model):
    from specdiff.training.partial import load_partial

    register("toy-lora")(ToyLora)
    ToyLora.runs.clear()
    try:
        cfg = tiny_cfg(objective="toy-lora", init=init_model, steps=4, lr=1e-2)
        sa, sb, ra, rb = _straight_and_resumed(cfg, tmp_path, photos, half=2)
    finally:
        REGISTRY.pop("toy-lora")
    _assert_same_states(sa, sb)
    tensors, _ = sa
    model_keys = [k for k in tensors if k.startswith("model.")]
    # 2 LoRA matrices on each of the 2 convs of each of the 8 residual blocks of the tiny UNet
    assert len(model_keys) == 2 * 2 * 8 and all(".lora_" in k for k in model_keys)
    assert len([k for k in tensors if k.startswith("optim.")]) == 3 * len(model_keys)
    assert ra.model_path == tmp_path / "a" / "lora.safetensors"
    assert not (tmp_path / "a" / "model.safetensors").exists()
    # the exported LoRA (the EMA adapter) on the recorded base reproduces the EMA network
    part = load_partial(ra.model_path)
    ema = ToyLora.runs[0].exported
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.equal(part.net(x, t), ema(x, t))
        assert not torch.equal(part.net(x, t), load(init_model).net(x, t))
    assert part.meta == {"schedule": {"scales": [0.5, 1.0], "delta": 0.05}}


# --- registry and config ----------------------------------------------------------------


def test_registry_finds_the_objective_files_and_rejects_unknown_names():
    assert {"flow", "spd"} <= set(objective_names())
    assert objective_class("spd").name == "spd"
    with pytest.raises(ValueError, match=r"objective must be one of .*'flow', .*'spd'.*got 'no-such'"):
        tiny_cfg(objective="no-such")
    with pytest.raises(ValueError, match="already registered"):
        register("flow")(ToyGan)


def test_options_are_the_objectives_to_check(toy_gan):
    with pytest.raises(ValueError, match="takes no options"):
        tiny_cfg(options={"critic_updates": 2})
    with pytest.raises(ValueError, match=r"no option\(s\) \['ratio'\]"):
        tiny_cfg(objective="toy-gan", options={"ratio": 2})
    cfg = tiny_cfg(objective="toy-gan", options={"critic_updates": 2})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.to_dict()["options"] == {"critic_updates": 2}


def test_runs_without_options_record_the_fields_they_always_did():
    """The shipped UNet's record (written before ``options`` existed) has exactly the keys a
    flow or spd run writes today."""
    from specdiff.models import CHECKPOINT_DIR

    recorded = json.loads((CHECKPOINT_DIR / "unet.json").read_text())["meta"]["train"]
    assert set(tiny_cfg().to_dict()) == set(recorded)


def test_bad_model_specs_are_clear_errors(tmp_path, photos):
    class NoTrained(Objective):
        def models(self):
            return {"net": Frozen(build(self.cfg.model))}

    class AllFrozen(Objective):
        def models(self):
            return {"net": Trained(build(self.cfg.model).requires_grad_(False))}

    class BadName(Objective):
        def models(self):
            return {"my.net": Trained(build(self.cfg.model))}

    for name, cls, msg in [("t-none", NoTrained, "no Trained model"),
                           ("t-frozen", AllFrozen, "mark it Frozen"),
                           ("t-name", BadName, "must be an identifier")]:
        register(name)(cls)
        try:
            with pytest.raises(ValueError, match=msg):
                train(tiny_cfg(objective=name, steps=1), tmp_path / name, progress=False,
                      photos=photos)
        finally:
            REGISTRY.pop(name)


def test_resume_refuses_a_state_of_other_settings(tmp_path, photos, toy_gan):
    cfg = tiny_cfg(objective="toy-gan", steps=2)
    train(cfg, tmp_path, progress=False, photos=photos, stop_after=1)
    with pytest.raises(ValueError, match="other settings \\(options\\)"):
        train(replace(cfg, options={"critic_updates": 2}), tmp_path, progress=False, photos=photos)
