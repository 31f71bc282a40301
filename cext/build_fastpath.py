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
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"]


def make_builder(extra_cflags: tuple[str, ...] = (), extra_ldflags: tuple[str, ...] = (),
                 absolute: bool = False) -> FFI:
    """The cffi builder of netd._fastpath; scripts/sanitizers builds the same sources again with
    ASan+UBSan or TSan flags into a directory of its own (absolute paths: cffi compiles there)."""
    where = os.path.abspath if absolute else os.path.relpath
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "netd._fastpath",
        '#include "fastpath.h"',
        sources=[where(os.path.join(HERE, "fastpath.c"))],
        include_dirs=[where(HERE)],
        extra_compile_args=[*CFLAGS, *extra_cflags],
        extra_link_args=["-pthread", *extra_ldflags],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
