# The C fast path is built by cffi (cext/build_fastpath.py); everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["cext/build_fastpath.py:ffibuilder"])
