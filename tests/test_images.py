"""specdiff.images: the one image reader, and each of its three consumers (``specdiff
analyze``, training photos from a folder, VAE encoding) against numpy on Pillow's pixels."""

import numpy as np
import pytest
import torch
from PIL import Image

from specdiff.images import (
    IMAGE_EXTENSIONS,
    from_array,
    image_grid,
    image_size,
    list_images,
    read_image,
    save_png,
    to_uint8,
)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def grey(h, w, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


@pytest.fixture()
def pngs(tmp_path):
    Image.fromarray(rgb(20, 30)).save(tmp_path / "b_rgb.png")
    Image.fromarray(grey(24, 18)).save(tmp_path / "a_grey.png")
    rgba = np.concatenate([rgb(16, 16, 2), grey(16, 16, 3)[..., None]], axis=2)
    Image.fromarray(rgba).save(tmp_path / "c_rgba.png")
    return tmp_path


def test_list_images_filters_and_sorts(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt", "c.tiff", ".png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").mkdir()  # a folder with an image suffix is not an image
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.webp").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] \
        == ["a.jpg", "b.PNG", "c.tiff", "sub/e.webp"]
    assert [p.name for p in list_images(tmp_path, extensions=(".txt",))] == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "missing")
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def test_read_image_scales_8_and_16_bit_and_drops_alpha(pngs, tmp_path):
    x = read_image(pngs / "b_rgb.png")
    assert x.dtype == torch.float32 and x.shape == (3, 20, 30)
    expect = np.asarray(Image.open(pngs / "b_rgb.png")).astype(np.float32) / 255
    assert torch.equal(x, torch.from_numpy(expect.transpose(2, 0, 1).copy()))
    g = read_image(pngs / "a_grey.png", dtype=torch.float64)
    assert g.shape == (1, 24, 18)
    assert torch.equal(g[0], torch.from_numpy(grey(24, 18) / 255.0))
    a = read_image(pngs / "c_rgba.png")
    assert torch.equal(a, torch.from_numpy(rgb(16, 16, 2).transpose(2, 0, 1) / np.float32(255)))
    g16 = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert torch.equal(read_image(tmp_path / "g16.png", dtype=torch.float64)[0],
                       torch.from_numpy(g16 / 65535.0))
    # a palette image reads as its colours
    Image.fromarray(rgb(8, 8, 4)).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    pal = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")) / np.float32(255)
    assert torch.equal(read_image(tmp_path / "p.png"), torch.from_numpy(pal.transpose(2, 0, 1).copy()))
    assert image_size(pngs / "b_rgb.png") == (20, 30)


def test_read_image_square_resizes_the_stored_pixels(pngs):
    x = read_image(pngs / "b_rgb.png", square=12)
    im = Image.open(pngs / "b_rgb.png").crop((5, 0, 25, 20)).resize((12, 12), Image.BICUBIC)
    assert torch.equal(x, torch.from_numpy(np.asarray(im).transpose(2, 0, 1) / np.float32(255)))
    # the centre square of a portrait image, no resize at its own side
    g = read_image(pngs / "a_grey.png", square=18, dtype=torch.float64)
    assert torch.equal(g[0], torch.from_numpy(grey(24, 18)[3:21] / 255.0))
    with pytest.raises(ValueError, match="square must be"):
        read_image(pngs / "a_grey.png", square=0)


def test_bad_files_and_arrays_say_what_is_wrong(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
    assert torch.equal(from_array(np.array([[True, False]])), torch.tensor([[[1.0, 0.0]]]))
    assert torch.equal(from_array(np.full((2, 2), 0.25, dtype=np.float32)), torch.full((1, 2, 2), 0.25))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        from_array(np.full((2, 2), 2.0))
    with pytest.raises(ValueError, match="1 to 4 channels"):
        from_array(np.zeros((2, 2, 5), dtype=np.uint8))


def test_analyze_reads_images_as_before(pngs, tmp_path):
    from skimage import transform

    from specdiff.analysis.spectrum import load_arrays

    folder = tmp_path / "two"
    folder.mkdir()
    Image.fromarray(rgb(20, 30)).save(folder / "0.png")
    Image.fromarray(grey(24, 18)).save(folder / "1.png")
    (batch,) = load_arrays([folder])
    assert batch.dtype == torch.float64 and batch.shape == (2, 3, 18, 18)
    # independently: Pillow's pixels in [-1, 1], centre square, skimage resize to the smallest side
    im0 = np.asarray(Image.open(folder / "0.png"), dtype=np.float64) / 255 * 2 - 1
    crop0 = transform.resize(im0[:, 5:25], (18, 18), anti_aliasing=True, order=1)
    assert torch.equal(batch[0], torch.from_numpy(crop0.transpose(2, 0, 1).copy()))
    im1 = np.asarray(Image.open(folder / "1.png"), dtype=np.float64) / 255 * 2 - 1
    for c in range(3):  # grey repeated over the colour channels
        assert torch.equal(batch[1, c], torch.from_numpy(im1[3:21]))


def test_training_photos_read_as_before(tmp_path):
    from specdiff.training.data import load_photos

    Image.fromarray(rgb(20, 30)).save(tmp_path / "0.png")
    Image.fromarray(grey(24, 18)).save(tmp_path / "1.png")
    photos = load_photos(tmp_path, "all")
    assert photos.names == ["0.png", "1.png"]
    expect0 = np.asarray(Image.open(tmp_path / "0.png")).astype(np.float32) / np.float32(255)
    assert torch.equal(photos.photos[0],
                       torch.from_numpy(expect0.transpose(2, 0, 1).copy()) * 2 - 1)
    expect1 = torch.from_numpy(grey(24, 18).astype(np.float32) / np.float32(255)) * 2 - 1
    assert photos.photos[1].shape == (3, 24, 18)
    assert all(torch.equal(photos.photos[1][c], expect1) for c in range(3))


def test_vae_images_read_as_before(pngs):
    from specdiff.integrations.vae_spectrum import _list_images, _load_square

    for name, side in (("b_rgb.png", 12), ("a_grey.png", 10), ("c_rgba.png", 16)):
        # the previous reader: Pillow RGB, centre square, bicubic, / 127.5 - 1 in float32
        im = Image.open(pngs / name).convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if s != side:
            im = im.resize((side, side), Image.BICUBIC)
        expect = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
        got = _load_square(str(pngs / name), side)
        assert got.shape == (3, side, side)
        assert torch.equal(got, torch.from_numpy(expect.transpose(2, 0, 1).copy())), name
    assert [p.rsplit("/", 1)[-1] for p in _list_images(str(pngs))] == \
        ["a_grey.png", "b_rgb.png", "c_rgba.png"]


def test_save_png_round_trips_through_the_reader(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, 7, generator=g) * 2 - 1
    save_png(tmp_path / "x.png", x)
    back = read_image(tmp_path / "x.png")
    expect = torch.from_numpy(to_uint8(x[None])[0].transpose(2, 0, 1).copy()).float() / 255
    assert torch.equal(back, expect)
    assert (back * 2 - 1 - x).abs().max() <= 1 / 255 + 1e-6  # 8-bit quantisation only


def test_image_grid_layout():
    a, b = torch.full((3, 3, 4, 4), -1.0), torch.full((2, 3, 4, 4), 0.5)
    grid = image_grid([a, b], pad=1)
    assert grid.shape == (3, 2 * 5 + 1, 3 * 5 + 1)
    assert (grid[:, 1:5, 1:5] == -1).all() and (grid[:, 6:10, 6:10] == 0.5).all()
    assert (grid[:, 6:10, 11:15] == 1).all() and (grid[:, 0] == 1).all()  # padding is white
