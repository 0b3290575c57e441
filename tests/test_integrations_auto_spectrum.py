"""``spectrum=None`` on a VAE without published constants: fitted once on the shipped photos
exactly as ``specdiff analyze --vae`` fits them, cached on disk, a bad cache refitted."""

import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.cli import main  # noqa: E402
from specdiff.integrations import auto_spectrum as auto  # noqa: E402
from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import tiny_sd3, tiny_sdxl  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder through the environment variable, and no in-process memo."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(auto.CACHE_ENV, str(folder))
    monkeypatch.setattr(auto, "_MEMO", type(auto._MEMO)())
    return folder


def _count_fits(monkeypatch) -> list:
    calls = []
    real = auto._fit

    def counting(vae, side, progress):
        calls.append(side)
        return real(vae, side, progress)

    monkeypatch.setattr(auto, "_fit", counting)
    return calls


def test_the_fit_is_analyze_vae_on_the_shipped_photos(cache, tmp_path, capsys):
    pipe, _ = tiny_sd3()
    pipe.vae.save_pretrained(str(tmp_path / "vae"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in auto.photo_files():  # the same files, in the same (sorted) order
        shutil.copy(f, photos / f.name)
    assert sorted(p.name for p in photos.iterdir()) == list(auto.PHOTOS)
    assert main(["analyze", "--vae", str(tmp_path / "vae"), "--images", str(photos), "--size",
                 "64", "--out", str(tmp_path / "an")]) == 0
    want = json.loads((tmp_path / "an" / "spectrum.json").read_text())
    capsys.readouterr()

    # a 64 x 64 call: fitted at 64 px (8 x 8 latents), the grid it is used on
    spec = auto.auto_spectrum(pipe.vae, 64, 64)
    assert spec.A == pytest.approx(want["A"], rel=1e-12)
    assert spec.beta == pytest.approx(want["beta"], rel=1e-12)
    assert "fitting the latent spectrum" in capsys.readouterr().err  # said when it happens


def test_a_larger_call_is_fitted_at_the_smallest_photo_and_scaled(cache):
    pipe, _ = tiny_sd3()
    # 1024 x 768: sqrt = 886 px > 400 px, the smallest photo: fitted at 400 px = 50 latents
    assert auto.fit_side(1024, 768, 8) == 400 and auto.fit_side(100, 36, 8) == 56
    big = auto.auto_spectrum(pipe.vae, 1024, 768, progress=False)
    at_fit = auto.auto_spectrum(pipe.vae, 400, 400, progress=False)
    assert big.beta == at_fit.beta
    assert big.A == pytest.approx(at_fit.A * (128 * 96) / 50 ** 2, rel=1e-12)  # N'/N
    with pytest.raises(ValueError, match="smaller than one latent cell"):
        auto.auto_spectrum(pipe.vae, 4, 4)


def test_the_second_call_reads_the_cache_and_a_bad_cache_is_refitted(cache, monkeypatch):
    pipe, _ = tiny_sd3()
    fits = _count_fits(monkeypatch)
    first = auto.auto_spectrum(pipe.vae, 64, 64, progress=False)
    files = list(cache.glob("*.json"))
    assert fits == [64] and len(files) == 1
    rec = json.loads(files[0].read_text())
    assert (rec["A"], rec["beta"], rec["side"], rec["latent_side"]) == (first.A, first.beta, 64, 8)

    monkeypatch.setattr(auto, "_MEMO", type(auto._MEMO)())  # as in a new process
    again = auto.auto_spectrum(pipe.vae, 64, 64, progress=False)
    assert fits == [64] and (again.A, again.beta) == (first.A, first.beta)

    for bad in ("{not json", json.dumps({**rec, "key": "0" * 64}), json.dumps({**rec, "A": -1})):
        files[0].write_text(bad)
        monkeypatch.setattr(auto, "_MEMO", type(auto._MEMO)())
        with pytest.warns(UserWarning, match="corrupt or not this VAE's"):
            refit = auto.auto_spectrum(pipe.vae, 64, 64, progress=False)
        assert (refit.A, refit.beta) == (first.A, first.beta)
        assert json.loads(files[0].read_text()) == rec  # rewritten whole
    assert fits == [64] * 4


def test_other_weights_are_another_cache_entry(cache, monkeypatch):
    pipe, _ = tiny_sd3()
    fits = _count_fits(monkeypatch)
    a = auto.auto_spectrum(pipe.vae, 64, 64, progress=False)
    other = tiny_sd3(seed=1)[0].vae
    b = auto.auto_spectrum(other, 64, 64, progress=False)
    assert len(fits) == 2 and len(list(cache.glob("*.json"))) == 2 and a.A != b.A
    assert auto.vae_fingerprint(pipe.vae) != auto.vae_fingerprint(other)


@pytest.mark.parametrize("build", [tiny_sd3, tiny_sdxl], ids=["sd3", "sdxl"])
def test_sd3_and_sdxl_run_spd_without_a_spectrum(build, cache):
    pipe, kw = build()
    sp = SpectralPipeline.from_pipe(pipe)
    g = torch.Generator().manual_seed(0)
    out = sp(**kw, generator=g, output_type="latent", scales=(0.5, 1.0)).images
    assert torch.isfinite(out).all()
    plan = sp.get_plan(**kw, scales=(0.5, 1.0))
    grid = plan.full_grid
    fitted = auto.auto_spectrum(pipe.vae, grid[-2] * 8, grid[-1] * 8, grid[-2:], progress=False)
    explicit = sp.get_plan(**kw, scales=(0.5, 1.0), spectrum=(fitted.A, fitted.beta))
    assert [st.grid for st in plan.stages] == [st.grid for st in explicit.stages]
    assert [len(st.times) for st in plan.stages] == [len(st.times) for st in explicit.stages]
    assert len(list(cache.glob("*.json"))) == 1


def test_cache_folder_follows_the_platform(monkeypatch, tmp_path):
    monkeypatch.delenv(auto.CACHE_ENV, raising=False)
    monkeypatch.setattr(auto.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert auto.cache_dir() == tmp_path / "specdiff" / "spectra"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(auto.Path, "home", lambda: tmp_path / "home")
    assert auto.cache_dir() == tmp_path / "home" / ".cache" / "specdiff" / "spectra"
    monkeypatch.setattr(auto.sys, "platform", "darwin")
    assert auto.cache_dir() == tmp_path / "home" / "Library" / "Caches" / "specdiff" / "spectra"
    monkeypatch.setattr(auto.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert auto.cache_dir() == tmp_path / "local" / "specdiff" / "Cache" / "spectra"
