"""Build shim. `pip install .` builds nothing native: the C++/CUDA sources in csrc/ are JIT-compiled on
first use (see steu_ext/_build.py, or `python -m steu_ext.build` to compile ahead of time)."""
from setuptools import setup

setup()
