"""The Python layer over gpuhal's C ABI, on the mock backend: no torch, no GPU.

Run from the repository root after `cargo build -p gpuhal-capi`:

    GPUHAL_LIBRARY=target/debug/libgpuhal_capi.so PYTHONPATH=python \
        python3 -m unittest discover -s python/tests -v

Without the library every test errors (the module's setup raises FileNotFoundError): a missing
build must never look like a pass.
"""

import ctypes
import os
import unittest

import gpuhal
import gpuhal.torch as gtorch
from gpuhal import Device, GpuhalError, MemoryKind, Status, _lib

BACKEND = "mock:coherent"
MiB = 1 << 20


def setUpModule():
    # Fails the whole module loudly when the library is missing or lacks a function.
    _lib.lib()
    # Configure the library only: these tests call gpuhal_torch_malloc/free through ctypes, as
    # torch would, and must not install the allocator into a torch that may be installed.
    installed = gtorch.enable(kind="device", backend=BACKEND, install_allocator=False)
    assert installed is False, "install_allocator=False must only configure the library"


def raw():
    return gtorch.raw_stats(0)


class TorchEntryPoints(unittest.TestCase):
    """gpuhal_torch_malloc/free and the stats, called exactly as PyTorch calls them."""

    def test_allocations_are_aligned_disjoint_and_counted_live(self):
        sizes = [1, 255, 256, 4097, MiB, 3 * MiB + 7]
        before = gtorch.memory_stats()
        addresses = [gtorch.malloc(size) for size in sizes]
        try:
            for address, size in zip(addresses, sizes):
                self.assertEqual(address % 256, 0, f"{size}-byte allocation at {address:#x}")
            spans = sorted(zip(addresses, sizes))
            for (start, size), (next_start, _) in zip(spans, spans[1:]):
                self.assertLessEqual(start + size, next_start, "allocations overlap")
            held = gtorch.memory_stats()
            self.assertGreaterEqual(
                held["allocated_bytes.all.current"] - before["allocated_bytes.all.current"], sum(sizes)
            )
            self.assertEqual(held["allocation.all.current"] - before["allocation.all.current"], len(sizes))
            self.assertGreaterEqual(held["allocated_bytes.all.peak"], held["allocated_bytes.all.current"])
            self.assertGreaterEqual(held["reserved_bytes.all.current"], held["allocated_bytes.all.current"])
        finally:
            for address, size in zip(addresses, sizes):
                gtorch.free(address, size)
        after = gtorch.memory_stats()
        self.assertEqual(after["allocated_bytes.all.current"], before["allocated_bytes.all.current"])
        self.assertEqual(after["gpuhal.free_errors"], before["gpuhal.free_errors"])

    def test_a_freed_block_is_reused_from_the_cache(self):
        stream = 0x51  # any value: the mock gives each distinct stream value its own stream
        first = gtorch.malloc(2 * MiB, 0, stream)
        gtorch.free(first, 2 * MiB, 0, stream)
        before = raw()
        second = gtorch.malloc(2 * MiB, 0, stream)
        after = raw()
        gtorch.free(second, 2 * MiB, 0, stream)
        self.assertEqual(after["cache_hits"] - before["cache_hits"], 1)
        self.assertEqual(after["native_allocations"], before["native_allocations"])
        self.assertGreaterEqual(after["live_bytes"] - before["live_bytes"], 2 * MiB)

    def test_a_captures_allocations_stay_in_its_pool(self):
        # What torch.cuda.graph's allocate-to-pool hooks ask for (through the C++ shim): memory
        # drawn for a capture goes back to its pool, never to eager allocations.
        lib, stream, size = _lib.lib(), 0x61, 3 * MiB
        errors_before = gtorch.memory_stats()["gpuhal.free_errors"]
        captured = lib.gpuhal_torch_malloc_in_pool(size, 0, stream, 7, 1)
        self.assertTrue(captured, _lib.last_error_message())
        gtorch.free(captured, size, 0, stream)
        eager = gtorch.malloc(size, 0, stream)
        self.assertNotEqual(eager, captured, "a capture's freed memory was handed to eager work")
        again = lib.gpuhal_torch_malloc_in_pool(size, 0, stream, 7, 1)
        self.assertEqual(again, captured, "a second capture into the same pool reuses its memory")
        other_pool = lib.gpuhal_torch_malloc_in_pool(size, 0, stream, 8, 1)
        self.assertNotIn(other_pool, (captured, eager))
        lib.gpuhal_torch_release_pool(0, 7, 1)
        lib.gpuhal_torch_release_pool(0, 8, 1)
        # Released pools still free what they handed out, and nothing is counted as an error.
        before = raw()
        for address in (again, other_pool, eager):
            gtorch.free(address, size, 0, stream)
        after = raw()
        self.assertEqual(gtorch.memory_stats()["gpuhal.free_errors"], errors_before)
        # Graph pools count their live bytes in their own stats; the device's live bytes drop by
        # the eager allocation alone.
        self.assertEqual(before["live_bytes"] - after["live_bytes"], size)

    def test_record_stream_is_taken_and_empty_cache_releases(self):
        lib, size = _lib.lib(), 5 * MiB
        errors = lambda: gtorch.memory_stats()["gpuhal.free_errors"]
        before = errors()
        address = gtorch.malloc(size, 0, 0x71)
        lib.gpuhal_torch_record_stream(address, 0x72)
        gtorch.free(address, size, 0, 0x71)
        self.assertEqual(errors(), before)
        lib.gpuhal_torch_record_stream(0x1234, 0x72)  # never handed out: counted, not fatal
        self.assertEqual(errors(), before + 1)
        lib.gpuhal_torch_empty_cache()
        self.assertEqual(raw()["cached_bytes"], 0)

    def test_memory_report_names_the_allocation_torch_holds(self):
        address = gtorch.malloc(3 * MiB)
        try:
            report = gtorch.memory_report()
            holding = [a for a in report["allocations"] if a["address"] <= address < a["address"] + a["size"]]
            self.assertEqual(len(holding), 1, report)
            self.assertIn("live", [p["state"] for p in holding[0]["pieces"]])
            self.assertEqual(report["reserved_bytes"], gtorch.raw_stats()["reserved_bytes"])
        finally:
            gtorch.free(address, 3 * MiB)

    def test_record_trace_writes_what_the_allocator_did(self):
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "run.jsonl")
            with gtorch.record_trace(path) as recording:
                address = gtorch.malloc(MiB, 0, 0x81)
                gtorch.free(address, MiB, 0, 0x81)
            self.assertEqual(recording["events"], 2)
            with open(path) as trace:
                lines = trace.read().splitlines()
            self.assertEqual(len(lines), 3, lines)
            self.assertIn('"alloc"', lines[1])
            self.assertIn('"free"', lines[2])

    def test_memory_stats_has_torch_names_and_every_gpuhal_counter(self):
        stats = gtorch.memory_stats()
        torch_names = {
            "allocated_bytes.all.current",
            "allocated_bytes.all.peak",
            "allocation.all.current",
            "active.all.current",
            "reserved_bytes.all.current",
            "reserved_bytes.all.peak",
            "segment.all.current",
            "num_device_alloc",
            "num_device_free",
            "num_alloc_retries",
            "num_ooms",
            "asleep_bytes",
        }
        gpuhal_names = {f"gpuhal.{name}" for name in _lib.MEMORY_STATS_FIELDS}
        gpuhal_names |= {"gpuhal.malloc_errors", "gpuhal.free_errors"}
        self.assertEqual(set(stats), torch_names | gpuhal_names)
        for name, value in stats.items():
            self.assertIsInstance(value, int, name)
            self.assertGreaterEqual(value, 0, name)
        self.assertEqual(list(stats), sorted(stats), "keys are sorted, as torch.cuda.memory_stats() has them")
        self.assertGreaterEqual(stats["reserved_bytes.all.peak"], stats["reserved_bytes.all.current"])

    def test_free_of_a_pointer_never_handed_out_is_counted_and_harmless(self):
        before = raw()
        gtorch.free(0xDEAD0000, 4096)
        after = raw()
        self.assertEqual(after["free_errors"] - before["free_errors"], 1)
        self.assertEqual(after["live_bytes"], before["live_bytes"])
        self.assertIsNotNone(gpuhal.last_error_message())
        self.assert_still_serves()

    def test_double_free_is_counted_and_the_allocator_keeps_serving(self):
        address = gtorch.malloc(8192)
        gtorch.free(address, 8192)
        before = raw()
        gtorch.free(address, 8192)
        after = raw()
        self.assertEqual(after["free_errors"] - before["free_errors"], 1)
        self.assertEqual(after["live_bytes"], before["live_bytes"])
        self.assert_still_serves()

    def test_free_of_null_is_a_no_op(self):
        before = raw()
        gtorch.free(0, 0)
        self.assertEqual(raw()["free_errors"], before["free_errors"])

    def test_negative_size_returns_null_with_a_message(self):
        self.assert_malloc_refused(-1, 0)

    def test_size_past_any_memory_returns_null_with_a_message(self):
        self.assert_malloc_refused(2**63 - 1, 0)
        self.assert_malloc_refused(2**62, 0)

    def test_device_index_out_of_range_returns_null_with_a_message(self):
        for device in (1000, -1):
            with self.assertRaises(GpuhalError) as refused:
                gtorch.malloc(256, device)
            # No gpuhal device serves that index, so there is no counter to count it in.
            self.assertIn(str(device), refused.exception.message)
        self.assert_still_serves()

    def test_enable_again_with_other_settings_is_refused(self):
        with self.assertRaises(RuntimeError):
            gtorch.enable(kind="managed", backend=BACKEND, install_allocator=False)
        self.assertFalse(gtorch.enable(kind="device", backend=BACKEND, install_allocator=False), "a no-op")

    def test_enable_rejects_a_bad_kind_before_touching_the_library(self):
        with self.assertRaises(ValueError):
            gtorch.enable(kind="pinned")

    def assert_malloc_refused(self, size, device):
        before = raw()
        with self.assertRaises(GpuhalError) as refused:
            gtorch.malloc(size, device)
        self.assertEqual(refused.exception.status_name, "NULL")
        self.assertTrue(refused.exception.message, f"malloc({size}, device={device}) gave no message")
        self.assertEqual(raw()["malloc_errors"] - before["malloc_errors"], 1)
        self.assert_still_serves()

    def assert_still_serves(self):
        address = gtorch.malloc(1024)
        self.assertNotEqual(address, 0)
        gtorch.free(address, 1024)


class GenericApi(unittest.TestCase):
    """The backend-neutral functions through Device and Stream."""

    def test_statuses_have_the_library_names(self):
        for status in Status:
            self.assertEqual(_lib.status_name(status), f"GPUHAL_STATUS_{status.name}")

    def test_round_trip_through_a_stream(self):
        with Device(BACKEND) as device, device.stream() as stream:
            address = device.malloc(4096, stream)
            self.assertEqual(address % 256, 0)
            payload = bytes(range(256)) * 16
            stream.write(address, payload)
            self.assertEqual(stream.read(address, 4096), payload)
            stream.fill(address + 100, 50, 0xAB)
            stream.synchronize()
            self.assertEqual(stream.read(address, 4096), payload[:100] + b"\xab" * 50 + payload[150:])
            self.assertGreaterEqual(device.memory_stats()["live_bytes"], 4096)
            report = device.memory_report()
            live = [a for a in report["allocations"] if a["address"] <= address < a["address"] + a["size"]]
            self.assertEqual([p["state"] for p in live[0]["pieces"]], ["live"], report)
            self.assertEqual(report["reserved_bytes"], device.memory_stats()["reserved_bytes"])
            device.free(address)
            self.assertEqual(device.memory_stats()["live_bytes"], 0)

    def test_bad_backend_name_is_an_error_naming_it(self):
        with self.assertRaises(GpuhalError) as failed:
            Device("no-such-backend")
        self.assertNotEqual(failed.exception.status, Status.OK)
        self.assertIn("no-such-backend", failed.exception.message)
        self.assertIn("no-such-backend", str(failed.exception))

    def test_closed_device_handle_is_invalid(self):
        device = Device(BACKEND)
        device.close()
        for action in (device.close, device.stream, device.memory_stats):
            with self.assertRaises(GpuhalError) as failed:
                action()
            self.assertEqual(failed.exception.status, Status.INVALID_HANDLE, action)

    def test_destroyed_stream_and_null_handles_are_invalid(self):
        with Device(BACKEND) as device:
            stream = device.stream()
            stream.close()
            with self.assertRaises(GpuhalError) as failed:
                stream.synchronize()
            self.assertEqual(failed.exception.status, Status.INVALID_HANDLE)
            out = _lib.GpuhalStream()
            status = _lib.lib().gpuhal_stream_create(_lib.GpuhalDevice(0), ctypes.byref(out))
            self.assertEqual(status, Status.INVALID_HANDLE)

    def test_unknown_and_double_freed_pointers_are_reported(self):
        with Device(BACKEND) as device, device.stream() as stream:
            with self.assertRaises(GpuhalError) as unknown:
                device.free(0xDEAD0000)
            self.assertEqual(unknown.exception.status, Status.UNKNOWN_POINTER)
            address = device.malloc(512, stream)
            device.free(address)
            with self.assertRaises(GpuhalError) as twice:
                device.free(address)
            self.assertEqual(twice.exception.status, Status.UNKNOWN_POINTER)
            device.free(0)  # NULL: a no-op

    def test_memory_limit_refuses_what_does_not_fit(self):
        with Device(BACKEND) as device, device.stream() as stream:
            device.set_memory_limit(4 * MiB)
            with self.assertRaises(GpuhalError) as refused:
                device.malloc(8 * MiB, stream)
            self.assertEqual(refused.exception.status, Status.OUT_OF_MEMORY)
            address = device.malloc(MiB, stream, MemoryKind.DEVICE)
            device.free(address)

    def test_a_stream_handle_is_refused_where_a_device_is_expected(self):
        with Device(BACKEND) as device, device.stream() as stream:
            with self.assertRaises(ctypes.ArgumentError):
                _lib.lib().gpuhal_device_close(stream.handle)


class Loading(unittest.TestCase):
    def test_a_library_path_naming_no_file_is_an_error(self):
        saved = os.environ.get(_lib.LIBRARY_ENV)
        os.environ[_lib.LIBRARY_ENV] = "no/such/libgpuhal_capi.so"
        try:
            with self.assertRaises(FileNotFoundError):
                _lib.library_path()
        finally:
            if saved is None:
                del os.environ[_lib.LIBRARY_ENV]
            else:
                os.environ[_lib.LIBRARY_ENV] = saved


if __name__ == "__main__":
    unittest.main()
