"""Loading libgpuhal_capi and declaring its C ABI for ctypes.

Every function of the C ABI is declared here once, with its argument and result types, so a call
with a wrong argument type fails in Python instead of corrupting the stack. Statuses become
:class:`GpuhalError` through :func:`check`, which also reads the calling thread's last error
message (the library keeps one per thread, and ctypes makes the call and the read on the same
thread).
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
import threading
from pathlib import Path
from typing import Optional

LIBRARY_ENV = "GPUHAL_LIBRARY"
LIBRARY_FILE = "libgpuhal_capi.so"


class Status(enum.IntEnum):
    """``GpuhalStatus``: what every call of the C ABI returns."""

    OK = 0
    INVALID_ARGUMENT = 1
    INVALID_HANDLE = 2
    UNKNOWN_POINTER = 3
    FOREIGN = 4
    OUT_OF_MEMORY = 5
    UNSUPPORTED = 6
    NATIVE = 7
    TIMEOUT = 8
    FENCE_REGRESSED = 9
    CAPTURE = 10
    IMPORT_REFUSED = 11
    MISUSE = 12
    INTERNAL = 13


class MemoryKind(enum.IntEnum):
    """``GPUHAL_MEMORY_*``: where an allocation lives."""

    DEVICE = 0
    MANAGED = 1
    HOST_PINNED = 2


class _Handle(ctypes.Structure):
    """A handle: a struct holding one ``uint64_t id``, passed by value (0 is the null handle).

    Each handle kind is its own type, so ctypes refuses a stream where a device is expected.
    """

    _fields_ = [("id", ctypes.c_uint64)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id})"


class GpuhalDevice(_Handle):
    pass


class GpuhalStream(_Handle):
    pass


class GpuhalEvent(_Handle):
    pass


class GpuhalFence(_Handle):
    pass


class GpuhalGraphPool(_Handle):
    pass


class GpuhalGraph(_Handle):
    pass


class GpuhalGraphExec(_Handle):
    pass


class GpuhalImport(_Handle):
    pass


#: The fields of ``GpuhalMemoryStats``, all ``uint64_t``, in the order of the C struct.
MEMORY_STATS_FIELDS = (
    "live_bytes",
    "live_count",
    "peak_live_bytes",
    "reserved_bytes",
    "reserved_count",
    "peak_reserved_bytes",
    "cached_bytes",
    "cached_count",
    "pending_count",
    "native_allocations",
    "native_frees",
    "cache_hits",
    "cache_misses",
    "oom_retries",
    "oom_errors",
    "failed_frees",
    "asleep_bytes",
)


class GpuhalMemoryStats(ctypes.Structure):
    """``GpuhalMemoryStats``: one device's allocator counters."""

    _fields_ = [(field, ctypes.c_uint64) for field in MEMORY_STATS_FIELDS]

    def as_dict(self) -> dict:
        return {field: int(getattr(self, field)) for field in MEMORY_STATS_FIELDS}


#: The fields of ``GpuhalSleepReport`` (``gpuhal_sleep``), all ``uint64_t``, in order.
SLEEP_REPORT_FIELDS = ("released_bytes", "kept_bytes", "discarded_bytes", "blocks")
#: The fields of ``GpuhalWakeReport`` (``gpuhal_wake``), all ``uint64_t``, in order.
WAKE_REPORT_FIELDS = ("mapped_bytes", "restored_bytes", "blocks")


class GpuhalSleepReport(ctypes.Structure):
    """``GpuhalSleepReport``: what putting a device to sleep released and kept."""

    _fields_ = [(field, ctypes.c_uint64) for field in SLEEP_REPORT_FIELDS]

    def as_dict(self) -> dict:
        return {field: int(getattr(self, field)) for field in SLEEP_REPORT_FIELDS}


class GpuhalWakeReport(ctypes.Structure):
    """``GpuhalWakeReport``: what waking a device mapped and restored."""

    _fields_ = [(field, ctypes.c_uint64) for field in WAKE_REPORT_FIELDS]

    def as_dict(self) -> dict:
        return {field: int(getattr(self, field)) for field in WAKE_REPORT_FIELDS}


class GpuhalOpenOptions(ctypes.Structure):
    """``GpuhalOpenOptions`` (``gpuhal_device_open_with``): ``segments`` is 0 (native) or 1
    (growable); ``sharing`` serves device memory from an exportable pool."""

    _fields_ = [("segments", ctypes.c_uint32), ("sharing", ctypes.c_bool)]


EXPORT_DATA_LEN = 64


class GpuhalSharedMemory(ctypes.Structure):
    """``GpuhalSharedMemory``: an exported allocation (``gpuhal_export``), for
    ``gpuhal_import_shared`` in another process; ``fd`` (-1 for the mock's token pools) is the
    caller's to close."""

    _fields_ = [
        ("backend", ctypes.c_char * 16),
        ("fd", ctypes.c_int),
        ("token", ctypes.c_uint64),
        ("allocation", ctypes.c_uint8 * EXPORT_DATA_LEN),
        ("offset", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
    ]


class GpuhalSharedEvent(ctypes.Structure):
    """``GpuhalSharedEvent``: an interprocess event's handle (``gpuhal_shared_event_create``)."""

    _fields_ = [("backend", ctypes.c_char * 16), ("data", ctypes.c_uint8 * EXPORT_DATA_LEN)]


class GpuhalError(Exception):
    """A call of the C ABI failed.

    ``status`` is the :class:`Status` (the raw int for a status this module does not know; None
    for a function that reports failure by returning NULL, whose ``status_name`` is ``"NULL"``),
    ``status_name`` the library's name for it, ``message`` the library's last error message for
    the calling thread (what was asked and why), ``call`` the C function that failed.
    """

    def __init__(self, status: Optional[int], message: Optional[str], call: Optional[str] = None):
        if status is None:  # a call that reports failure by returning NULL, without a status
            self.status, self.status_name = None, "NULL"
        else:
            try:
                self.status = Status(status)
            except ValueError:
                self.status = status
            self.status_name = status_name(status)
        self.message = message
        self.call = call
        # The library's message names the function already; ``call`` only stands in without one.
        detail = message or f"{call or 'a gpuhal call'} failed without a message"
        super().__init__(f"{self.status_name}: {detail}")


_c = ctypes
_vp = ctypes.c_void_p
_u64 = ctypes.c_uint64
_u32 = ctypes.c_uint32
_status = ctypes.c_int32  # GpuhalStatus is a C enum: a 32-bit int on every ABI gpuhal targets

#: name -> (restype, argtypes), transcribed from the C ABI contract.
_SIGNATURES = {
    "gpuhal_last_error_message": (_c.c_char_p, []),
    "gpuhal_status_name": (_c.c_char_p, [_status]),
    "gpuhal_device_open": (_status, [_c.c_char_p, _u32, _c.POINTER(GpuhalDevice)]),
    "gpuhal_device_close": (_status, [GpuhalDevice]),
    "gpuhal_device_open_with": (
        _status,
        [_c.c_char_p, _u32, _c.POINTER(GpuhalOpenOptions), _c.POINTER(GpuhalDevice)],
    ),
    "gpuhal_export": (_status, [GpuhalDevice, _vp, _c.POINTER(GpuhalSharedMemory)]),
    "gpuhal_import_shared": (_status, [GpuhalDevice, _c.POINTER(GpuhalSharedMemory), _c.POINTER(_vp)]),
    "gpuhal_shared_import_release": (_status, [GpuhalDevice, _vp]),
    "gpuhal_shared_event_create": (
        _status,
        [GpuhalDevice, _c.POINTER(GpuhalEvent), _c.POINTER(GpuhalSharedEvent)],
    ),
    "gpuhal_shared_event_open": (
        _status,
        [GpuhalDevice, _c.POINTER(GpuhalSharedEvent), _c.POINTER(GpuhalEvent)],
    ),
    "gpuhal_can_access_peer": (_status, [GpuhalDevice, GpuhalDevice, _c.POINTER(_c.c_bool)]),
    "gpuhal_enable_peer_access": (_status, [GpuhalDevice, GpuhalDevice]),
    "gpuhal_send_shared": (
        _status,
        [_c.c_int, _c.POINTER(GpuhalSharedMemory), _c.POINTER(GpuhalSharedEvent)],
    ),
    "gpuhal_receive_shared": (
        _status,
        [_c.c_int, _c.POINTER(GpuhalSharedMemory), _c.POINTER(GpuhalSharedEvent), _c.POINTER(_c.c_bool)],
    ),
    "gpuhal_stream_create": (_status, [GpuhalDevice, _c.POINTER(GpuhalStream)]),
    "gpuhal_stream_adopt": (_status, [GpuhalDevice, _vp, _c.POINTER(GpuhalStream)]),
    "gpuhal_stream_destroy": (_status, [GpuhalStream]),
    "gpuhal_stream_synchronize": (_status, [GpuhalStream]),
    "gpuhal_malloc": (_status, [GpuhalDevice, _u64, _u32, GpuhalStream, _c.POINTER(_vp)]),
    "gpuhal_free": (_status, [GpuhalDevice, _vp]),
    "gpuhal_record_use": (_status, [GpuhalDevice, _vp, GpuhalStream]),
    "gpuhal_stream_fill": (_status, [GpuhalStream, _vp, _u64, _c.c_uint8]),
    "gpuhal_stream_write": (_status, [GpuhalStream, _vp, _vp, _u64]),
    "gpuhal_stream_read": (_status, [GpuhalStream, _vp, _vp, _u64]),
    "gpuhal_memory_stats": (_status, [GpuhalDevice, _c.POINTER(GpuhalMemoryStats)]),
    "gpuhal_set_memory_limit": (_status, [GpuhalDevice, _u64]),
    "gpuhal_set_cache_limit": (_status, [GpuhalDevice, _u64]),
    "gpuhal_trim": (_status, [GpuhalDevice, _c.POINTER(_u64)]),
    "gpuhal_sleep": (_status, [GpuhalDevice, _c.POINTER(_vp), _c.c_size_t, _c.POINTER(GpuhalSleepReport)]),
    "gpuhal_wake": (_status, [GpuhalDevice, _c.POINTER(GpuhalWakeReport)]),
    "gpuhal_torch_sleep": (_status, [_c.c_int, _c.POINTER(_vp), _c.c_size_t, _c.POINTER(GpuhalSleepReport)]),
    "gpuhal_torch_wake": (_status, [_c.c_int, _c.POINTER(GpuhalWakeReport)]),
    "gpuhal_torch_malloc": (_vp, [_c.c_ssize_t, _c.c_int, _vp]),
    "gpuhal_torch_free": (None, [_vp, _c.c_ssize_t, _c.c_int, _vp]),
    "gpuhal_torch_malloc_in_pool": (_vp, [_c.c_ssize_t, _c.c_int, _vp, _u64, _u64]),
    "gpuhal_torch_release_pool": (None, [_c.c_int, _u64, _u64]),
    "gpuhal_torch_record_stream": (None, [_vp, _vp]),
    "gpuhal_torch_empty_cache": (None, []),
    "gpuhal_torch_memory_stats": (_status, [_c.c_int, _c.POINTER(GpuhalMemoryStats)]),
    "gpuhal_torch_error_counts": (_status, [_c.c_int, _c.POINTER(_u64), _c.POINTER(_u64)]),
    "gpuhal_torch_device": (_status, [_c.c_int, _c.POINTER(GpuhalDevice)]),
    "gpuhal_trace_start": (_status, [GpuhalDevice, _c.c_char_p]),
    "gpuhal_trace_stop": (_status, [GpuhalDevice, _c.POINTER(_u64)]),
    "gpuhal_memory_report_json": (_status, [GpuhalDevice, _c.POINTER(_vp), _c.POINTER(_c.c_size_t)]),
    "gpuhal_torch_memory_report_json": (_status, [_c.c_int, _c.POINTER(_vp), _c.POINTER(_c.c_size_t)]),
    "gpuhal_string_free": (None, [_vp]),
}


def report_json(name: str, first_argument) -> dict:
    """Calls a ``gpuhal_*memory_report_json`` function and returns the report, parsed; the
    library's string is freed here."""
    text, length = _c.c_void_p(), _c.c_size_t()
    call(name, first_argument, _c.byref(text), _c.byref(length))
    try:
        return json.loads(_c.string_at(text, length.value).decode("utf-8"))
    finally:
        lib().gpuhal_string_free(text)

_loaded: Optional[ctypes.CDLL] = None
_loaded_path: Optional[str] = None
_load_lock = threading.Lock()


def library_path() -> str:
    """The library to load: ``$GPUHAL_LIBRARY`` if set, else the copy bundled in this package.

    Raises ``FileNotFoundError`` naming both places when neither exists, so a missing build is
    an error and never a silently skipped feature.
    """
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{LIBRARY_ENV}={explicit} names no file (resolved to {path})")
        return str(path)
    bundled = Path(__file__).resolve().parent / LIBRARY_FILE
    if bundled.is_file():
        return str(bundled)
    raise FileNotFoundError(
        f"gpuhal's C library was not found: {LIBRARY_ENV} is not set and {bundled} does not exist "
        "(install the package with pip, or build the library with `cargo build -p gpuhal-capi` "
        f"and point {LIBRARY_ENV} at target/debug/{LIBRARY_FILE})"
    )


def lib() -> ctypes.CDLL:
    """The loaded library, every function declared; loaded on first call."""
    global _loaded, _loaded_path
    with _load_lock:
        if _loaded is None:
            path = library_path()
            loaded = ctypes.CDLL(path)
            missing = []
            for name, (restype, argtypes) in _SIGNATURES.items():
                try:
                    function = getattr(loaded, name)
                except AttributeError:
                    missing.append(name)
                    continue
                function.restype = restype
                function.argtypes = argtypes
            if missing:
                raise ImportError(f"{path} lacks functions of the gpuhal C ABI: {', '.join(missing)}")
            _loaded, _loaded_path = loaded, path
        return _loaded


def loaded_path() -> Optional[str]:
    """The path the library was loaded from, or None if it has not been loaded yet."""
    return _loaded_path


def last_error_message() -> Optional[str]:
    """The calling thread's last error message, or None if this thread had no failure yet."""
    raw = lib().gpuhal_last_error_message()
    return raw.decode("utf-8", "replace") if raw is not None else None


def status_name(status: int) -> str:
    """The library's name for a status (``"GPUHAL_STATUS_INVALID_HANDLE"``, …)."""
    try:
        raw = lib().gpuhal_status_name(int(status))
    except (OSError, ImportError):
        raw = None
    if raw:
        return raw.decode("utf-8", "replace")
    try:
        return f"GPUHAL_STATUS_{Status(status).name}"
    except ValueError:
        return f"status {int(status)}"


def check(status: int, call: Optional[str] = None) -> None:
    """Raises :class:`GpuhalError` (with the thread's last error message) unless ``status`` is OK."""
    if status != Status.OK:
        raise GpuhalError(status, last_error_message(), call)


def call(name: str, *args) -> None:
    """Calls the C function ``name`` and :func:`check` s its status."""
    check(getattr(lib(), name)(*args), name)
