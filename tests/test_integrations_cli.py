"""``specdiff generate`` (sharded with torchrun/gloo, resumable) and ``encode_images``."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.cli import main  # noqa: E402
from specdiff.integrations.generate import shard  # noqa: E402
from specdiff.integrations.tiny import tiny_flux, tiny_sdxl, tiny_wan  # noqa: E402
from specdiff.integrations.vae_spectrum import encode_images  # noqa: E402

PROMPTS = ["a red cat", "a blue dog", "# a comment line", "", "three birds", "four 4", "five"]
N = 5  # prompts after dropping the comment and the blank line


# The tiny models are ~100x faster single-threaded on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny SDXL pipeline with tiny CLIP text encoders, saved like a real one."""
    root = tmp_path_factory.mktemp("gen")
    pipe, _ = tiny_sdxl(text_folder=str(root / "tok"))
    pipe.save_pretrained(str(root / "pipe"))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def _args(root, out, *extra):
    return ["generate", "--pipeline", str(root / "pipe"), "--prompts", str(root / "prompts.txt"),
            "--spectrum", "flux", "--steps", "2", "--size", "64", "--out", str(out), *extra]


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path)).astype(np.int16)


def test_shard_covers_every_index_once():
    for n in range(0, 12):
        for world in range(1, 5):
            parts = [shard(n, r, world) for r in range(world)]
            flat = sorted(i for p in parts for i in p)
            assert flat == list(range(n))


def test_torchrun_two_ranks_cover_every_prompt_once_and_resume(saved):
    out = saved / "out2"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "specdiff",
           *_args(saved, out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    records = [json.loads((out / f"{i:06d}.json").read_text()) for i in range(N)]
    assert sorted(os.listdir(out)) == sorted([f"{i:06d}.json" for i in range(N)]
                                             + [f"{i:06d}.png" for i in range(N)])
    assert [r["rank"] for r in records] == [i % 2 for i in range(N)]
    assert [r["prompt"] for r in records] == [p for p in PROMPTS if p and not p.startswith("#")]
    assert [r["seed"] for r in records] == list(range(N))
    assert all(r["world_size"] == 2 and r["files"] == [f"{i:06d}.png"]
               for i, r in enumerate(records))
    # one process, same prompts: the same images (per-prompt seeds, not per-rank)
    single = saved / "out1"
    assert main(_args(saved, single)) == 0
    for i in range(N):
        assert np.abs(_png(single / f"{i:06d}.png") - _png(out / f"{i:06d}.png")).max() <= 1
    # resume: everything exists, nothing is regenerated
    mtimes = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    assert main(_args(saved, out)) == 0
    assert mtimes == {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    # a missing record is regenerated, the others are kept
    os.remove(out / "000003.json")
    assert main(_args(saved, out)) == 0
    assert (out / "000003.json").exists()
    assert all(os.path.getmtime(out / f) == t for f, t in mtimes.items() if "000003" not in f)


def test_generate_errors(saved, tmp_path, capsys):
    assert main(["generate", "--pipeline", str(tmp_path / "nope"), "--prompt", "x",
                 "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(_args(saved, tmp_path / "o", "--scales", "0.5,0.8")) == 2
    assert "end at 1.0" in capsys.readouterr().err



def test_generate_sdxl_spd_fits_its_spectrum_once(saved, tmp_path, capsys):
    """SDXL has no published VAE constants: SPD fits them on the shipped photos, says so,
    and a second run reads the cache (the session's cache folder, see conftest)."""
    argv = ["generate", "--pipeline", str(saved / "pipe"), "--prompt", "x", "--steps", "2",
            "--size", "64"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "fitting the latent spectrum of this AutoencoderKL" in err
    rec = json.loads((tmp_path / "a" / "000000.json").read_text())
    assert rec["scales"] == [0.5, 1.0] and rec["spectrum"] is None
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert "fitting" not in capsys.readouterr().err


def test_generate_plain_scales_and_jsonl(saved, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a cat", "seed": 7}) + "\n")
    out = tmp_path / "o"
    assert main(["generate", "--pipeline", str(saved / "pipe"), "--prompts",
                 str(tmp_path / "p.jsonl"), "--scales", "1", "--steps", "2", "--size", "64",
                 "--per-prompt", "2", "--out", str(out)]) == 0
    rec = json.loads((out / "000000.json").read_text())
    assert rec["seeds"] == [7, 7 + 1000003] and rec["files"] == ["000000_0.png", "000000_1.png"]
    # --scales 1 is the plain pipeline: the same image as pipe(...) with that seed
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(saved / "pipe"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a cat", num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(7), output_type="np").images[0]
    ref = np.round(ref * 255).astype(np.int16)
    assert np.abs(_png(out / "000000_0.png") - ref).max() <= 1


# --- encode_images -------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(80, 64), (64, 96), (70, 70)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_encode_images_flux_vae_normalised(images, tmp_path):
    pipe, _ = tiny_flux()
    pipe.vae.save_pretrained(str(tmp_path / "vae"))
    z = encode_images(str(tmp_path / "vae"), str(images), progress=False)
    assert z.shape == (3, 16, 8, 8) and z.dtype == torch.float32  # smallest side 64 -> 8x8
    # by hand: centre crop 64x64 of the first image, posterior mean, (z - shift) * scale
    from specdiff.integrations.vae_spectrum import _load_square

    x = _load_square(str(images / "0.png"), 64)[None]
    with torch.no_grad():
        raw = pipe.vae.encode(x).latent_dist.mode()
    cfg = pipe.vae.config
    torch.testing.assert_close(z[:1], (raw - cfg.shift_factor) * cfg.scaling_factor,
                               rtol=1e-5, atol=1e-5)
    z2 = encode_images(str(tmp_path / "vae"), str(images), size=40, max_images=2, progress=False)
    assert z2.shape == (2, 16, 5, 5)  # 40 px is a multiple of the factor 8


def test_encode_images_wan_vae_from_pipeline_folder(images, tmp_path):
    pipe, _ = tiny_wan()
    pipe.save_pretrained(str(tmp_path / "wan"))
    z = encode_images(str(tmp_path / "wan"), str(images), size=64, progress=False)
    assert z.shape == (3, 16, 8, 8) and torch.isfinite(z).all()


def test_encode_images_errors(images, tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE"):
        encode_images(str(tmp_path), str(images))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        encode_images(str(tmp_path), str(empty))


def test_analyze_vae_command_fits_the_latent_spectrum(images, tmp_path, capsys):
    pipe, _ = tiny_flux()
    pipe.vae.save_pretrained(str(tmp_path / "vae"))
    out = tmp_path / "an"
    code = main(["analyze", "--vae", str(tmp_path / "vae"), "--images", str(images),
                 "--size", "64", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "latents of" in text and "A = " in text
    spec = json.loads((out / "spectrum.json").read_text())
    assert spec["grid"] == [8, 8] and spec["frames"] == 3 * 16  # 3 images x 16 channels
    # the fit is of exactly the latents encode_images returns
    from specdiff.spectral import fit_power_law, rapsd

    z = encode_images(str(tmp_path / "vae"), str(images), size=64, progress=False)
    f, p = rapsd(z.double())
    A, beta = fit_power_law(f, p, fmin=1.0)
    assert spec["A"] == pytest.approx(A) and spec["beta"] == pytest.approx(beta)
    assert main(["analyze", "--vae", str(tmp_path / "vae")]) == 2  # --images missing
