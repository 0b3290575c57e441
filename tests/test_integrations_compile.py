"""SPD under ``torch.compile`` on a tiny FLUX: the graphs dynamo makes for a plan's stage
shapes, none recompiled on later calls of the same plan, no graph breaks, the same output
as without compiling.

dynamo's own counters are read (``torch._dynamo.utils.counters``); the ``eager`` backend
runs the captured graphs with the same kernels, so the outputs are compared exactly and no
C++ compiler is needed. The size is 192 px so that no stage's token count (9, 36, 144)
equals one of the tiny model's widths (16, 32, 64): dynamo would take such a size for the
width and specialise it (its "duck sizing"), which real models' widths (3072) never meet.
"""

import pytest
import torch

pytest.importorskip("diffusers")

from torch._dynamo.utils import counters  # noqa: E402

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import tiny_flux  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(sp, kw, seed, scales):
    return sp(**kw, generator=torch.Generator().manual_seed(seed), output_type="latent",
              scales=scales, delta=0.05).images


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


# graphs dynamo compiles for a plan with n stage shapes: dynamic=False one per shape; the
# default (dynamic=None) one static graph for the first shape, then on the second shape one
# with the sizes made symbolic (automatic dynamic shapes) that serves every later shape;
# dynamic=True one symbolic graph from the start
EXPECTED_GRAPHS = {False: lambda n: n, None: lambda n: min(n, 2), True: lambda n: 1}


@pytest.mark.parametrize("scales", [(0.5, 1.0), (0.25, 0.5, 1.0)], ids=["2 stages", "3 stages"])
@pytest.mark.parametrize("dynamic", [False, None, True], ids=["static", "default", "dynamic"])
def test_graphs_per_plan_no_recompiles_and_the_same_output(dynamic, scales, fresh_dynamo):
    pipe, kw = tiny_flux()
    kw = dict(kw, height=192, width=192, num_inference_steps=6)
    ref_pipe, _ = tiny_flux()  # same seed: the same weights, never compiled
    pipe.transformer.compile(backend="eager", dynamic=dynamic)
    sp = SpectralPipeline.from_pipe(pipe)
    plan = sp.get_plan(**kw, scales=scales, delta=0.05)
    n = len({st.grid for st in plan.stages})
    assert n == len(scales)

    first = _spd(sp, kw, 0, scales)
    assert counters["stats"]["unique_graphs"] == EXPECTED_GRAPHS[dynamic](n)
    assert not counters["graph_break"] and not counters["unimplemented"]
    after_first = dict(counters["stats"]), dict(counters["frames"])
    second = _spd(sp, kw, 1, scales)  # another seed, the same plan
    assert (dict(counters["stats"]), dict(counters["frames"])) == after_first  # nothing new

    ref = SpectralPipeline.from_pipe(ref_pipe)
    assert torch.equal(first, _spd(ref, kw, 0, scales))
    assert torch.equal(second, _spd(ref, kw, 1, scales))


def test_dynamic_shapes_serve_another_plan_without_recompiling(fresh_dynamo):
    pipe, kw = tiny_flux()
    kw = dict(kw, height=192, width=192, num_inference_steps=6)
    pipe.transformer.compile(backend="eager", dynamic=True)
    sp = SpectralPipeline.from_pipe(pipe)
    _spd(sp, kw, 0, (0.5, 1.0))
    _spd(sp, kw, 1, (0.25, 1.0))  # another coarse size: still the one graph
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
