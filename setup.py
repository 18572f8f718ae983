"""Builds the C++ sample-index helpers (megasci._C) with pybind11; the rest of the package is in pyproject.toml."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

# pyproject.toml cannot declare a compiled extension, so it stays here.
setup(
    ext_modules=[
        Pybind11Extension(
            "megasci._C",
            ["csrc/helpers.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        ),
    ],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
