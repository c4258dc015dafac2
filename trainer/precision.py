"""Which precision a run trains in: bf16 autocast only where the CPU does bf16 in hardware.

bf16 autocast was 1.7x faster than fp32 on CPUs with native bf16 (AVX512-BF16 or AMX) and about
45x slower where it is emulated (an AVX2 AMD EPYC: 64 s a step instead of 1.4 s), so "auto" asks
the CPU before it picks, and says what it picked and why.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags, or None where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def native_bf16(flags: set[str] | None = None) -> list[str]:
    """The CPU's native bf16 features (``flags``, else this CPU's); empty where bf16 is emulated."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in NATIVE_BF16_FLAGS if f in (flags or set())]


def resolve_precision(requested: str, device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """(precision to train in, why). ``requested``: "auto" | "bf16" | "fp32" | "amp"."""
    if requested != "auto":
        return requested, "asked for in the config"
    if device.type == "cuda":
        return "amp", "CUDA: mixed precision"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return "fp32", "CPU features unknown (no /proc/cpuinfo): fp32 is never the slow choice"
    native = native_bf16(flags)
    if native:
        return "bf16", f"CPU has native bf16 ({', '.join(native)}): bf16 autocast"
    return "fp32", "CPU lacks native bf16 (no avx512_bf16/amx_bf16), where bf16 is emulated ~45x slower: fp32"


def autocast(precision: str, device: torch.device):
    """The mixed-precision context for this precision (a no-op for fp32)."""
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision in ("amp", "bf16") and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def cpu_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name, recorded beside every training time (they differ 45x by CPU)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
