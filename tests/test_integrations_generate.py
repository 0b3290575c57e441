"""``specdiff.integrations.generate``: the prompt, seed, shard and resume policies of
``specdiff generate`` as library functions, and one in-process run on a tiny pipeline."""

import json
import os

import numpy as np
import pytest
import torch

from specdiff.integrations.generate import (
    SAMPLE_SEED_STRIDE,
    GenerateConfig,
    OutputFolder,
    dist_env,
    prompt_seed,
    read_prompts,
    resolve_device,
    sample_seeds,
    shard,
)

# The tiny models are ~100x faster single-threaded on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


# --- prompts ---------------------------------------------------------------------------


def test_read_prompts_text_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n# a comment\n  a dog  \n#\n")
    assert read_prompts(path=str(txt)) == [{"prompt": "a cat"}, {"prompt": "a dog"}]
    js = tmp_path / "p.jsonl"
    js.write_text(json.dumps({"prompt": "# not a comment", "seed": 4}) + "\n\n"
                  + json.dumps({"prompt": "b", "negative_prompt": "blur"}) + "\n")
    assert read_prompts(path=str(js)) == [{"prompt": "# not a comment", "seed": 4},
                                          {"prompt": "b", "negative_prompt": "blur"}]
    assert read_prompts(["x", "y"]) == [{"prompt": "x"}, {"prompt": "y"}]


def test_read_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        read_prompts(path=str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        read_prompts(path=str(bad))
    bad.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match=r":1: each record needs a string 'prompt'"):
        read_prompts(path=str(bad))
    bad.write_text('{"prompt": "a", "seed": "7"}\n')
    with pytest.raises(ValueError, match="'seed' must be an integer"):
        read_prompts(path=str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(path=str(empty))
    with pytest.raises(ValueError, match="either prompts"):
        read_prompts(["a"], path=str(empty))


# --- seeds and shards ------------------------------------------------------------------


def test_seed_policy():
    # prompt i: base + i; a record's own seed wins (also seed 0)
    assert [prompt_seed({"prompt": "p"}, i, 10) for i in range(4)] == [10, 11, 12, 13]
    assert prompt_seed({"prompt": "p", "seed": 0}, 5, 10) == 0
    # sample j: seed + 1000003 j (the stride the records of earlier releases hold)
    assert SAMPLE_SEED_STRIDE == 1000003
    assert sample_seeds(7, 3) == [7, 1000010, 2000013]
    assert sample_seeds(7, 1) == [7]
    with pytest.raises(ValueError, match="at least one sample"):
        sample_seeds(7, 0)


def test_shard_covers_every_index_once_and_seeds_do_not_depend_on_it():
    recs = [{"prompt": str(i)} for i in range(11)]
    one = {i: prompt_seed(recs[i], i, 3) for i in shard(len(recs), 0, 1)}
    for world in range(1, 5):
        parts = [shard(len(recs), r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(len(recs)))
        assert all(i % world == r for r, p in enumerate(parts) for i in p)
        seeds = {i: prompt_seed(recs[i], i, 3) for p in parts for i in p}
        assert seeds == one
    assert shard(0, 1, 3) == []
    with pytest.raises(ValueError, match="rank must be"):
        shard(5, 2, 2)


def test_dist_env_and_device():
    assert dist_env({}) == (0, 1, 0)
    assert dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert resolve_device("auto", 1, 0, cuda_available=False) == "cpu"
    assert resolve_device("auto", 4, 2, cuda_available=True) == "cuda:2"
    assert resolve_device("cuda", 4, 2, cuda_available=True) == "cuda:2"
    assert resolve_device("cuda", 1, 0, cuda_available=True) == "cuda"
    assert resolve_device("cpu", 4, 2, cuda_available=True) == "cpu"


def test_config_checks():
    with pytest.raises(ValueError, match="per_prompt"):
        GenerateConfig(pipeline="p", out="o", per_prompt=0)
    with pytest.raises(ValueError, match="dtype"):
        GenerateConfig(pipeline="p", out="o", dtype="int8")
    cfg = GenerateConfig(pipeline="p", out="o", scales=[0.25, 0.5, 1], delta=(0.1, 0.2))
    assert cfg.spd_arguments() == dict(scales=(0.25, 0.5, 1), delta=(0.1, 0.2), spectrum=None,
                                       transition="dct", positions="native", solver="auto")


# --- resume records ----------------------------------------------------------------------


def test_output_folder_records(tmp_path):
    folder = OutputFolder(str(tmp_path))
    assert folder.pending([0, 1, 2, 5]) == [0, 1, 2, 5]
    assert folder.file_names(3, 1, video=False) == ["000003.png"]
    assert folder.file_names(3, 2, video=True) == ["000003_0.gif", "000003_1.gif"]
    # an image without its record is not done: the record is what marks completion
    (tmp_path / "000001.png").write_bytes(b"x")
    assert not folder.done(1)
    folder.write_record(1, {"index": 1, "seeds": [1]})
    folder.write_record(5, {"index": 5})
    assert folder.done(1) and folder.pending([0, 1, 2, 5]) == [0, 2]
    assert json.loads((tmp_path / "000001.json").read_text()) == {"index": 1, "seeds": [1]}
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporaries left


# --- one run on a tiny SDXL with text encoders ---------------------------------------------


def test_generate_writes_records_and_resumes(tmp_path):
    pytest.importorskip("diffusers")
    from PIL import Image

    from specdiff.integrations.generate import generate
    from specdiff.integrations.tiny import tiny_sdxl

    pipe, _ = tiny_sdxl(text_folder=str(tmp_path / "tok"))
    cfg = GenerateConfig(pipeline="tiny-sdxl", out=str(tmp_path / "o"), scales=(1.0,), steps=2,
                         size=(64, 64), per_prompt=2, seed=5)
    prompts = [{"prompt": "a cat"}, {"prompt": "a dog", "seed": 40}, {"prompt": "birds"}]
    s = generate(cfg, prompts, rank=1, world=2, pipe=pipe, progress=False)
    assert (s.generated, s.skipped, s.assigned, s.total) == (1, 0, 1, 3)
    rec = json.loads((tmp_path / "o" / "000001.json").read_text())
    assert rec["seed"] == 40 and rec["seeds"] == [40, 40 + 1000003]
    assert rec["files"] == ["000001_0.png", "000001_1.png"] and rec["rank"] == 1
    assert rec["scales"] == [1.0] and rec["world_size"] == 2
    # image 1 of the prompt is the pipeline's own image for seed 40 + 1000003
    ref = pipe("a dog", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(40 + 1000003)).images[0]
    img = np.asarray(Image.open(tmp_path / "o" / "000001_1.png")).astype(np.int16)
    assert np.abs(img - np.round(ref * 255).astype(np.int16)).max() <= 1
    # rank 0 does the others; a rerun of either skips what is done
    s0 = generate(cfg, prompts, rank=0, world=2, pipe=pipe, progress=False)
    assert (s0.generated, s0.skipped) == (2, 0)
    mtimes = {f: os.path.getmtime(tmp_path / "o" / f) for f in os.listdir(tmp_path / "o")}
    again = generate(cfg, prompts, pipe=pipe, progress=False)
    assert (again.generated, again.skipped, again.assigned) == (0, 3, 3)
    assert mtimes == {f: os.path.getmtime(tmp_path / "o" / f) for f in os.listdir(tmp_path / "o")}
    with pytest.raises(ValueError, match="video pipelines"):
        generate(GenerateConfig(pipeline="x", out=str(tmp_path / "v"), frames=9, scales=(1.0,)),
                 prompts, pipe=pipe, progress=False)


# --- checks before loading: what a folder's JSON configs say --------------------------------


@pytest.mark.parametrize("family", ["flux", "sd3", "sdxl", "wan", "zimage", "qwenimage",
                                    "flux2", "wan_i2v"])
def test_folder_layout_from_json_matches_the_loaded_pipeline(family, tmp_path):
    """The latent layout read from a saved pipeline's configs (before loading, for the checks
    of ``generate``) equals what the loaded pipeline and its adapter use."""
    pytest.importorskip("diffusers")
    import inspect

    from specdiff.integrations import tiny
    from specdiff.integrations.families import find_adapter
    from specdiff.integrations.generate import _folder_json

    pipe, _ = getattr(tiny, f"tiny_{family}")()
    pipe.save_pretrained(tmp_path)
    adapter_cls = find_adapter(pipe)
    layout = adapter_cls.folder_layout(lambda sub: _folder_json(str(tmp_path), f"{sub}/config.json"))
    vae = getattr(pipe, "vae_scale_factor", None) or pipe.vae_scale_factor_spatial
    # the adapter's properties read the pipeline's modules: evaluate them without a call
    fake = type("P", (), {"pipe": pipe})()
    assert layout.vae_factor == adapter_cls.pixels_per_cell.fget(fake)
    assert layout.vae_factor == (2 * vae if family == "flux2" else vae)  # FLUX.2: 2x2 tokens
    assert layout.multiple == adapter_cls.multiple.fget(fake)
    if family in ("wan", "wan_i2v"):
        params = inspect.signature(type(pipe).__call__).parameters
        assert layout.default_size == (params["height"].default, params["width"].default)
    elif family == "zimage":  # `height = height or 1024` in ZImagePipeline.__call__
        assert layout.default_size == (1024, 1024)
    else:
        assert layout.default_size == (pipe.default_sample_size * vae,) * 2


def test_generate_checks_the_folder_before_loading(tmp_path, monkeypatch):
    """A saved tiny FLUX folder: sizes whose coarse stage does not fit FLUX's 2x2 packing fail
    before the pipeline loads; good ones pass the checks."""
    pytest.importorskip("diffusers")
    from specdiff.integrations import generate as gen
    from specdiff.integrations.tiny import tiny_flux

    pipe, _ = tiny_flux()
    pipe.save_pretrained(tmp_path / "flux")
    ok = GenerateConfig(pipeline=str(tmp_path / "flux"), out=str(tmp_path / "o"), size=(128, 128))
    gen.check_generate_config(ok)  # 128 px: latent 16, half 8, even: fine
    bad = GenerateConfig(pipeline=str(tmp_path / "flux"), out=str(tmp_path / "o"),
                         size=(128, 128), scales=(0.3, 1.0))
    monkeypatch.setattr(gen, "load_pipeline", lambda *a: pytest.fail("loaded"))
    with pytest.raises(ValueError, match="multiples of 2"):  # 16 * 0.3 = 4.8 -> 4: 17% off
        gen.generate(bad, [{"prompt": "x"}], progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kw,msg", [
    (dict(scales=0.5), "scales must be a sequence"),
    (dict(scales=(0.5,)), "end at 1.0"),
    (dict(delta="0.05"), "delta must be a number"),
    (dict(delta=(0.1, 0.2)), "need one delta per transition"),
    (dict(spectrum="nope"), "unknown spectrum"),
    (dict(transition="wavelet"), "transition"),
    (dict(positions="centred"), "positions"),
    (dict(solver="rk4"), "solver"),
    (dict(size=(64,)), "(height, width)"),
    (dict(size=(64.5, 64)), "size"),
    (dict(frames=0), "frames"),
])
def test_config_rejects_bad_spd_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        GenerateConfig(pipeline="p", out="o", **kw)
