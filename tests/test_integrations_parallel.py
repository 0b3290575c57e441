"""SPD under diffusers' Ulysses context parallelism: two CPU processes (torchrun, gloo) on a
tiny FLUX give the single-process SPD output, each rank sees half of every stage's tokens,
and a size whose coarse stage cannot be split is a ValueError naming sizes that work.

The worker replaces ``torch.accelerator.device_count`` (0 on a CPU-only torch, which
diffusers 0.42.1's ``enable_parallelism`` divides by) in its own process: a workaround of
the test, not something the library does.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("diffusers")

WORKER = r'''
import json, sys
import torch
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.accelerator.device_count = lambda: 1  # CPU-only torch: diffusers divides by it
from diffusers import ContextParallelConfig
from specdiff.integrations.diffusers import SpectralPipeline, stage_tokens
from specdiff.integrations.tiny import tiny_flux

out_dir = sys.argv[1]
pipe, kw = tiny_flux()
ref_pipe, _ = tiny_flux()  # the same weights, one process
pipe.transformer.set_attention_backend("native")
pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
tokens = []
pipe.transformer.transformer_blocks[0].register_forward_pre_hook(
    lambda m, a, k: tokens.append(int(k["hidden_states"].shape[1])), with_kwargs=True)
kw = dict(kw, height=256, width=256, num_inference_steps=6)
spd = dict(scales=(0.5, 1.0), delta=0.2)
sp, ref = SpectralPipeline.from_pipe(pipe), SpectralPipeline.from_pipe(ref_pipe)
plan = ref.get_plan(**kw, **spd)
par = sp(**kw, **spd, generator=torch.Generator().manual_seed(3), output_type="latent").images
one = ref(**kw, **spd, generator=torch.Generator().manual_seed(3), output_type="latent").images
err = ""
try:
    sp(**dict(kw, height=288, width=288), **spd, generator=torch.Generator().manual_seed(3))
except ValueError as e:
    err = str(e)
res = {"rel_l2": float((par - one).norm() / one.norm()),
       "tokens": tokens, "plan_tokens": [stage_tokens(st.grid, 2) for st in plan.stages],
       "plan_steps": [len(st.times) - 1 for st in plan.stages], "error": err}
json.dump(res, open(f"{out_dir}/rank{rank}.json", "w"))
dist.destroy_process_group()
'''


def test_ulysses_two_ranks_equal_one_process(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(29500 + os.getpid() % 1000)]
    proc = subprocess.run([*torchrun, str(worker), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["rel_l2"] <= 1e-6, res["rel_l2"]
        # each rank sees half of each stage's tokens, one call per step, stage by stage
        want = [n // 2 for n, k in zip(res["plan_tokens"], res["plan_steps"], strict=True)
                for _ in range(k)]
        assert res["tokens"] == want and res["plan_tokens"] == [64, 256]
        assert "2-way context parallelism" in res["error"] and "81 tokens" in res["error"]
        assert "256x256 or 320x320" in res["error"]
