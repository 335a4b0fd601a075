"""Builds gpuhal's C library (the gpuhal-capi crate) with cargo and bundles it in the package.

The library is loaded with ctypes, not imported as a Python extension, so it is installed under
its plain name (``gpuhal/libgpuhal_capi.so``, no ``cpython-3XX`` suffix) and the wheel is tagged
``py3-none-<platform>``: one wheel serves every Python 3 on the platform.
"""

import os

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools_rust import Binding, RustExtension
from setuptools_rust.build import build_rust

LIBRARY_FILE = "libgpuhal_capi.so"


class build_rust_plain_name(build_rust):
    """Installs the cdylib as ``gpuhal/libgpuhal_capi.so`` instead of under an extension name."""

    def get_dylib_ext_path(self, ext, target_fname):
        suffixed = super().get_dylib_ext_path(ext, target_fname)
        return os.path.join(os.path.dirname(suffixed), LIBRARY_FILE)


class bdist_wheel_any_python(bdist_wheel):
    """Tags the wheel for any Python 3 on this platform: it holds no Python extension."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    rust_extensions=[
        RustExtension(
            # The dotted name places the artifact in the package; the file name comes from
            # build_rust_plain_name.
            "gpuhal.libgpuhal_capi",
            path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "capi", "Cargo.toml"),
            binding=Binding.NoBinding,
            py_limited_api=False,
        )
    ],
    cmdclass={"build_rust": build_rust_plain_name, "bdist_wheel": bdist_wheel_any_python},
)
