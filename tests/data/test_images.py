"""Images of every common mode load as RGB uint8 and resize with the aspect ratio kept."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from docclassify.data.images import BadImageError, decode_image, load_image, resize_image


@pytest.mark.parametrize("mode,ext", [("L", "jpg"), ("L", "png"), ("RGBA", "png"), ("P", "png"),
                                      ("P", "gif"), ("CMYK", "jpg"), ("RGB", "jpg"), ("I;16", "png"), ("LA", "png")])
def test_modes_load_as_rgb(tmp_path, mode, ext):
    rgb = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    else:
        img = img.convert(mode)
    path = tmp_path / f"x.{ext}"
    img.save(path)
    arr = decode_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (30, 40, 3)
    if mode == "I;16":  # full 16-bit range scaled, not clipped to white
        assert abs(int(arr[..., 0].mean()) - int(rgb[..., 0].mean())) <= 2


def test_transparent_png_composited_on_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.save(tmp_path / "t.png")
    assert (decode_image(tmp_path / "t.png") == 255).all()


def test_pad_keeps_aspect_and_stretch_does_not():
    img = np.full((100, 50, 3), 200, np.uint8)
    padded = resize_image(img, 64, "pad", pad_value=0)
    assert padded.shape == (64, 64, 3)
    assert (padded[:, :16] == 0).all() and (padded[:, 16:48] == 200).all() and (padded[:, 48:] == 0).all()
    assert (resize_image(img, 64, "stretch") == 200).all()
    with pytest.raises(ValueError, match="data.resize"):
        resize_image(img, 64, "crop")


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert decode_image(tmp_path / "r.jpg").shape == (40, 20, 3)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 50])
def test_bad_files_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match="bad.jpg"):
        load_image(path, 32)
