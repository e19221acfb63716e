"""The CUDA extension is imported only where a GPU is present: without one (or without the
driver) the package runs on the CPU and this module says so instead of failing to import."""
from __future__ import annotations

import ctypes
from functools import lru_cache


@lru_cache(maxsize=1)
def gpu_count() -> int:
    """GPUs the CUDA driver reports; 0 without a driver or a device."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0
    return 0


def cuda_available() -> bool:
    """True when a GPU is present and this build has the CUDA extension."""
    return gpu_count() > 0 and extension() is not None


@lru_cache(maxsize=1)
def extension():
    """The compiled CUDA module, or None (no GPU, or built without nvcc)."""
    if gpu_count() == 0:
        return None
    try:
        from . import _cuda
    except ImportError:
        return None
    return _cuda


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' for an LLM's `device`: 'auto' picks the GPU when one is present and this
    build has the CUDA extension. 'cuda' without them is a RuntimeError that says which is missing.
    Choosing 'cuda' registers the extension's model with the core (once)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return device
    if gpu_count() == 0:
        raise RuntimeError("device='cuda' but the CUDA driver reports no GPU; use device='cpu' or 'auto'")
    ext = extension()
    if ext is None:
        raise RuntimeError("device='cuda' but this build of specdec_native has no CUDA extension (it was built "
                           "without nvcc, or SPECDEC_CUDA=OFF); rebuild with SPECDEC_CUDA=ON")
    _register_cuda_model(ext)
    return device


@lru_cache(maxsize=1)
def _register_cuda_model(ext) -> None:
    from . import _core

    _core._register_model_factory("cuda", ext.model_factory())
