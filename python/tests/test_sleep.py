"""gpuhal.torch.sleep / wake on the mock. The library reads its configuration once per process,
and the other tests' process runs native segments, so the growable case runs in a child
process of its own (sleep there is what an engine on torch does: keep the weights, drop the
KV cache)."""

import ctypes
import os
import subprocess
import sys
import textwrap
import unittest

import gpuhal.torch as gtorch
from gpuhal import GpuhalError, Status

CHILD = textwrap.dedent(
    """
    import ctypes, json
    import gpuhal.torch as gtorch
    from gpuhal import _lib
    from gpuhal._lib import GpuhalDevice, GpuhalStream, call

    class Tensor:  # what sleep needs of a torch tensor
        def __init__(self, address):
            self.address = address
        def data_ptr(self):
            return self.address

    MiB = 1 << 20
    gtorch.enable(kind="device", backend="mock:coherent", segments="growable", install_allocator=False)
    torch_stream = 0x71
    weights = gtorch.malloc(3 * MiB, 0, torch_stream)
    kv_cache = gtorch.malloc(MiB, 0, torch_stream)
    device, stream = GpuhalDevice(), GpuhalStream()
    call("gpuhal_torch_device", 0, ctypes.byref(device))
    call("gpuhal_stream_create", device, ctypes.byref(stream))
    payload = bytes(i % 251 for i in range(3 * MiB))
    call("gpuhal_stream_write", stream, weights, payload, len(payload))
    call("gpuhal_stream_fill", stream, kv_cache, MiB, 0x11)
    call("gpuhal_stream_synchronize", stream)
    # A view into the weights (a data pointer past the start) keeps the whole allocation.
    slept = gtorch.sleep(keep=[Tensor(weights + 4096)])
    asleep = gtorch.memory_stats()["asleep_bytes"]
    woken = gtorch.wake()
    back = ctypes.create_string_buffer(3 * MiB)
    call("gpuhal_stream_read", stream, weights, back, 3 * MiB)
    gone = ctypes.create_string_buffer(MiB)
    call("gpuhal_stream_read", stream, kv_cache, gone, MiB)
    try:
        gtorch.sleep(keep=[Tensor(0x10)])
        bad = None
    except _lib.GpuhalError as error:
        bad = error.status_name
    call("gpuhal_stream_destroy", stream)
    gtorch.free(weights, 3 * MiB, 0, torch_stream)
    gtorch.free(kv_cache, MiB, 0, torch_stream)
    print(json.dumps({
        "slept": slept, "woken": woken, "asleep": asleep,
        "asleep_after": gtorch.memory_stats()["asleep_bytes"],
        "kept_intact": back.raw == payload,
        "discarded": sorted(set(gone.raw)),
        "bad_pointer": bad,
    }))
    """
)


class SleepAndWake(unittest.TestCase):
    def test_growable_sleep_keeps_the_named_tensors_and_poisons_the_rest(self):
        env = dict(os.environ)
        env.pop("GPUHAL_SEGMENTS", None)
        child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
        self.assertEqual(child.returncode, 0, child.stderr)
        import json

        result = json.loads(child.stdout.strip().splitlines()[-1])
        MiB = 1 << 20
        self.assertEqual(result["slept"]["kept_bytes"], 3 * MiB, result)
        self.assertGreaterEqual(result["slept"]["discarded_bytes"], MiB, result)
        self.assertGreaterEqual(result["slept"]["released_bytes"], 4 * MiB, result)
        self.assertGreaterEqual(result["asleep"], 4 * MiB, result)
        self.assertEqual(result["asleep_after"], 0, result)
        self.assertEqual(result["woken"]["restored_bytes"], 3 * MiB, result)
        self.assertTrue(result["kept_intact"], result)
        self.assertEqual(result["discarded"], [0xA5], "the mock poisons discarded bytes with 0xA5")
        self.assertEqual(result["bad_pointer"], "GPUHAL_STATUS_UNKNOWN_POINTER", result)

    def test_native_segments_refuse_sleep_and_release_nothing(self):
        # This process's library was configured by test_mock's setUpModule (native segments)
        # or is configured here the same way.
        gtorch.enable(kind="device", backend="mock:coherent", install_allocator=False)
        address = gtorch.malloc(4096)
        try:
            with self.assertRaises(GpuhalError) as refused:
                gtorch.sleep(keep=[address])
            self.assertEqual(refused.exception.status, Status.UNSUPPORTED)
            self.assertIn("gpuhal_torch_sleep", refused.exception.message)
            self.assertEqual(gtorch.memory_stats()["asleep_bytes"], 0)
            with self.assertRaises(TypeError):
                gtorch.sleep(keep=["not a tensor"])
        finally:
            gtorch.free(address, 4096)


if __name__ == "__main__":
    unittest.main()
