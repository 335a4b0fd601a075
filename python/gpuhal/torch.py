"""gpuhal as PyTorch's CUDA allocator, and its counters in ``torch.cuda.memory_stats()``'s shape.

Typical use, first thing in the program::

    import gpuhal.torch
    gpuhal.torch.enable(kind="device")      # before torch allocates anything on CUDA
    ...
    print(gpuhal.torch.memory_stats()["allocated_bytes.all.peak"])

The library reads its configuration (the ``GPUHAL_*`` environment variables) once, on the first
call of its PyTorch entry points; :func:`enable` sets them and then makes that first call, so a
bad setting or a missing driver is reported by ``enable`` rather than as a NULL from the first
``torch`` allocation.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from typing import Optional, Union

from . import _lib
from ._lib import GpuhalDevice, GpuhalError, GpuhalMemoryStats, GpuhalSleepReport, GpuhalWakeReport, call

MALLOC_SYMBOL = "gpuhal_torch_malloc"
FREE_SYMBOL = "gpuhal_torch_free"

_KINDS = ("device", "managed")
_SEGMENTS = ("native", "growable")
_enabled_config: Optional[dict] = None


def _limit_text(memory_limit: Union[int, str, None]) -> Optional[str]:
    if memory_limit is None:
        return None
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, str)):
        raise TypeError(f"memory_limit must be bytes (int) or a string like '40GiB', not {memory_limit!r}")
    if isinstance(memory_limit, int) and memory_limit < 0:
        raise ValueError(f"memory_limit must not be negative, got {memory_limit}")
    return str(memory_limit)


def _slack_text(reserve_slack: Union[float, str, None]) -> Optional[str]:
    if reserve_slack is None:
        return None
    if isinstance(reserve_slack, str):
        if reserve_slack.strip().lower() != "inf":
            float(reserve_slack)  # raises ValueError on a non-number
        return reserve_slack.strip()
    if reserve_slack == float("inf"):
        return "inf"
    if reserve_slack < 0:
        raise ValueError(f"reserve_slack must not be negative, got {reserve_slack}")
    return repr(float(reserve_slack))


def _torch_with_cuda():
    """The ``torch`` module if it is importable and built with CUDA, else None."""
    try:
        import torch
    except ImportError:
        return None
    if getattr(torch.version, "cuda", None) is None:
        return None
    return torch


def enable(
    kind: str = "device",
    memory_limit: Union[int, str, None] = None,
    reserve_slack: Union[float, str, None] = None,
    backend: Optional[str] = None,
    device: int = 0,
    install_allocator: bool = True,
    segments: Optional[str] = None,
) -> bool:
    """Configures gpuhal's PyTorch allocator and, where torch has CUDA, makes it torch's allocator.

    ``kind``: ``"device"`` or ``"managed"`` memory (``GPUHAL_MEMORY_KIND``). ``memory_limit``: bytes
    as an int, or a string with a K/M/G/KiB/MiB/GiB suffix (``GPUHAL_MEMORY_LIMIT``).
    ``reserve_slack``: a float or ``"inf"`` (``GPUHAL_RESERVE_SLACK``). ``backend``: ``"cuda"``
    (the library's default) or a mock such as ``"mock:coherent"`` for tests (``GPUHAL_BACKEND``).
    ``segments``: ``"native"`` (the backend's pool) or ``"growable"`` (virtual-memory segments,
    which :func:`sleep` needs; ``GPUHAL_SEGMENTS``). Arguments left ``None`` leave the
    corresponding variable as the environment has it.

    Then opens gpuhal's device ``device`` through the PyTorch entry points, which makes the library
    read the configuration now and report a bad value or an unavailable backend as
    :class:`GpuhalError`.

    If ``install_allocator`` and ``torch`` is importable and built with CUDA, installs
    ``torch.cuda.memory.CUDAPluggableAllocator`` over this library's ``gpuhal_torch_malloc`` and
    ``gpuhal_torch_free``; this must happen before torch allocates any CUDA memory, and a
    ``RuntimeError`` says so otherwise. Returns True when torch's allocator was installed, False
    when only the library was configured (asked not to install, no torch, or a CPU-only torch).

    The library reads its configuration once per process: a second ``enable`` with different
    settings raises ``RuntimeError``; with the same settings it is a no-op.
    """
    global _enabled_config
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if segments is not None and segments not in _SEGMENTS:
        raise ValueError(f"segments must be one of {_SEGMENTS}, got {segments!r}")
    settings = {
        "GPUHAL_MEMORY_KIND": kind,
        "GPUHAL_MEMORY_LIMIT": _limit_text(memory_limit),
        "GPUHAL_RESERVE_SLACK": _slack_text(reserve_slack),
        "GPUHAL_BACKEND": backend,
        "GPUHAL_SEGMENTS": segments,
    }
    if _enabled_config is not None:
        if _enabled_config["settings"] != settings:
            raise RuntimeError(
                f"gpuhal.torch.enable was already called with {_enabled_config['settings']}; the library "
                f"reads its configuration once per process, so {settings} cannot take effect"
            )
        return _enabled_config["installed"]

    for name, value in settings.items():
        if value is not None:
            os.environ[name] = value

    library = _lib.library_path()
    handle = GpuhalDevice()
    call("gpuhal_torch_device", device, ctypes.byref(handle))

    installed = False
    torch = _torch_with_cuda() if install_allocator else None
    if torch is not None:
        allocator = _pluggable_allocator(torch, library)
        try:
            torch.cuda.memory.change_current_allocator(allocator)
        except RuntimeError as error:
            raise RuntimeError(
                "gpuhal.torch.enable() must run before torch allocates CUDA memory (call it first "
                f"thing in the program, before any tensor is put on a GPU); torch said: {error}"
            ) from error
        installed = True
    _enabled_config = {"settings": settings, "installed": installed}
    return installed


def _pluggable_allocator(torch, library: str):
    """torch's pluggable allocator over gpuhal, with every hook torch offers set.

    ``record_stream`` and ``empty_cache`` take plain C signatures, so they point at the library.
    The CUDA-graph hooks (``beginAllocateToPool`` and friends) take C++ types, so they point at
    the C++ shim (``gpuhal.build_shim``), which also wraps malloc to route a capture's
    allocations to a gpuhal graph pool. Without a C++ compiler to build the shim, graphs
    captured with ``torch.cuda.graph`` are refused (gpuhal's malloc reports why) and everything
    else works.
    """
    from . import build_shim

    lib = ctypes.CDLL(library)
    address = lambda dll, name: ctypes.cast(getattr(dll, name), ctypes.c_void_p).value
    shim = None
    try:
        path = build_shim.default_output(library)
        if not path.exists() or path.stat().st_mtime < build_shim.SOURCE.stat().st_mtime:
            path = build_shim.build(library, path)
        shim = ctypes.CDLL(str(path))
    except (RuntimeError, OSError) as error:
        warnings.warn(f"gpuhal: torch.cuda.graph will be refused under gpuhal: {error}")
    if shim is None:
        allocator = torch.cuda.memory.CUDAPluggableAllocator(library, MALLOC_SYMBOL, FREE_SYMBOL)
    else:
        allocator = torch.cuda.memory.CUDAPluggableAllocator(str(path), "gpuhal_shim_malloc", "gpuhal_shim_free")
        hooks = allocator._allocator
        hooks.set_begin_allocate_to_pool(address(shim, "gpuhal_shim_begin_allocate_to_pool"))
        hooks.set_end_allocate_to_pool_fn(address(shim, "gpuhal_shim_end_allocate_to_pool"))
        hooks.set_release_pool(address(shim, "gpuhal_shim_release_pool"))
        # Keep the shim loaded for the life of the process, as torch does with the library.
        _loaded.append(shim)
    hooks = allocator._allocator
    hooks.set_record_stream_fn(address(lib, "gpuhal_torch_record_stream"))
    hooks.set_reset_fn(address(lib, "gpuhal_torch_empty_cache"))
    _loaded.append(lib)
    return allocator


_loaded = []


def malloc(size: int, device: int = 0, stream: int = 0) -> int:
    """Calls ``gpuhal_torch_malloc`` as torch would; returns the address, or raises
    :class:`GpuhalError` (status None, the library's message) when it returns NULL."""
    address = _lib.lib().gpuhal_torch_malloc(size, device, stream)
    if not address:
        raise GpuhalError(None, _lib.last_error_message(), MALLOC_SYMBOL)
    return address


def free(address: int, size: int, device: int = 0, stream: int = 0) -> None:
    """Calls ``gpuhal_torch_free`` as torch would. It never fails: errors are counted
    (``gpuhal.free_errors`` in :func:`memory_stats`)."""
    _lib.lib().gpuhal_torch_free(address, size, device, stream)


def _data_pointer(tensor) -> int:
    """A tensor's data pointer (anything with ``data_ptr()``), or an address given as an int."""
    if isinstance(tensor, bool):
        raise TypeError(f"expected a tensor or an address, not {tensor!r}")
    if isinstance(tensor, int):
        return tensor
    data_ptr = getattr(tensor, "data_ptr", None)
    if data_ptr is None:
        raise TypeError(f"expected a tensor (with data_ptr()) or an address, not {type(tensor).__name__}")
    return int(data_ptr())


def sleep(keep=(), device: int = 0) -> dict:
    """Gives the device's physical memory back while every tensor's address stays valid, as
    vLLM's sleep mode: the allocations of the tensors in ``keep`` (or addresses) are copied to
    host memory and restored by :func:`wake`; every other tensor reads back undefined after
    wake. No work may touch the GPU's memory, and nothing should be allocated, until
    :func:`wake`. Needs ``enable(segments="growable")`` (``GPUHAL_SEGMENTS=growable``); raises
    :class:`GpuhalError` (``UNSUPPORTED``) otherwise, with nothing released.

    Returns ``{"released_bytes", "kept_bytes", "discarded_bytes", "blocks"}``; while asleep,
    :func:`memory_stats` reports the bytes in ``"asleep_bytes"``.
    """
    pointers = [_data_pointer(tensor) for tensor in keep]
    array = (ctypes.c_void_p * max(len(pointers), 1))(*pointers)
    report = GpuhalSleepReport()
    call("gpuhal_torch_sleep", device, array, len(pointers), ctypes.byref(report))
    return report.as_dict()


def wake(device: int = 0) -> dict:
    """Maps physical memory again under what :func:`sleep` released and restores the kept
    tensors. Returns ``{"mapped_bytes", "restored_bytes", "blocks"}``."""
    report = GpuhalWakeReport()
    call("gpuhal_torch_wake", device, ctypes.byref(report))
    return report.as_dict()


def raw_stats(device: int = 0) -> dict:
    """gpuhal's own counters for the PyTorch allocator's device, plus ``malloc_errors`` and
    ``free_errors`` (failures the PyTorch entry points could only count)."""
    stats = GpuhalMemoryStats()
    call("gpuhal_torch_memory_stats", device, ctypes.byref(stats))
    malloc_errors, free_errors = ctypes.c_uint64(), ctypes.c_uint64()
    call("gpuhal_torch_error_counts", device, ctypes.byref(malloc_errors), ctypes.byref(free_errors))
    counters = stats.as_dict()
    counters["malloc_errors"] = malloc_errors.value
    counters["free_errors"] = free_errors.value
    return counters


@contextlib.contextmanager
def record_trace(path: str, device: int = 0):
    """Records every allocation and free the PyTorch allocator makes on ``device`` inside the
    ``with`` block into ``path`` (``.jsonl`` or ``.jsonl.gz``), the trace format that
    ``cargo xtask replay PATH --timeline out.svg`` draws. Yields a dict whose ``"events"`` is
    filled in when the block ends."""
    handle = GpuhalDevice()
    call("gpuhal_torch_device", device, ctypes.byref(handle))
    call("gpuhal_trace_start", handle, os.fsencode(path))
    result = {"path": path, "events": None}
    try:
        yield result
    finally:
        events = ctypes.c_uint64()
        call("gpuhal_trace_stop", handle, ctypes.byref(events))
        result["events"] = events.value


def memory_report(device: int = 0) -> dict:
    """What holds the PyTorch allocator's memory on ``device``: every native allocation with
    its pieces (live, idle, pending on which streams), per-stream and per-kind totals, the
    largest idle piece, fragmentation, the graph pools and the event pool."""
    return _lib.report_json("gpuhal_torch_memory_report_json", device)


def memory_stats(device: int = 0) -> dict:
    """The PyTorch allocator's counters, keyed like ``torch.cuda.memory_stats()`` where the
    meaning is the same, and every gpuhal counter under ``gpuhal.<name>``.

    Torch names used, and what they hold here:

    - ``allocated_bytes.all.current`` / ``.peak``: bytes in live allocations (gpuhal's
      ``live_bytes`` / ``peak_live_bytes``), now and at the peak.
    - ``allocation.all.current``: number of live allocations (``live_count``).
    - ``active.all.current``: live allocations plus freed ones still waiting for their streams
      before reuse (``live_count + pending_count``), as torch counts blocks awaiting stream events
      as active.
    - ``reserved_bytes.all.current`` / ``.peak``: bytes held from the driver (``reserved_bytes`` /
      ``peak_reserved_bytes``); ``segment.all.current``: native allocations held
      (``reserved_count``).
    - ``num_device_alloc`` / ``num_device_free``: driver allocations and frees made
      (``native_allocations`` / ``native_frees``).
    - ``asleep_bytes``: bytes of device memory released by :func:`sleep` and not yet woken
      (torch has no such counter; the name follows its style).
    - ``num_alloc_retries``: allocations retried after releasing cached memory on out-of-memory
      (``oom_retries``); ``num_ooms``: allocations that failed for lack of memory (``oom_errors``).

    Left out on purpose: torch's cumulative ``.allocated``/``.freed`` counters and the
    ``small_pool``/``large_pool`` split (gpuhal keeps neither), ``requested_bytes`` (gpuhal does
    not separate the request from its rounding), and ``inactive_split*`` (torch's bytes of free
    pieces of split segments; gpuhal's ``cached_bytes`` counts all idle memory, split or whole, so
    it is reported only as ``gpuhal.cached_bytes``).
    """
    raw = raw_stats(device)
    stats = {
        "allocated_bytes.all.current": raw["live_bytes"],
        "allocated_bytes.all.peak": raw["peak_live_bytes"],
        "allocation.all.current": raw["live_count"],
        "active.all.current": raw["live_count"] + raw["pending_count"],
        "reserved_bytes.all.current": raw["reserved_bytes"],
        "reserved_bytes.all.peak": raw["peak_reserved_bytes"],
        "segment.all.current": raw["reserved_count"],
        "num_device_alloc": raw["native_allocations"],
        "num_device_free": raw["native_frees"],
        "num_alloc_retries": raw["oom_retries"],
        "num_ooms": raw["oom_errors"],
        "asleep_bytes": raw["asleep_bytes"],
    }
    stats.update({f"gpuhal.{name}": value for name, value in raw.items()})
    return dict(sorted(stats.items()))
