"""cffi build script for netd's fast path (API mode, out of line).

Used by setup.py (``cffi_modules``), so ``pip install .`` / ``pip install -e .`` compile it.
It must not import the netd package. The cdef mirrors cext/fastpath.h.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
#define FP_TUN_TSO 1
#define FP_UDP_GSO 2
#define FP_UDP_GRO 4
typedef struct fp_stats {
    uint64_t tx_packets; uint64_t tx_bytes; uint64_t tx_syscalls; uint64_t tun_reads;
    uint64_t tx_drop_no_route; uint64_t tx_drop_malformed; uint64_t tx_drop_socket_error;
    uint64_t rx_packets; uint64_t rx_bytes; uint64_t rx_syscalls; uint64_t tun_writes;
    uint64_t rx_drop_no_route; uint64_t rx_drop_spoofed; uint64_t rx_drop_malformed;
    uint64_t rx_drop_tun_full; uint64_t rx_drop_tun_error; uint64_t rx_drop_socket_error;
} fp_stats;
typedef struct fp_route { uint32_t net; uint8_t plen; uint32_t peer_ip; uint16_t peer_port; } fp_route;
struct fp;
struct fp_table;
struct fp *fp_open(const char *name, uint32_t bind_ip, uint16_t port, int features, char *err, size_t errlen);
int fp_features(const struct fp *fp);
int fp_tun_fd(const struct fp *fp);
int fp_start(struct fp *fp);
void fp_stop(struct fp *fp);
void fp_close(struct fp *fp);
void fp_get_stats(const struct fp *fp, fp_stats *out);
int fp_set_routes(struct fp *fp, const fp_route *routes, int n);
uint16_t fp_checksum(const uint8_t *buf, size_t len);
struct fp_table *fp_table_build(const fp_route *routes, int n);
int fp_table_lookup(const struct fp_table *t, uint32_t addr, fp_route *out);
void fp_table_free(struct fp_table *t);
uint64_t fp_lookup_loop(struct fp *fp, uint32_t addr, uint64_t iterations);
long fp_tx_prepare(const uint8_t *frame, size_t len, uint8_t *out, size_t cap, uint32_t *seg_size);
int fp_rx_coalesce(const uint8_t *pkts, const uint32_t *lens, int n, uint8_t *out, size_t cap,
                   uint32_t *out_lens, int max_out);
"""

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
