"""Does bf16 autocast, channels-last or a larger eval batch pay off on this CPU? Train steps
(forward + backward + AdamW) and eval forwards of one model at one size, per setting.

Every setting runs in the same process on pre-made tensors (no data loading), in rounds: each
round times every setting once, in order, so a changing machine load hits all of them alike;
the median over the rounds is reported, with each setting's speed relative to fp32 / NCHW.

    python benchmarks/cpu_precision_benchmark.py                         # convnext_atto, 128 px, batch 32
    python benchmarks/cpu_precision_benchmark.py --model resnet18 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import machine_line, set_threads

SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def make_model(name: str, classes: int, channels_last: bool):
    import timm
    import torch

    model = timm.create_model(name, pretrained=False, num_classes=classes, drop_path_rate=0.1)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_rate(model, x, y, amp: str, steps: int, warmup: int) -> float:
    """Images per second of ``steps`` train steps after ``warmup`` untimed ones."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0)


def eval_rate(model, x, amp: str, batches: int) -> float:
    import torch

    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x)
    return batches * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--eval-batches", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    import torch

    print(machine_line(), flush=True)
    from docclassify.engine.setup import cpu_has_native_bf16

    print(f"bf16 instructions (trainer.amp=auto picks bf16): {cpu_has_native_bf16()}; oneDNN's bf16 probe "
          f"(also true where bf16 is emulated): {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 17, (args.batch,))
    models = {s: make_model(args.model, 17, s[1]) for s in SETTINGS}
    inputs = {s: x.contiguous(memory_format=torch.channels_last) if s[1] else x for s in SETTINGS}
    train: dict = {s: [] for s in SETTINGS}
    evals: dict = {(s, b): [] for s in SETTINGS for b in args.eval_batches}
    for r in range(args.rounds):
        for s in SETTINGS:
            train[s].append(train_rate(models[s], inputs[s], y, s[0], args.steps, 2))
            for b in args.eval_batches:
                xb = torch.randn(b, 3, args.img_size, args.img_size)
                xb = xb.contiguous(memory_format=torch.channels_last) if s[1] else xb
                evals[s, b].append(eval_rate(models[s], xb, s[0], max(2, 4 * 32 // b)))
        print(f"round {r + 1}/{args.rounds} done; {machine_line().split(' | ')[2]}", flush=True)
    base_t = statistics.median(train[SETTINGS[0]])
    base_e = statistics.median(evals[SETTINGS[0], args.eval_batches[0]])
    print(f"\n{args.model} at {args.img_size} px, train batch {args.batch}, median of {args.rounds} rounds")
    base_b = args.eval_batches[0]
    print("| precision | layout | train img/s | vs fp32 NCHW | "
          + " | ".join(f"eval img/s (batch {b}) | vs fp32 NCHW b{base_b}" for b in args.eval_batches) + " |")
    print("|---|---|---:|---:|" + "---:|---:|" * len(args.eval_batches))
    for s in SETTINGS:
        t = statistics.median(train[s])
        cells = []
        for b in args.eval_batches:
            e = statistics.median(evals[s, b])
            cells += [f"{e:.1f}", f"{e / base_e:.2f}x"]
        print(f"| {s[0]} | {'channels_last' if s[1] else 'NCHW'} | {t:.1f} | {t / base_t:.2f}x | " + " | ".join(cells)
              + " |")
    print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")


if __name__ == "__main__":
    main()
