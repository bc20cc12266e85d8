"""From a K-fold run to something that serves: speed, macro F1 and size of every deployment path, and the
service's latency and memory.

Trains (or takes) a K-fold teacher run on the synthetic data, runs `python -m docclassify.infer tta=none`
on it, exports the infer run as TorchScript, ONNX fp32, ONNX INT8 (static) and, when `openvino` is
installed, OpenVINO fp32 / INT8 bundles, distils the teacher into one student (`python -m
docclassify.distill`, same architecture) and exports it too. Then per path: images/s at batch 1 and 32
(pre-decoded images of the model's size, so decoding is left out: the model and the arithmetic of
folds, temperature and decision), macro F1 on the labelled distorted test split, the bundle's size and
the largest probability difference from infer's test_probs.csv. Last, `docclassify-serve` on the
student's ONNX bundle: p50 / p95 latency per request (one image) with 1 and 8 concurrent clients, and
the server's resident memory after every 100 of `--requests` requests.

    python benchmarks/deployment_benchmark.py                 # the default run (resnet18, quick pipeline)
    python benchmarks/deployment_benchmark.py --pipeline highperf --epochs 10
    python benchmarks/deployment_benchmark.py --quick         # a small check of the script (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import DEFAULT_WORK, REPO, load_average, machine_line, rss_mb


def ensure_data(root: Path | None, per_class: int, test_per_class: int, long_side: int, work: Path) -> Path:
    """``root``, else a synthetic competition-layout data set with a labelled distorted test split (made once)."""
    if root is not None:
        return Path(root).expanduser()
    from docclassify.data.synthetic import SyntheticSpec, generate

    out = work / f"data-{per_class}x{test_per_class}x{long_side}"
    if not (out / "train.csv").is_file():
        print(f"generating benchmark data set in {out} ...", flush=True)
        generate(out, SyntheticSpec(n_train_per_class=per_class, n_test_per_class=test_per_class, long_side=long_side,
                                    seed=1), progress=False)
    return out


def run(module: str, args: list[str], env: dict) -> None:
    cmd = [sys.executable, "-m", module, *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)


def once(out: Path, module: str, args: list[str], env: dict, marker: str) -> Path:
    """``module args`` unless ``out/marker`` exists (a rerun reuses finished steps)."""
    if not (out / marker).is_file():
        run(module, args, env)
    return out


def macro_f1(y, pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro"))


def throughput(predictor, images: list[np.ndarray], batch: int, seconds: float = 8.0) -> float:
    """Images per second of ``predictor.predict`` on pre-decoded images in calls of ``batch``."""
    chunk = images[:batch] if len(images) >= batch else (images * (batch // len(images) + 1))[:batch]
    predictor.predict(chunk, batch_size=batch)  # warm-up (allocations, lazy init)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done < 2 * batch:
        predictor.predict(chunk, batch_size=batch)
        done += batch
    return done / (time.perf_counter() - t0)


def evaluate(name: str, predictor, paths, y, images, want, bundle: Path | None, rows: list) -> None:
    got = predictor.predict(paths, batch_size=32)
    row = {"path": name, "img_s_b1": throughput(predictor, images, 1), "img_s_b32": throughput(predictor, images, 32),
           "macro_f1": macro_f1(y, got.indices),
           "bundle_mb": sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6 if bundle else None,
           "max_diff_vs_infer": float(np.abs(got.probabilities - want).max()) if want is not None else None}
    rows.append(row)
    print(json.dumps(row), flush=True)


def serve_latency(bundle: Path, paths: list[str], requests: int, threads: int, env: dict) -> dict:
    """docclassify-serve on ``bundle``: per-request latency (1 image) at 1 and 8 clients, RSS every 100."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "docclassify.deploy.serve", f"bundle={bundle}", f"port={port}",
                             f"threads={threads}", "log_level=warning"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        payloads = [Path(p).read_bytes() for p in paths]
        rss, sent = [], 0

        local = threading.local()  # one keep-alive connection per client thread, as a real client keeps

        def one(i: int) -> float:
            client = getattr(local, "client", None) or httpx.Client(timeout=60)
            local.client = client
            t0 = time.perf_counter()
            reply = client.post(f"{url}/predict", files=[("file", (f"{i}.jpg", payloads[i % len(payloads)]))])
            reply.raise_for_status()
            return time.perf_counter() - t0

        out = {}
        for clients in (1, 8):
            n = requests // 2
            latencies = []
            with ThreadPoolExecutor(max_workers=clients) as pool:
                for start in range(0, n, 100):
                    latencies += list(pool.map(one, range(sent + start, sent + min(start + 100, n))))
                    rss.append(round(rss_mb(proc.pid), 1))
            sent += n
            q = statistics.quantiles(latencies, n=20)
            out[f"{clients}_clients"] = {"p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * q[18],
                                         "requests": n}
        out["rss_mb_every_100_requests"] = rss
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="competition-layout data (default: synthetic)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "deployment")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--pipeline", default="quick")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=30, help="distorted test images per class")
    parser.add_argument("--requests", type=int, default=None, help="requests to the service (1000; quick: 200)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--student-folds", default=None,
                        help="folds of the student to train, e.g. 0 (default: all; the best one is the 1-model bundle)")
    parser.add_argument("--quick", action="store_true",
                        help="20 + 10 test images per class, 64 px, 2 epochs, the student's fold 0 only, 200 requests")
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.test_per_class, args.img_size, args.epochs = 20, 10, 64, 2
        args.requests, args.student_folds = args.requests or 200, "0"
        args.work = args.work.with_name(args.work.name + "-quick")
    args.requests = args.requests or 1000
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["DOCCLASSIFY_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    data = ensure_data(args.data, args.per_class, args.test_per_class, 400 if args.quick else 600, DEFAULT_WORK)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    common = ["data=competition", f"data.root={data}", f"model={args.model}", "model.pretrained=false",
              f"pipeline={args.pipeline}", f"data.img_size={args.img_size}", f"trainer.epochs={args.epochs}",
              f"folds.n={args.folds}", "logger=none"]
    t0 = time.time()
    teacher = once(work / "teacher", "docclassify.train", [*common, f"hydra.run.dir={work / 'teacher'}"], env,
                   "results.json")
    infer_args = [f"runs=[{teacher}]", "tta=none", f"hydra.run.dir={work / 'infer'}"]
    infer = once(work / "infer", "docclassify.infer", infer_args, env, "summary.json")
    bundles = {}
    paths_to_export = (("torchscript", ["format=torchscript"]), ("onnx_fp32", []), ("onnx_int8", ["quantize=int8"]),
                       ("openvino_fp32", ["format=openvino"]), ("openvino_int8", ["format=openvino", "quantize=int8"]))
    for name, extra in paths_to_export:
        if name.startswith("openvino"):
            try:
                import openvino  # noqa: F401
            except ImportError:
                continue
        out = work / f"bundle_{name}"
        export_args = [f"runs=[{infer}]", *extra, "exporter=torchscript", f"output={out}",
                       f"hydra.run.dir={work / ('export_' + name)}"]
        once(out, "docclassify.export", export_args, env, "bundle.json")
        bundles[name] = out
    distill_args = [f"runs=[{teacher}]", *common, f"hydra.run.dir={work / 'student'}"]
    if args.student_folds is not None:
        distill_args.append(f"folds.run=[{args.student_folds}]")
    student = once(work / "student", "docclassify.distill", distill_args, env, "results.json")
    # the student as one model: its best fold (a 1/K-cost deployment of the distilled ensemble)
    student_run = json.loads((student / "results.json").read_text())
    best = max(student_run["folds"], key=lambda f: f["best_macro_f1"])["fold"]
    student_infer = [f"runs=[{student}]", "tta=none", f"hydra.run.dir={work / 'student_infer'}"]
    once(work / "student_infer", "docclassify.infer", student_infer, env, "summary.json")
    student_bundle = work / "bundle_student"
    student_export = [f"runs=[{work / 'student_infer'}]", "exporter=torchscript", f"output={student_bundle}",
                      f"hydra.run.dir={work / 'export_student'}"]
    once(student_bundle, "docclassify.export", student_export, env, "bundle.json")
    one_fold = work / "bundle_student_1fold"
    if not (one_fold / "bundle.json").is_file():
        import shutil

        shutil.copytree(student_bundle, one_fold, dirs_exist_ok=True)
        spec = json.loads((one_fold / "bundle.json").read_text())
        spec["members"][0]["folds"] = [f for f in spec["members"][0]["folds"] if f["fold"] == best]
        (one_fold / "bundle.json").write_text(json.dumps(spec, indent=2))
    print(f"set-up (train, infer, export, distill) {time.time() - t0:.0f}s", flush=True)

    import pandas as pd

    from docclassify import Predictor
    from docclassify.data.images import load_image

    sample = pd.read_csv(data / "sample_submission.csv", dtype={"ID": str})
    labels = pd.read_csv(data / "test_labels.csv", dtype={"ID": str}).set_index("ID")["target"]
    paths = [str(data / "test" / i) for i in sample["ID"]]
    y = labels.loc[sample["ID"]].to_numpy()
    want = pd.read_csv(infer / "test_probs.csv", dtype={"ID": str}).set_index("ID").loc[sample["ID"]].to_numpy()
    images = [load_image(p, args.img_size, "pad", 0) for p in paths[:64]]
    rows: list[dict] = []
    evaluate(f"torch eager (infer, tta=none), {args.folds}-fold teacher", Predictor.from_run(infer), paths, y, images,
             want, None, rows)
    for name, bundle in bundles.items():
        evaluate(name, Predictor.from_bundle(bundle, threads=args.threads), paths, y, images, want, bundle, rows)
    n_student = len(student_run["folds"])
    if n_student > 1:
        evaluate(f"distilled student, {n_student} folds (ORT)", Predictor.from_bundle(student_bundle, args.threads),
                 paths, y, images, None, student_bundle, rows)
    evaluate(f"distilled student, 1 model: fold {best} (ORT)", Predictor.from_bundle(one_fold, args.threads), paths,
             y, images, None, one_fold, rows)
    service = serve_latency(one_fold, paths, args.requests, args.threads, env)

    print(f"\n{machine_line()}\nload average now {load_average()}; {args.threads} threads per model; "
          f"teacher {args.model} {args.pipeline} {args.img_size} px {args.epochs} epochs {args.folds} folds on "
          f"{data} ({len(paths)} distorted test images)\n")
    print("| path | img/s batch 1 | img/s batch 32 | macro F1 | bundle MB | max prob. diff vs infer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mb = "" if r["bundle_mb"] is None else f"{r['bundle_mb']:.1f}"
        diff = "" if r["max_diff_vs_infer"] is None else f"{r['max_diff_vs_infer']:.1e}"
        print(f"| {r['path']} | {r['img_s_b1']:.1f} | {r['img_s_b32']:.1f} | {r['macro_f1']:.4f} | {mb} | {diff} |")
    base = rows[0]
    ratios = [f"{r['path']}: x{r['img_s_b1'] / base['img_s_b1']:.2f} (b1), x{r['img_s_b32'] / base['img_s_b32']:.2f} "
              "(b32)" for r in rows[1:]]
    print("\nratios to torch eager: " + ", ".join(ratios))
    print(f"\nservice (docclassify-serve, the 1-model student bundle, one image per request): "
          f"1 client p50 {service['1_clients']['p50_ms']:.1f} ms / p95 {service['1_clients']['p95_ms']:.1f} ms; "
          f"8 clients p50 {service['8_clients']['p50_ms']:.1f} ms / p95 {service['8_clients']['p95_ms']:.1f} ms; "
          f"RSS (MiB) every 100 requests: {service['rss_mb_every_100_requests']}")
    (work / "deployment_benchmark.json").write_text(json.dumps({"rows": rows, "service": service,
                                                               "machine": machine_line()}, indent=2))


if __name__ == "__main__":
    main()
