"""`docclassify-predict` on a folder (unreadable files listed with the reason) and `docclassify-serve` as a
real uvicorn process on 127.0.0.1, talked to with httpx: good, corrupt, oversize and non-image uploads,
/health and /info, and 50 concurrent requests each answered with its own images' predictions."""

from __future__ import annotations

import csv
import io
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from docclassify import Predictor

pytestmark = pytest.mark.slow  # the shared fixture trains a run


def test_folder_cli_lists_every_file_and_why_it_failed(deployed, tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    paths = deployed.test_paths(6)
    for p in paths[:4]:
        shutil.copy(p, folder / Path(p).name)
    for p in paths[4:]:
        shutil.copy(p, folder / "sub" / Path(p).name)
    (folder / "torn.jpg").write_bytes(Path(paths[0]).read_bytes()[:60])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not a candidate")
    out = tmp_path / "preds.csv"
    proc = run_cli("docclassify.deploy.cli", [f"bundle={deployed.bundle}", f"inputs={folder}", f"output={out}",
                                              "batch_size=3"], env=deployed.env, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]  # some files failed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and not any(r["path"].endswith("notes.txt") for r in rows)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "cannot decode" in by_name["torn.jpg"]["error"] and by_name["torn.jpg"]["label"] == ""
    assert "empty" in by_name["empty.png"]["error"]
    want = Predictor.from_bundle(deployed.bundle).predict(paths)
    classes = want.classes
    for i, p in enumerate(paths):
        row = by_name[Path(p).name]
        assert row["label"] == want.labels[i] and row["error"] == ""
        np.testing.assert_allclose([float(row[c]) for c in classes], want.probabilities[i], atol=1e-5)
    proc = run_cli("docclassify.deploy.cli", [f"bundle={deployed.bundle}", f"inputs={tmp_path / 'nothing'}"],
                   env=deployed.env, check=False)
    assert proc.returncode == 2 and "no image files there" in proc.stderr
    proc = run_cli("docclassify.deploy.cli", [f"inputs={folder}"], env=deployed.env, check=False)
    assert proc.returncode == 2 and "missing bundle=..." in proc.stderr


@pytest.fixture(scope="module")
def server(deployed, server_class):
    srv = server_class(deployed.bundle, deployed.env, "max_upload_mb=0.05", "max_pixels=1000000", "max_files=8")
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


def upload(*parts: tuple[str, bytes]):
    return [("file", (name, data, "application/octet-stream")) for name, data in parts]


def test_predict_health_info(server, deployed):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{server.url}/info").json()
    assert info["backend"] == "onnx" and len(info["classes"]) == 17 and info["limits"]["max_pixels"] == 1000000
    paths = deployed.test_paths(3)
    reply = httpx.post(f"{server.url}/predict", files=upload(*[(Path(p).name, Path(p).read_bytes()) for p in paths]),
                       timeout=60)
    assert reply.status_code == 200, reply.text
    got = reply.json()["predictions"]
    want = Predictor.from_bundle(deployed.bundle).predict(paths)
    assert [g["name"] for g in got] == [Path(p).name for p in paths]
    assert [g["label"] for g in got] == want.labels
    for g, p in zip(got, want.probabilities):
        np.testing.assert_allclose([g["probabilities"][c] for c in want.classes], p, atol=1e-6)
    assert all("orientation" in g for g in got)


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_of(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_before_decoding(deployed):
    from docclassify.data.images import ImageTooLargeError, decode_bytes

    bomb = png_header_of(30000, 30000)  # 900M pixels: over PIL's own limit too
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        decode_bytes(bomb, "bomb.png")
    with pytest.raises(ImageTooLargeError, match="wide.png: 2000 x 1000 pixels, more than the limit of 1000000"):
        Predictor.from_bundle(deployed.bundle).predict([png_header_of(2000, 1000)], names=["wide.png"],
                                                       max_pixels=10**6)


def test_bad_uploads_get_4xx_and_the_server_goes_on(server, deployed):
    good = Path(deployed.test_paths(1)[0]).read_bytes()
    cases = {
        "corrupt": (upload(("a.jpg", good), ("torn.jpg", good[:80])), 422, "torn.jpg"),
        "not an image": (upload(("notes.txt", b"hello, I am text")), 422, "notes.txt"),
        "too many bytes": (upload(("big.bin", b"\0" * 60_000)), 413, "big.bin"),
        "too many pixels": (upload(("wide.png", png_of(2000, 1000))), 413, "2000 x 1000 pixels"),
        "a bomb's header": (upload(("bomb.png", png_header_of(30000, 30000))), 413, "bomb.png"),
        "too many parts": (upload(*[(f"{i}.jpg", good) for i in range(9)]), 413, "9 parts"),
    }
    for what, (files, status, named) in cases.items():
        reply = httpx.post(f"{server.url}/predict", files=files, timeout=60)
        assert reply.status_code == status, (what, reply.text)
        assert named in reply.json()["detail"], (what, reply.text)
    assert httpx.post(f"{server.url}/predict", content=b"raw", timeout=30).status_code == 422
    assert httpx.post(f"{server.url}/predict", files=upload(("a.jpg", good)), timeout=30).status_code == 200


def test_fifty_concurrent_requests_each_get_their_own_answer(server, deployed):
    paths = deployed.test_paths()
    want = Predictor.from_bundle(deployed.bundle).predict(paths)
    # request i sends images i % n and (i + 1) % n (1 or 2 per request), so a mixed-up batch shows
    jobs = [[i % len(paths)] + ([(i + 1) % len(paths)] if i % 2 else []) for i in range(50)]

    def send(rows):
        files = upload(*[(Path(paths[r]).name, Path(paths[r]).read_bytes()) for r in rows])
        with httpx.Client(timeout=120) as client:
            return rows, client.post(f"{server.url}/predict", files=files)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(send, jobs))
    for rows, reply in answers:
        assert reply.status_code == 200, reply.text
        got = reply.json()["predictions"]
        assert [g["name"] for g in got] == [Path(paths[r]).name for r in rows]
        for g, r in zip(got, rows):
            assert g["label"] == want.labels[r]
            np.testing.assert_allclose([g["probabilities"][c] for c in want.classes], want.probabilities[r],
                                       atol=1e-6)
