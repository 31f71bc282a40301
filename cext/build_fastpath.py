"""cffi build script for netd's fast path (API mode, out of line).

Used by setup.py (``cffi_modules``), so ``pip install .`` / ``pip install -e .`` compile it.
It must not import the netd package. The cdef is read from cext/fastpath.h.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def read_cdef() -> str:
    """The declarations of fastpath.h between its cdef-begin and cdef-end markers (one source)."""
    with open(os.path.join(HERE, "fastpath.h")) as fh:
        text = fh.read()
    return text.split("cdef-begin", 1)[1].split("*/", 1)[1].split("/* cdef-end */", 1)[0]


CDEF = read_cdef()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "netd._fastpath",
    '#include "fastpath.h"',
    sources=[os.path.relpath(os.path.join(HERE, "fastpath.c"))],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
