"""A thin object layer over the generic C functions: :class:`Device`, :class:`Stream`, and raw
allocations as integer addresses.

Closing is explicit (``close()`` or a ``with`` block). A closed object keeps its handle id, so a
call on it reaches the library, which reports ``INVALID_HANDLE``: ids are never reused.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Union

from . import _lib
from ._lib import GpuhalDevice, GpuhalMemoryStats, GpuhalStream, MemoryKind, call

BytesLike = Union[bytes, bytearray, memoryview]


class Device:
    """A gpuhal device: ``Device("cuda", 0)``, ``Device("mock:coherent")``, …"""

    def __init__(self, backend: str = "cuda", ordinal: int = 0):
        handle = GpuhalDevice()
        call("gpuhal_device_open", backend.encode("utf-8"), ordinal, ctypes.byref(handle))
        self.handle = handle
        self.backend = backend
        self.ordinal = ordinal

    def __repr__(self) -> str:
        return f"Device({self.backend!r}, {self.ordinal}, id={self.handle.id})"

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the device; a second close reports ``INVALID_HANDLE``."""
        call("gpuhal_device_close", self.handle)

    def stream(self) -> "Stream":
        """A new stream gpuhal owns (destroyed by ``Stream.close``)."""
        return Stream(self)

    def adopt_stream(self, raw_stream: int) -> "Stream":
        """Wraps a stream the caller owns (a ``CUstream``); gpuhal never destroys it. CUDA only."""
        return Stream(self, raw_stream=raw_stream)

    def malloc(self, size: int, stream: "Stream", kind: MemoryKind = MemoryKind.DEVICE) -> int:
        """Allocates ``size`` bytes ordered on ``stream``; returns the address."""
        out = ctypes.c_void_p()
        call("gpuhal_malloc", self.handle, size, int(kind), stream.handle, ctypes.byref(out))
        return out.value or 0

    def free(self, address: int) -> None:
        """Frees an address this device handed out (0 is a no-op)."""
        call("gpuhal_free", self.handle, address)

    def record_use(self, address: int, stream: "Stream") -> None:
        """Tells gpuhal that ``stream`` uses the allocation, so its free waits for that stream too."""
        call("gpuhal_record_use", self.handle, address, stream.handle)

    def memory_stats(self) -> dict:
        """The allocator's counters (``GpuhalMemoryStats`` as a dict of ints)."""
        stats = GpuhalMemoryStats()
        call("gpuhal_memory_stats", self.handle, ctypes.byref(stats))
        return stats.as_dict()

    def memory_report(self) -> dict:
        """What holds the device's memory: every native allocation with its pieces (live, idle,
        pending on which streams), per-stream and per-kind totals, the largest idle piece,
        fragmentation, the graph pools and the event pool (the JSON of the C ABI, parsed)."""
        return _lib.report_json("gpuhal_memory_report_json", self.handle)

    def set_memory_limit(self, limit_bytes: Optional[int]) -> None:
        """Caps the memory the device may reserve; ``None`` or 0 removes the cap."""
        call("gpuhal_set_memory_limit", self.handle, limit_bytes or 0)

    def set_cache_limit(self, limit_bytes: Optional[int]) -> None:
        """Caps the idle memory kept cached; ``None`` removes the cap."""
        call("gpuhal_set_cache_limit", self.handle, 2**64 - 1 if limit_bytes is None else limit_bytes)

    def trim(self) -> int:
        """Returns idle cached memory to the driver; the number of bytes released."""
        released = ctypes.c_uint64()
        call("gpuhal_trim", self.handle, ctypes.byref(released))
        return released.value


class Stream:
    """A stream of a :class:`Device`: created by gpuhal, or adopted from the caller."""

    def __init__(self, device: Device, raw_stream: Optional[int] = None):
        handle = GpuhalStream()
        if raw_stream is None:
            call("gpuhal_stream_create", device.handle, ctypes.byref(handle))
        else:
            call("gpuhal_stream_adopt", device.handle, raw_stream, ctypes.byref(handle))
        self.handle = handle
        self.device = device

    def __repr__(self) -> str:
        return f"Stream(id={self.handle.id}, device={self.device!r})"

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Destroys the stream (an adopted one is only forgotten, never destroyed)."""
        call("gpuhal_stream_destroy", self.handle)

    def synchronize(self) -> None:
        """Waits on the CPU until everything enqueued on the stream has finished."""
        call("gpuhal_stream_synchronize", self.handle)

    def fill(self, address: int, length: int, value: int) -> None:
        """Enqueues setting ``length`` bytes at ``address`` to ``value``."""
        call("gpuhal_stream_fill", self.handle, address, length, value)

    def write(self, address: int, data: BytesLike) -> None:
        """Copies ``data`` from the host to ``address``, ordered on the stream; returns when the
        host buffer may be reused (the library's contract for ``gpuhal_stream_write``)."""
        buffer = (ctypes.c_char * len(data)).from_buffer_copy(bytes(data))
        call("gpuhal_stream_write", self.handle, address, buffer, len(data))

    def read(self, address: int, length: int) -> bytes:
        """Copies ``length`` bytes at ``address`` to the host, ordered on the stream."""
        buffer = ctypes.create_string_buffer(length)
        call("gpuhal_stream_read", self.handle, address, buffer, length)
        return buffer.raw
