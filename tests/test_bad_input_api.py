"""Bad input to the Python API fails at once with a ValueError that names the argument and
what it accepts (issue 16, "fail fast, fail clearly"): never a TypeError, AttributeError or
ZeroDivisionError from deep inside torch, and never a silent cast or a meaningless number.

One parametrized test per group. Every case is ``(call, phrase)``: ``call()`` must raise a
``ValueError`` whose message contains ``phrase`` (matched literally). The models are the
embedded UNet (shipped, no download) and a tiny random-weight FLUX pipeline; nothing is
sampled at a real size, so the module runs in seconds.
"""

import re

import pytest
import torch

from specdiff import models
from specdiff.analysis.metrics import SlicedWasserstein, frechet_distance, rapsd_distance, swd
from specdiff.denoisers import FlowDenoiser, VPDenoiser
from specdiff.plans import (
    MAX_STEPS,
    flow_times,
    flux_times,
    full_plan,
    spd_plan,
    spd_switch_times,
    wan_times,
)
from specdiff.sampling import sample
from specdiff.spectral import project_noise, pyramid_renoise, resize, upsample, x0_renoise

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _raises(call, phrase):
    with pytest.raises(ValueError, match=re.escape(phrase)):
        call()


# ---------------------------------------------------------------------------
# sample()
# ---------------------------------------------------------------------------

def _zero_denoiser(x, t, **cond):
    return torch.zeros_like(x)


_PLAN = full_plan(flow_times(2), (8, 8))


def _sample(**kw):
    kw.setdefault("generator", _gen())
    kw.setdefault("channels", 3)
    return lambda: sample(_zero_denoiser, _PLAN, **kw)


SAMPLE_CASES = [
    pytest.param(_sample(generator=0), "generator must be a torch.Generator", id="generator=0"),
    pytest.param(_sample(generator=[0, 1], batch_size=2), "generator must be a torch.Generator",
                 id="generator=[0,1]"),
    pytest.param(_sample(batch_size=-1), "batch_size must be a positive integer",
                 id="batch_size=-1"),
    pytest.param(_sample(batch_size=0), "batch_size must be a positive integer", id="batch_size=0"),
    pytest.param(_sample(batch_size=2.5), "batch_size must be a positive integer",
                 id="batch_size=2.5"),
    pytest.param(_sample(eta=-1, solver="stochastic"), "eta must be a number >= 0", id="eta=-1"),
    pytest.param(_sample(eta=float("nan"), solver="stochastic"), "eta must be a number >= 0",
                 id="eta=nan"),
    pytest.param(_sample(noise=torch.zeros(1, 3, 8, 8, dtype=torch.int64)),
                 "noise must be a float tensor", id="integer noise"),
    pytest.param(_sample(noise=torch.ones(1, 3, 8, 8, dtype=torch.bool)),
                 "noise must be a float tensor", id="bool noise"),
    pytest.param(_sample(channels=0), "channels must be a positive integer", id="channels=0"),
    pytest.param(_sample(channels=-3), "channels must be a positive integer", id="channels=-3"),
]


@pytest.mark.parametrize(("call", "phrase"), SAMPLE_CASES)
def test_sample_rejects(call, phrase):
    _raises(call, phrase)


# ---------------------------------------------------------------------------
# a denoiser called with a bad t (checked before the network runs)
# ---------------------------------------------------------------------------

class _TinyNet(torch.nn.Module):
    """A network as they are written: the time goes through an embedding, no checks."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.emb = torch.nn.Linear(1, 3)

    def forward(self, x, t):
        return self.conv(x) + self.emb(t[:, None])[:, :, None, None]


_DENOISERS = {}


def _denoiser(kind):
    if kind not in _DENOISERS:
        torch.manual_seed(0)
        if kind == "embedded":
            _DENOISERS[kind] = models.load("unet")
        elif kind == "flow":
            _DENOISERS[kind] = FlowDenoiser(_TinyNet())
        else:
            ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
            _DENOISERS[kind] = VPDenoiser(_TinyNet(), ac, "eps")
    return _DENOISERS[kind]


_BAD_T = [
    ("t of length 3", lambda b: torch.full((b + 1,), 0.5), "t must be a float or a (B,) tensor"),
    ("t='0.5'", lambda b: "0.5", "t must be a float or a (B,) float tensor"),
    ("t=None", lambda b: None, "t must be a float or a (B,) float tensor"),
    ("t=5", lambda b: 5, "t must lie in [0, 1]"),
    ("t=-0.5", lambda b: -0.5, "t must lie in [0, 1]"),
    ("t=nan", lambda b: torch.full((b,), float("nan")), "t must lie in [0, 1]"),
    ("t of shape (B,1)", lambda b: torch.full((b, 1), 0.5), "t must be a float or a (B,) tensor"),
    ("integer t", lambda b: torch.zeros(b, dtype=torch.int64),
     "t must be a float or a (B,) float tensor"),
]


def _call_with_t(kind, make_t):
    def call():
        x = torch.zeros(2, 3, 16, 16)
        _denoiser(kind)(x, make_t(x.shape[0]))
    return call


DENOISER_CASES = [
    pytest.param(_call_with_t(kind, make_t), phrase, id=f"{kind}: {name}")
    for kind in ("embedded", "flow", "vp")
    for name, make_t, phrase in _BAD_T
]


@pytest.mark.parametrize(("call", "phrase"), DENOISER_CASES)
def test_denoiser_rejects_bad_t(call, phrase):
    _raises(call, phrase)


def test_denoisers_accept_good_t():
    """The checks let every documented form of t through: float, (), (1,), (B,)."""
    x = torch.zeros(2, 3, 16, 16)
    for kind in ("embedded", "flow", "vp"):
        d = _denoiser(kind)
        for t in (0.5, torch.tensor(0.5), torch.tensor([0.5]), torch.full((2,), 0.5),
                  torch.full((2,), 0.5, dtype=torch.float64)):
            assert d(x, t).shape == x.shape


# ---------------------------------------------------------------------------
# plans
# ---------------------------------------------------------------------------

_SPEC = (1.0, 2.0)  # (A, beta) of a power law; any positive pair builds a plan


def _spd(scales=(0.5, 1.0), delta=0.05, grid=(64, 64)):
    return lambda: spd_plan(flow_times(8), grid, scales, spectrum=_SPEC, delta=delta)


def _switch(scales=(0.5, 1.0), delta=0.05, grid=(64, 64)):
    return lambda: spd_switch_times(grid, scales, _SPEC, delta)


PLAN_CASES = [
    pytest.param(_spd(scales=0.5), "scales must be a sequence of numbers", id="spd scales=0.5"),
    pytest.param(_spd(scales="0.5"), "scales must be a sequence of numbers",
                 id="spd scales='0.5'"),
    pytest.param(_spd(scales=("0.5", 1.0)), "each of scales must be a number",
                 id="spd scales=('0.5', 1)"),
    pytest.param(_spd(delta=None), "delta must be a number", id="spd delta=None"),
    pytest.param(_spd(delta="0.05"), "delta must be a number", id="spd delta='0.05'"),
    pytest.param(_spd(delta=1.5), "delta (noise-dominated tolerance) must lie in (0, 1)",
                 id="spd delta=1.5"),
    pytest.param(_spd(scales=(0.001, 1.0)), "use scales of at least 0.0312",
                 id="spd 1x1 stage"),
    pytest.param(_switch(scales=0.5), "scales must be a sequence of numbers",
                 id="switch scales=0.5"),
    pytest.param(_switch(scales="0.5"), "scales must be a sequence of numbers",
                 id="switch scales='0.5'"),
    pytest.param(_switch(delta=None), "delta must be a number", id="switch delta=None"),
    pytest.param(_switch(delta="0.05"), "delta must be a number", id="switch delta='0.05'"),
    pytest.param(_switch(scales=(0.001, 1.0)), "use scales of at least 0.0312",
                 id="switch 1x1 stage"),
    pytest.param(_switch(scales=(0.001, 0.5, 1.0), grid=(256, 256)),
                 "use scales of at least 0.00781", id="switch 1x1 stage of 3"),
    pytest.param(lambda: flow_times(0), "num_steps must be a positive whole number",
                 id="flow_times(0)"),
    pytest.param(lambda: flow_times(10**8), f"num_steps must be at most {MAX_STEPS}",
                 id="flow_times(10**8)"),
    pytest.param(lambda: flow_times(2.5), "num_steps must be a positive whole number",
                 id="flow_times(2.5)"),
    pytest.param(lambda: flux_times(0, 4096), "num_steps must be a positive whole number",
                 id="flux_times(0)"),
    pytest.param(lambda: flux_times(10**8, 4096), f"num_steps must be at most {MAX_STEPS}",
                 id="flux_times(10**8)"),
    pytest.param(lambda: wan_times(10**8), f"num_steps must be at most {MAX_STEPS}",
                 id="wan_times(10**8)"),
    pytest.param(lambda: flux_times(4, seq_len=0), "seq_len must be the positive packed token",
                 id="flux seq_len=0"),
    pytest.param(lambda: flux_times(4, seq_len=-5), "seq_len must be the positive packed token",
                 id="flux seq_len=-5"),
    pytest.param(lambda: flow_times(4, shift=0), "shift must be positive", id="flow shift=0"),
    pytest.param(lambda: flow_times(4, shift="3"), "shift must be a number",
                 id="flow shift='3'"),
]


@pytest.mark.parametrize(("call", "phrase"), PLAN_CASES)
def test_plans_reject(call, phrase):
    _raises(call, phrase)


def test_plans_accept_the_edges():
    """What the checks must not reject: MAX_STEPS, the smallest allowed scale, 16.0."""
    assert flow_times(MAX_STEPS).shape == (MAX_STEPS + 1,)
    # 0.04 of 64 rounds to a 3-pixel side: the smallest stage SPD can hand over from
    assert len(spd_switch_times((64, 64), (0.04, 1.0), _SPEC, 0.05)) == 1
    assert spd_plan(flow_times(8), (64, 64), [0.5, 1], spectrum=_SPEC, delta=[0.05]).steps == 8


# ---------------------------------------------------------------------------
# spectral transforms
# ---------------------------------------------------------------------------

def _x(dtype=torch.float32, size=8):
    return torch.randn(1, 1, size, size, generator=_gen()).to(dtype)


def _nan_noise():
    z = torch.randn(1, 1, 16, 16, generator=_gen())
    z[0, 0, 3, 3] = float("nan")
    return z


SPECTRAL_CASES = [
    pytest.param(lambda: resize(_x(torch.int64), 0.5, (16, 16), generator=_gen()),
                 "x must be a float tensor", id="resize int"),
    pytest.param(lambda: resize(_x(torch.bool), 0.5, (16, 16), generator=_gen()),
                 "x must be a float tensor", id="resize bool"),
    pytest.param(lambda: resize(_x(torch.complex64), 0.5, (16, 16), generator=_gen()),
                 "x must be a float tensor", id="resize complex"),
    pytest.param(lambda: resize(_x(), 0.5, (16.7, 16.7), generator=_gen()),
                 "shape must be whole numbers", id="resize size 16.7"),
    pytest.param(lambda: resize(_x(), 0.5, 16, generator=_gen()),
                 "shape must be a sequence of sizes", id="resize size 16"),
    pytest.param(lambda: resize(_x(), 1.5, (16, 16), generator=_gen()),
                 "t must lie in [0, 1]", id="resize t=1.5"),
    pytest.param(lambda: resize(_x(), -0.1, (16, 16), generator=_gen()),
                 "t must lie in [0, 1]", id="resize t=-0.1"),
    pytest.param(lambda: resize(_x(), float("nan"), (16, 16), generator=_gen()),
                 "t must lie in [0, 1]", id="resize t=nan"),
    pytest.param(lambda: resize(_x(), torch.tensor([float("nan")]), (16, 16), generator=_gen()),
                 "t must lie in [0, 1]", id="resize t=tensor nan"),
    pytest.param(lambda: resize(_x(), "0.5", (16, 16), generator=_gen()),
                 "t must be a float in [0, 1]", id="resize t='0.5'"),
    pytest.param(lambda: resize(_x(), torch.tensor([1]), (16, 16), generator=_gen()),
                 "t must be a float or a float tensor", id="resize integer t"),
    pytest.param(lambda: pyramid_renoise(_x(), 0.5, noise=_nan_noise()),
                 "noise contains NaN or inf", id="pyramid_renoise nan noise"),
    pytest.param(lambda: pyramid_renoise(_x(), 2.0, generator=_gen()),
                 "t must lie in [0, 1]", id="pyramid_renoise t=2"),
    pytest.param(lambda: pyramid_renoise(_x(), 0.5, noise=_x(torch.int64, 16)),
                 "noise must be a float tensor", id="pyramid_renoise int noise"),
    pytest.param(lambda: project_noise(_x(), (4.5, 4)), "shape must be whole numbers",
                 id="project_noise size 4.5"),
    pytest.param(lambda: project_noise(_x(), (0, 4)), "target grid sizes must be positive",
                 id="project_noise size 0"),
    pytest.param(lambda: project_noise(_x(), (4,)), "target grid (4,) has 1 axes",
                 id="project_noise rank"),
    pytest.param(lambda: project_noise(_x(), (16, 16)), "project_noise only shrinks",
                 id="project_noise grows"),
    pytest.param(lambda: project_noise(_x().numpy(), (4, 4)), "noise must be a torch.Tensor",
                 id="project_noise numpy"),
    pytest.param(lambda: upsample(_x(), (16.7, 16)), "shape must be whole numbers",
                 id="upsample size 16.7"),
    pytest.param(lambda: upsample(_x(), "16"), "shape must be a sequence of sizes",
                 id="upsample size '16'"),
    pytest.param(lambda: upsample(_x(), (0, 16)), "target grid sizes must be positive",
                 id="upsample size 0"),
    pytest.param(lambda: upsample(_x(), (-4, 16), mode="dct"), "target grid sizes must be positive",
                 id="upsample dct size -4"),
    pytest.param(lambda: upsample(_x(), (16,)), "give one size per grid axis",
                 id="upsample rank"),
    pytest.param(lambda: upsample(_x(torch.int64), (16, 16)), "x must be a float tensor",
                 id="upsample int"),
    pytest.param(lambda: x0_renoise(_x(), 1.5, (16, 16), generator=_gen()),
                 "t must lie in [0, 1]", id="x0_renoise t=1.5"),
]


@pytest.mark.parametrize(("call", "phrase"), SPECTRAL_CASES)
def test_spectral_rejects(call, phrase):
    _raises(call, phrase)


def test_spectral_accepts_whole_float_sizes():
    """16.0 is a size (what ``grid * 2.0`` gives); only fractional sizes are refused."""
    a, _ = resize(_x(), 0.5, (16.0, 16.0), generator=_gen())
    b, _ = resize(_x(), 0.5, (16, 16), generator=_gen())
    assert torch.equal(a, b)
    assert upsample(_x(), (16.0, 16)).shape == (1, 1, 16, 16)
    assert project_noise(_x(), (4.0, 4.0)).shape == (1, 1, 4, 4)


# ---------------------------------------------------------------------------
# EmbeddedModel.spectrum
# ---------------------------------------------------------------------------

def _spectrum(size):
    return lambda: _denoiser("embedded").spectrum(size)


SPECTRUM_CASES = [
    pytest.param(_spectrum(0), "size must be a positive image side", id="spectrum(0)"),
    pytest.param(_spectrum(-64), "size must be a positive image side", id="spectrum(-64)"),
    pytest.param(_spectrum(16.7), "size must be whole numbers", id="spectrum(16.7)"),
    pytest.param(_spectrum("128"), "size must be whole numbers", id="spectrum('128')"),
]


@pytest.mark.parametrize(("call", "phrase"), SPECTRUM_CASES)
def test_model_spectrum_rejects(call, phrase):
    _raises(call, phrase)


# ---------------------------------------------------------------------------
# SpectralPipeline: rejected before a prompt is encoded or the transformer runs
# ---------------------------------------------------------------------------

class RanTooFar(Exception):
    """Raised by the pipeline's encode_prompt / transformer: the check came too late."""


_PIPES = {}


def _pipeline():
    if "flux" not in _PIPES:
        pytest.importorskip("diffusers")
        from specdiff.integrations.diffusers import SpectralPipeline
        from specdiff.integrations.tiny import tiny_flux

        pipe, kw = tiny_flux()

        def too_far(*a, **k):
            raise RanTooFar("the bad argument reached the model")

        pipe.encode_prompt = too_far
        pipe.transformer.forward = too_far
        _PIPES["flux"] = SpectralPipeline.from_pipe(pipe), kw
    return _PIPES["flux"]


def _sp(**over):
    def call():
        sp, kw = _pipeline()
        kw = dict(kw, generator=_gen(), output_type="latent")
        spd = {k: over.pop(k) for k in ("scales", "delta") if k in over}
        sp(**dict(kw, **over), **spd)
    return call


PIPELINE_CASES = [
    pytest.param(_sp(num_inference_steps=0), "num_inference_steps must be a positive whole",
                 id="num_inference_steps=0"),
    pytest.param(_sp(num_inference_steps=10**8), f"num_inference_steps must be at most {MAX_STEPS}",
                 id="num_inference_steps=10**8"),
    pytest.param(_sp(scales=0.5), "scales must be a sequence of numbers", id="scales=0.5"),
    pytest.param(_sp(scales="0.5"), "scales must be a sequence of numbers", id="scales='0.5'"),
    pytest.param(_sp(delta=None), "delta must be a number", id="delta=None"),
    pytest.param(_sp(generator=0), "generator must be a torch.Generator", id="generator=0"),
    pytest.param(_sp(num_images_per_prompt=0), "num_images_per_prompt must be a positive integer",
                 id="num_images_per_prompt=0"),
]


@pytest.mark.parametrize(("call", "phrase"), PIPELINE_CASES)
def test_spectral_pipeline_rejects_before_the_model(call, phrase):
    _raises(call, phrase)


def test_spectral_pipeline_patch_catches_a_late_failure():
    """The patched pipeline does stop a call that gets as far as the model, so the cases above
    prove the checks ran first."""
    sp, kw = _pipeline()
    with pytest.raises(RanTooFar):
        sp(**kw, generator=_gen(), output_type="latent", spectrum="flux")


# ---------------------------------------------------------------------------
# metrics: distances between image sets need two samples per set
# ---------------------------------------------------------------------------

def _imgs(n):
    return torch.rand(n, 3, 32, 32, generator=_gen(n)) * 2 - 1


def _features(x):
    return x.flatten(1)[:, :8]


METRIC_CASES = [
    pytest.param(lambda: swd(_imgs(1), _imgs(8)), "a has 1 sample(s)", id="swd a of 1"),
    pytest.param(lambda: swd(_imgs(8), _imgs(1)), "b has 1 sample(s)", id="swd b of 1"),
    pytest.param(lambda: SlicedWasserstein(_imgs(1)), "reference has 1 sample(s)",
                 id="SlicedWasserstein reference of 1"),
    pytest.param(lambda: SlicedWasserstein(_imgs(8), projections=8)(_imgs(1)),
                 "images has 1 sample(s)", id="SlicedWasserstein images of 1"),
    pytest.param(lambda: rapsd_distance(_imgs(1), _imgs(8)), "a has 1 sample(s)",
                 id="rapsd_distance a of 1"),
    pytest.param(lambda: frechet_distance(_imgs(1), _imgs(8), extractor=_features),
                 "a has 1 sample(s)", id="frechet_distance a of 1"),
    pytest.param(lambda: frechet_distance(_imgs(8), _imgs(1), extractor=_features),
                 "b has 1 sample(s)", id="frechet_distance b of 1"),
]


@pytest.mark.parametrize(("call", "phrase"), METRIC_CASES)
def test_metrics_reject_one_sample_sets(call, phrase):
    _raises(call, phrase)


#: every group, for counting and for running the cases outside pytest
ALL_CASES = {
    "sample": SAMPLE_CASES, "denoiser t": DENOISER_CASES, "plans": PLAN_CASES,
    "spectral": SPECTRAL_CASES, "model.spectrum": SPECTRUM_CASES, "pipeline": PIPELINE_CASES,
    "metrics": METRIC_CASES,
}
