"""Messy competition data gets the behaviour docs/troubleshooting.md documents:

- CSV with a BOM, extra columns, spaces around names and values: read as if clean.
- IDs with or without extension, upper-case extensions (in the CSV or on disk): resolved.
- Duplicate IDs, two IDs naming one file, an ID matching two files: an error naming them.
- 16-bit PNG: full range scaled to 8 bits; CMYK JPEG: converted to RGB; EXIF-rotated JPEG:
  turned the way image viewers show it.
- Zero-byte file, random bytes named .jpg, truncated JPEG: undecodable (data.on_bad_image).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train
from PIL import Image

from docclassify.data.images import BadImageError, decode_image
from docclassify.data.sources import DataError, load_competition
from docclassify.engine.kfold import run_kfold

BOM = "\ufeff"


def _write(path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _hostile_copy(root) -> list[str]:
    """Rewrite root's CSVs and some images the messy way; returns the IDs as the CSV now has them."""
    train = pd.read_csv(root / "train.csv", dtype=str)
    ids = []
    for i, image_id in enumerate(train["ID"]):
        stem = image_id.rsplit(".", 1)[0]
        kind = i % 4
        if kind == 0:
            ids.append(stem)                          # ID without extension
        elif kind == 1:
            ids.append(stem + ".JPG")                 # upper-case extension in the CSV
        elif kind == 2:
            (root / "train" / image_id).rename(root / "train" / f"{stem}.JPG")  # ... on disk
            ids.append(image_id)
        else:
            ids.append(image_id)
    # Special images (their IDs keep whatever form the loop above gave them).
    rgb = np.asarray(Image.open(root / "train" / train["ID"][3]).convert("RGB"))
    (root / "train" / train["ID"][3]).unlink()
    png16 = root / "train" / f"{train['ID'][3].rsplit('.', 1)[0]}.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(png16)
    Image.open(root / "train" / train["ID"][7]).convert("CMYK").save(root / "train" / train["ID"][7])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(root / "train" / train["ID"][11]).save(root / "train" / train["ID"][11], exif=exif)

    rows = [f'  {i} , {t} ,"free text, with a comma", {n}' for n, (i, t) in enumerate(zip(ids, train["target"]))]
    _write(root / "train.csv", BOM + " ID , target , note, source_row\n" + "\n".join(rows) + "\n")
    meta = pd.read_csv(root / "meta.csv", dtype=str)
    _write(root / "meta.csv", BOM + "target , class_name\n" + "\n".join(f" {t} , {c} " for t, c in meta.values) + "\n")
    return ids


@pytest.mark.slow
def test_messy_but_valid_data_trains_and_keeps_the_ids(data, tmp_path):
    ids = _hostile_copy(data)
    source = load_competition(data)
    assert source.train["ID"].tolist() == ids and source.classes[0] == "account_number"
    assert {p.suffix for p in source.train["path"]} == {".jpg", ".JPG", ".png"}
    assert all(p.is_file() for p in source.train["path"])
    results = run_kfold(compose_train(["data=competition", f"data.root={data}", *TINY, "folds.n=2"], tmp_path))
    oof = pd.read_csv(tmp_path / "oof.csv", dtype={"ID": str})
    assert sorted(oof["ID"]) == sorted(ids) and results["skipped_images"] == []
    assert list(oof.columns[3:]) == source.classes


def _csv(root, body: str) -> None:
    _write(root / "train.csv", "ID,target\n" + body)


def test_duplicate_ids_error_names_them(data):
    first = pd.read_csv(data / "train.csv")
    _csv(data, first.to_csv(index=False, header=False) + f"{first.ID[4]},{first.target[4]}\n"
         + f"{first.ID[9]},{first.target[9]}\n")
    with pytest.raises(DataError, match="duplicate IDs") as err:
        load_competition(data)
    assert first.ID[4] in str(err.value) and first.ID[9] in str(err.value)


def test_same_file_under_two_ids_is_an_error(data):
    train = pd.read_csv(data / "train.csv")
    stem = train.ID[2].rsplit(".", 1)[0]
    _csv(data, train.to_csv(index=False, header=False) + f"{stem},{train.target[2]}\n")
    with pytest.raises(DataError, match=f"{stem}.jpg and {stem} -> {train.ID[2]}"):
        load_competition(data)


def test_id_matching_two_files_is_an_error(data):
    train = pd.read_csv(data / "train.csv")
    stem = train.ID[5].rsplit(".", 1)[0]
    Image.open(data / "train" / train.ID[5]).save(data / "train" / f"{stem}.png")
    load_competition(data)  # the exact name still decides
    _csv(data, train.assign(ID=train.ID.where(train.index != 5, stem)).to_csv(index=False, header=False))
    with pytest.raises(DataError, match=rf"match several files.*{stem} \({stem}.jpg / {stem}.png\)"):
        load_competition(data)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    out = decode_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (32, 64, 3)
    np.testing.assert_allclose(out[..., 0], ramp / 257.0, atol=1)  # 0..65535 -> 0..255
    assert out.max() == 255 and out.min() == 0 and len(np.unique(out)) > 200


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16] = (220, 30, 30)
    img[:, 16:] = (30, 30, 220)
    Image.fromarray(img).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out = decode_image(tmp_path / "c.jpg").astype(int)
    np.testing.assert_allclose(out[8:24, 2:12].mean((0, 1)), (220, 30, 30), atol=25)
    np.testing.assert_allclose(out[8:24, 20:30].mean((0, 1)), (30, 30, 220), atol=25)


def test_exif_rotated_jpeg_is_turned_as_viewers_show_it(tmp_path):
    img = np.full((20, 40, 3), 255, np.uint8)
    img[:, :20] = (200, 0, 0)  # stored: left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "r.jpg").astype(int)
    assert out.shape == (40, 20, 3)
    assert out[:15, :, 0].mean() > 180 and out[:15, :, 1].mean() < 60  # displayed: top half red
    assert out[25:, :, 1].mean() > 200  # bottom half white


@pytest.mark.parametrize("kind", ["zero_bytes", "random_bytes", "truncated"])
def test_undecodable_files_raise_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(1).bytes(4096))
    else:
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(BadImageError, match=f"{kind}.jpg"):
        decode_image(path)
