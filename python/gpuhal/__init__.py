"""Python access to gpuhal: its C ABI through ctypes (:mod:`gpuhal._lib`), a small object layer
(:class:`Device`, :class:`Stream`), and PyTorch's pluggable allocator (:mod:`gpuhal.torch`)."""

from ._lib import (
    GpuhalError,
    MemoryKind,
    Status,
    check,
    last_error_message,
    library_path,
)
from .device import Device, Stream

__all__ = [
    "Device",
    "GpuhalError",
    "MemoryKind",
    "Status",
    "Stream",
    "check",
    "last_error_message",
    "library_path",
]
