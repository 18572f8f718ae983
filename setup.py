"""Installs megasci and builds the C++ sample-index helpers (megasci._C) with pybind11."""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext_modules = [
    Pybind11Extension(
        "megasci._C",
        ["csrc/helpers.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(
    name="megasci",
    version="0.1.0",
    description="Megatron-style training stack from raw arXiv LaTeX to a scientific language model",
    packages=find_packages(include=["megasci", "megasci.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "sentencepiece>=0.2.0",
        "protobuf>=3.20",
        "tqdm>=4.60",
        "zstandard>=0.21",
        # corpus builder (megasci/corpus)
        "pylatexenc>=2.10",
        "charset-normalizer>=3.0",
        "datasketch>=2.0",  # MinHash schemes, for signatures made in workers
        "langdetect>=1.0.9",
        "matplotlib>=3.5",
        # training (megasci/training)
        "pyyaml>=6.0",
        "tensorboard>=2.10",
    ],
    extras_require={
        "dev": ["pytest>=7", "tokenizers>=0.15", "transformers>=4.40", "safetensors>=0.4", "pyarrow>=14"],
        # For machines without CUDA (CI): a triton release whose CPU interpreter runs our kernels, so they are
        # tested on every change. A CUDA torch brings the triton it was built with; never pin over that one.
        "interpreter": ["triton==3.9.0; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        # Parquet input for preprocessing (OpenWebMath ships as Parquet); JSONL needs nothing extra.
        "parquet": ["pyarrow>=14"],
        # Optional accelerators: import-guarded, never required for the fast path.
        "gpu": ["triton>=3.0"],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
