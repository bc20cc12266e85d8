"""``docclassify-serve bundle=DIR host=127.0.0.1 port=8000``: a bundle behind HTTP (FastAPI + uvicorn).

    POST /predict   multipart, one or several image parts (any field names) -> JSON, one entry per part in
                    request order: name, label, probabilities by class, orientation (tta=orient*), skew
    GET  /health    {"status": "ok"} once the bundle is loaded
    GET  /info      the bundle: classes, inputs, orientation policy, members, temperature, versions, limits

Limits: a request larger than ``max_request_mb`` or a part larger than ``max_upload_mb`` -> 413; a part
with more than ``max_pixels`` pixels (read from its header, before decoding; a decompression bomb) ->
413; more than ``max_files`` parts -> 413; a part that is not a decodable image -> 422 naming the
part. Nothing a client sends stops the server.

Requests are batched: a worker thread takes every image waiting (up to ``max_batch``, waiting at most
``max_wait_ms`` for more) into one ``Predictor.predict`` call and hands each request its own rows, so
concurrent requests share forward passes and never see each other's images.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime.
import asyncio
import contextlib
import io
import logging
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from docclassify.deploy.cli import Option, UsageError, parse_args
from docclassify.errors import USAGE_EXIT_CODE, UserError, error_line

log = logging.getLogger("docclassify.serve")
PROG = "docclassify-serve"


@dataclass
class Limits:
    max_request_bytes: int = 64 * 2**20
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_files: int = 64


class RejectedPart(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    names: list[str]
    data: list[bytes]
    future: Future


class Batcher:
    """One worker thread: the images of every waiting request in one predict call (see the module docstring)."""

    def __init__(self, predictor, limits: Limits, max_batch: int = 32, max_wait_ms: float = 5.0,
                 batch_size: int = 32):
        self.predictor, self.limits = predictor, limits
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1000.0
        self.batch_size = int(batch_size)
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="docclassify-batcher", daemon=True)
        self.thread.start()

    def submit(self, names: list[str], data: list[bytes]) -> Future:
        job = Job(names, data, Future())
        self.jobs.put(job)
        return job.future

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _gather(self, first: Job) -> list[Job]:
        jobs, n = [first], len(first.data)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)
                break
            jobs.append(job)
            n += len(job.data)
        return jobs

    def _work(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            jobs = self._gather(first)
            names = [n for j in jobs for n in j.names]
            data = [d for j in jobs for d in j.data]
            try:
                result = self.predictor.predict(data, batch_size=self.batch_size, on_error="skip", names=names,
                                                max_pixels=self.limits.max_pixels)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, the worker goes on
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            records, start = result.records(), 0
            for job in jobs:
                job.future.set_result(records[start:start + len(job.data)])
                start += len(job.data)


def check_part(name: str, data: bytes, limits: Limits) -> None:
    """413 / 422 for a part before it is queued: size, an image header, pixels."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_upload_bytes:
        raise RejectedPart(413, f"part {name!r}: {len(data)} bytes, more than the limit of {limits.max_upload_bytes}")
    if not data:
        raise RejectedPart(422, f"part {name!r}: empty (0 bytes); expected an image file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Image.DecompressionBombError as exc:
        raise RejectedPart(413, f"part {name!r}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RejectedPart(422, f"part {name!r}: not an image ({exc})") from None
    if w * h > limits.max_pixels:
        raise RejectedPart(413, f"part {name!r}: {w} x {h} pixels, more than the limit of {limits.max_pixels}")


def create_app(predictor, limits: Limits | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               batch_size: int = 32):
    """The FastAPI app of ``predictor`` (a docclassify.Predictor)."""
    from fastapi import FastAPI, HTTPException, Request
    from starlette.datastructures import UploadFile

    limits = limits or Limits()
    batcher = Batcher(predictor, limits, max_batch, max_wait_ms, batch_size)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()  # the worker thread ends with the server

    app = FastAPI(title="docclassify", description="Document-image classification of a docclassify bundle",
                  lifespan=lifespan)
    app.state.batcher = batcher

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict:
        batching = {"max_batch": max_batch, "max_wait_ms": max_wait_ms}
        return {**predictor.info(), "limits": limits.__dict__, "batching": batching}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_request_bytes:
            raise HTTPException(413, f"request of {length} bytes, more than the limit of {limits.max_request_bytes}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(422, "expected a multipart/form-data upload with one or more image parts "
                                     "(curl -F file=@page.jpg)")
        try:
            form = await request.form(max_files=limits.max_files + 1, max_fields=limits.max_files + 1)
        except Exception as exc:  # noqa: BLE001 - the multipart parser's errors
            detail = getattr(exc, "detail", None) or str(exc)
            status = 413 if "Too many" in detail else 422
            raise HTTPException(status, f"cannot take the multipart body: {detail} (at most {limits.max_files} "
                                        "image parts)" if status == 413 else
                                f"cannot parse the multipart body ({detail})") from None
        names, data = [], []
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise HTTPException(422, f"part {field!r}: not a file; send images as file parts")
            name = value.filename or field
            content = await value.read(limits.max_upload_bytes + 1)
            try:
                check_part(name, content, limits)
            except RejectedPart as exc:
                raise HTTPException(exc.status, str(exc)) from None
            names.append(name)
            data.append(content)
        if not data:
            raise HTTPException(422, "no image parts in the upload")
        if len(data) > limits.max_files:
            raise HTTPException(413, f"{len(data)} parts, more than the limit of {limits.max_files}")
        records = await asyncio.wrap_future(batcher.submit(names, data))
        bad = [r for r in records if r["error"]]
        if bad:
            raise HTTPException(422, "; ".join(f"part {r['name']!r}: {r['error']}" for r in bad))
        return {"predictions": [{k: r[k] for k in ("name", "label", "probabilities", "orientation", "skew")}
                                for r in records]}

    return app


OPTIONS = {
    "bundle": Option(..., str, "the bundle folder (python -m docclassify.export ... output=DIR)"),
    "host": Option("127.0.0.1", str, "address to listen on (0.0.0.0: every interface, e.g. in a container)"),
    "port": Option(8000, int, "TCP port"),
    "max_upload_mb": Option(20.0, float, "largest image part (MB): larger -> 413"),
    "max_request_mb": Option(64.0, float, "largest request body (MB): larger -> 413"),
    "max_pixels": Option(40_000_000, int, "most pixels of an image (from its header): more -> 413"),
    "max_files": Option(64, int, "most image parts in one request"),
    "max_batch": Option(32, int, "most images the batcher puts into one predict call"),
    "max_wait_ms": Option(5.0, float, "how long the batcher waits for more requests to join a batch"),
    "threads": Option(None, int, "intra-op threads per model (null: DOCCLASSIFY_THREADS, else every core)"),
    "log_level": Option("info", str, "uvicorn's log level"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv, OPTIONS, PROG)
        for k in ("max_files", "max_batch", "max_pixels"):
            if args[k] < 1:
                raise UsageError(f"{k}={args[k]}: expected a positive integer")
        try:
            import uvicorn
        except ImportError:
            raise UsageError("docclassify-serve needs fastapi and uvicorn: pip install \"docclassify[serve]\"") \
                from None
        from docclassify.deploy.predictor import Predictor

        predictor = Predictor.from_bundle(args["bundle"], threads=args["threads"])
        limits = Limits(int(args["max_request_mb"] * 2**20), int(args["max_upload_mb"] * 2**20), args["max_pixels"],
                        args["max_files"])
        app = create_app(predictor, limits, args["max_batch"], args["max_wait_ms"])
    except UserError as exc:
        print(error_line(PROG, exc), file=sys.stderr, flush=True)
        return USAGE_EXIT_CODE
    uvicorn.run(app, host=args["host"], port=args["port"], log_level=args["log_level"])
    return 0


def console_main() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    console_main()
