"""Where a run computes: the device, its autocast and gradient scaler, its process-group backend, its
random state and its peak memory — the one place that knows how devices differ.

``--device auto`` takes the accelerator when there is one (CUDA, then Apple's MPS), else the CPU.
Under torchrun each process takes ``cuda:LOCAL_RANK``. Mixed precision follows ``torch.autocast`` for
the device: bf16 (CPU or CUDA; slower than fp32 on a CPU without native bf16), or fp16 with a
gradient scaler (CUDA).
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Optional

import torch

from loralab.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: Optional[int] = None) -> torch.device:
    """The torch device for ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("{} " + name + ": this machine has no CUDA device torch can use (torch " +
                              torch.__version__ + "); use --device cpu or auto.", ("device",))
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("{} mps: Apple's MPS is not available here; use --device cpu or auto.", ("device",))
    return device


def autocast(precision: str, device: torch.device | str = "cpu"):
    """``torch.autocast`` for ``--precision`` on ``device`` (fp32: no autocast)."""
    if precision not in DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device):
    """A gradient scaler for fp16 (its range underflows small gradients), else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def process_group_backend(device: torch.device) -> str:
    """NCCL between CUDA devices, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random state dropout and sampling draw from: the CPU generator's, and the device's."""
    state = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng.cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(tensors: dict, device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_device_memory_mb(device: torch.device) -> Optional[float]:
    """Peak memory allocated on an accelerator by this process, or None on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return None


def native_bf16() -> bool:
    """Whether this CPU runs bf16 in hardware (AVX512-BF16 or AMX); without it, bf16 is emulated and slower
    than fp32. True on a CUDA device of compute capability 8 or more."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
