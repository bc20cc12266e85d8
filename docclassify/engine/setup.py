"""Device, seeding, determinism and mixed-precision settings."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from docclassify.errors import UserError

if TYPE_CHECKING:
    from docclassify.engine.epoch import StepContext


def resolve_device(spec: str = "auto") -> torch.device:
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={spec}: CUDA is not available on this machine (use auto or cpu)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (bitwise-reproducible on CPU; on CUDA as far as torch allows)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


@dataclass(frozen=True)
class AmpSettings:
    enabled: bool
    dtype: torch.dtype | None
    use_scaler: bool
    name: str


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16). torch's oneDNN probe
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes on AVX-512 cores without them,
    where bf16 is emulated and slower than fp32; ``torch.cpu.get_capabilities`` names the instructions."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch, or a build without cpuinfo
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def amp_settings(amp: str | None, device: torch.device) -> AmpSettings:
    """none | auto | bf16 | fp16. auto: fp16 on CUDA; bf16 on a CPU with bf16 instructions (measured
    on a Zen 4 CPU with AVX512-BF16, convnext_atto at 128 px: training 1.20x, inference 1.35x the
    images per second of fp32; docs/performance.md); fp32 on other CPUs. fp16 needs a GradScaler;
    bf16 does not."""
    amp = "none" if amp in (None, False, "none", "off", "false") else str(amp)
    if amp == "auto":
        if device.type == "cuda":
            amp = "fp16"
        else:
            amp = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "none"
    if amp == "none":
        return AmpSettings(False, None, False, "none")
    if amp == "bf16":
        return AmpSettings(True, torch.bfloat16, False, "bf16")
    if amp == "fp16":
        return AmpSettings(True, torch.float16, True, "fp16")
    raise ValueError(f"trainer.amp={amp!r}: expected none, auto, bf16 or fp16")


def channels_last_setting(value: bool | None, amp: AmpSettings, device: torch.device) -> bool:
    """trainer.channels_last: true / false as given; null (auto): on with bf16 autocast on CPU (measured
    faster there for training and inference; with fp32 on CPU it was not, on CUDA it was not measured)."""
    if value is not None:
        return bool(value)
    return device.type == "cpu" and amp.enabled and amp.dtype == torch.bfloat16


def to_model_input(images: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """uint8 NCHW on the host -> normalised float on the device."""
    x = images.to(ctx.device, non_blocking=True).float().div_(255.0)
    x = x.sub_(ctx.mean).div_(ctx.std)
    if ctx.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(ctx: StepContext):
    if not ctx.amp.enabled:
        return nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=ctx.amp.dtype)
