/* netd's UDP fast path: TUN <-> UDP forwarding in flannel-udp's wire format.
 *
 * C owns the file descriptors and the packets; Python owns policy. The interface is small and
 * fixed: open, start, swap the route table, read counters, stop. Everything below is also
 * declared in cext/build_fastpath.py (cffi cdef); keep the two in step.
 *
 * Wire format (flannel udp): the UDP payload is the inner IP packet, nothing else.
 * Addresses and ports in this interface are in host byte order.
 */
#ifndef NETD_FASTPATH_H
#define NETD_FASTPATH_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin: cext/build_fastpath.py hands everything up to cdef-end to cffi's cdef */
/* Offload features (requested in fp_open, effective ones read back with fp_features). */
#define FP_TUN_TSO  1 /* TUN with IFF_VNET_HDR + TUNSETOFFLOAD: TCP super-packets both ways */
#define FP_UDP_GSO  2 /* UDP_SEGMENT: one sendmsg carries many datagrams */
#define FP_UDP_GRO  4 /* UDP_GRO: one recvmsg returns many datagrams */

typedef struct fp_stats {
    /* TUN -> peers */
    uint64_t tx_packets;   /* inner packets sent (after segmentation) */
    uint64_t tx_bytes;     /* inner bytes sent */
    uint64_t tx_syscalls;  /* sendmsg/sendmmsg calls */
    uint64_t tun_reads;    /* read() calls on the TUN that returned a frame */
    uint64_t tx_drop_no_route;
    uint64_t tx_drop_malformed;
    uint64_t tx_drop_socket_error;
    /* peers -> TUN */
    uint64_t rx_packets;   /* inner packets accepted */
    uint64_t rx_bytes;
    uint64_t rx_syscalls;  /* recvmmsg calls that returned data */
    uint64_t tun_writes;   /* frames written to the TUN (a coalesced one counts once) */
    uint64_t rx_drop_no_route;   /* inner source is in no leased subnet */
    uint64_t rx_drop_spoofed;    /* outer source is not the PublicIP leasing the inner source */
    uint64_t rx_drop_malformed;
    uint64_t rx_drop_tun_full;
    uint64_t rx_drop_tun_error;
    uint64_t rx_drop_socket_error;
    uint64_t rx_drop_empty;      /* zero-length datagrams */
    /* the device */
    uint64_t tun_failures; /* times the TUN was found gone (deleted): see fp_tun_error */
} fp_stats;

typedef struct fp_route {
    uint32_t net;       /* IPv4 subnet address */
    uint8_t plen;       /* prefix length 0..32 (IPv6: 0..128) */
    uint32_t peer_ip;   /* PublicIP of the host leasing the subnet (IPv4 for either family) */
    uint16_t peer_port; /* its UDP port */
    uint8_t family;     /* 6: an IPv6 subnet in net6 (a dual-stack lease); 4 or 0: IPv4 in net */
    uint8_t net6[16];   /* IPv6 subnet address, network byte order */
} fp_route;

struct fp;
struct fp_table;

/* Open (or re-attach to) the persistent TUN `name` and bind a UDP socket on bind_ip:port.
 * `features` is what to try; what the kernel refuses is dropped (see fp_features).
 * On failure returns NULL and writes a message into err. */
struct fp *fp_open(const char *name, uint32_t bind_ip, uint16_t port, int features, char *err, size_t errlen);
int fp_features(const struct fp *fp);
/* Starts forwarding: threads = 1 serves both directions in one thread, 2 gives each direction its
 * own. Every buffer the threads need is allocated before they start. Returns 0 (also when already
 * started that way), -EINVAL, -EBUSY (started the other way), -ENOMEM or -errno. */
int fp_start(struct fp *fp, int threads);
/* Stops and joins the threads. Bound: a thread sees the stop flag after its current poll (at most
 * 100 ms) or batch; a sender waiting on a full socket gives up its wait within 10 ms of the stop
 * (otherwise it waits up to 1 s per send, holding no route table). So fp_stop returns within about
 * 110 ms plus the time to forward one batch (32 frames). */
void fp_stop(struct fp *fp);
void fp_close(struct fp *fp); /* stops, closes the fds (the TUN stays: it is persistent) */
/* The TUN's health: 0 while it works; once a read or write finds it gone (deleted under us:
 * EBADFD), that errno, for good. The threads then stop polling it (no spinning), count
 * tun_failures once, and write 1 to the eventfd given here (-1: none), so the owner can re-create
 * the TUN: close this instance and open a new one. */
int fp_tun_error(const struct fp *fp);
void fp_set_event_fd(struct fp *fp, int fd);
void fp_get_stats(const struct fp *fp, fp_stats *out);

/* Replace the whole route table atomically while traffic flows. Returns 0 or -ENOMEM/-EINVAL. */
int fp_set_routes(struct fp *fp, const fp_route *routes, int n);
/* The table the threads route by, read back (up to max routes into out, in no order); returns how
 * many it holds (more than max: call again with room for them). */
int fp_get_routes(struct fp *fp, fp_route *out, int max);

/* The pieces, exposed for tests (and used by the threads). */
uint16_t fp_checksum(const uint8_t *buf, size_t len);
/* Whether the TX copy+checksum uses AVX2: enable = 0 forces the portable loop (for tests);
 * returns what is now in use (AVX2 only where the CPU has it; the default). */
int fp_simd(int enable);
struct fp_table *fp_table_build(const fp_route *routes, int n);
int fp_table_lookup(const struct fp_table *t, uint32_t addr, fp_route *out);
int fp_table_lookup6(const struct fp_table *t, const uint8_t *addr16, fp_route *out);
void fp_table_free(struct fp_table *t);
/* Look `addr` up `iterations` times through the same lock-free path the threads use;
 * returns how many lookups found no route (for concurrent-update tests). Up to 4 callers may run
 * it at once, each in a hazard slot of its own; a fifth gets UINT64_MAX. */
uint64_t fp_lookup_loop(struct fp *fp, uint32_t addr, uint64_t iterations);

/* What the TX thread would send, as seen by a test: one datagram to peer_ip:peer_port carrying
 * len bytes of UDP payload, cut by the kernel into gso_size pieces (0: sent as one datagram). */
typedef struct fp_datagram {
    uint32_t peer_ip;
    uint16_t peer_port;
    uint16_t gso_size;
    uint32_t len;
} fp_datagram;

/* TX: `n` frames as read from a TUN with a vnet header (10 bytes + packet; lens[i] bytes each,
 * back to back in frames; they may be modified) in one batch, routed by `routes`, through the
 * TX thread's own code; gso: whether UDP_SEGMENT may be used. The datagrams go back to back into
 * out, described in dgrams. Returns how many datagrams, or -1; st gets the batch's counters. */
int fp_tx_batch(uint8_t *frames, const uint32_t *lens, int n, const fp_route *routes, int nroutes, int gso,
                uint8_t *out, size_t cap, fp_datagram *dgrams, int max_dgrams, fp_stats *st);

/* TX: one frame (see fp_tx_batch) bound anywhere. Writes the inner packets it becomes back to
 * back, each `*seg_size` bytes (the last may be shorter). Returns the number of bytes written to
 * out, or -1 if malformed. */
long fp_tx_prepare(const uint8_t *frame, size_t len, uint8_t *out, size_t cap, uint32_t *seg_size);

/* RX: whether the RX thread would accept inner packet `pkt` (len bytes) from outer source
 * outer_src, routes being the table; 1 or 0, with the drop counted in st (zeroed first). */
int fp_rx_accept(const fp_route *routes, int nroutes, uint32_t outer_src, const uint8_t *pkt, size_t len,
                 fp_stats *st);

/* RX: coalesce `n` inner packets (lens[i] bytes each, back to back in pkts) as the RX thread
 * would, writing each resulting TUN frame (10-byte vnet header + packet) back to back into out
 * and its length into out_lens. Returns the number of frames, or -1 if out is too small. */
int fp_rx_coalesce(const uint8_t *pkts, const uint32_t *lens, int n, uint8_t *out, size_t cap,
                   uint32_t *out_lens, int max_out);

/* cdef-end */
#endif
