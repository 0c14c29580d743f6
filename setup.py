"""The optional native CPU kernels (affjax/models/csrc); everything else is in pyproject.toml.

The extension is optional: without a C++ compiler the install still succeeds and affjax uses its XLA forms
(`affjax.models.cpu_kernels.built()` says which)."""
import glob

import jax.ffi
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    'affjax.models._cpu_kernels', sorted(glob.glob('affjax/models/csrc/*.cc')),
    include_dirs=[jax.ffi.include_dir()], language='c++', optional=True,
    extra_compile_args=['-std=c++17', '-O3', '-fno-math-errno'])])
