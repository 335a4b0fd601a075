"""Builds the C++ shim that lets ``torch.cuda.graph`` route a capture's allocations to a gpuhal
graph pool (``csrc/torch_graph_shim.cpp``), next to the library it links to.

    python3 -m gpuhal.build_shim [--lib PATH] [--out PATH] [--cxx COMPILER]

It needs a C++17 compiler and gpuhal's library, not torch's headers. ``gpuhal.torch.enable``
builds it on first use when it is missing and a compiler is found.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from . import _lib

SOURCE = Path(__file__).with_name("csrc") / "torch_graph_shim.cpp"
SHIM_NAME = "libgpuhal_torch_shim.so"


def default_output(library: str) -> Path:
    """Where the shim goes: beside the library when that is writable, else a user cache."""
    beside = Path(library).resolve().with_name(SHIM_NAME)
    if os.access(beside.parent, os.W_OK):
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpuhal"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / SHIM_NAME


def build(library: Optional[str] = None, out: Optional[Path] = None, cxx: Optional[str] = None) -> Path:
    """Compiles the shim against ``library`` (the gpuhal C library) and returns its path."""
    library = str(Path(library or _lib.library_path()).resolve())
    out = Path(out) if out else default_output(library)
    compiler = cxx or os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("building gpuhal's torch graph shim needs a C++ compiler (set CXX)")
    lib_dir = str(Path(library).parent)
    lib_file = Path(library).name
    command = [
        compiler, "-std=c++17", "-O2", "-shared", "-fPIC", str(SOURCE), "-o", str(out),
        f"-L{lib_dir}", f"-l:{lib_file}", f"-Wl,-rpath,{lib_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the shim failed ({' '.join(command)}):\n{result.stderr}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", help="gpuhal's C library (default: the one the package loads)")
    parser.add_argument("--out", type=Path, help="where to write the shim")
    parser.add_argument("--cxx", help="the C++ compiler")
    args = parser.parse_args(argv)
    print(build(args.lib, args.out, args.cxx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
