/* netd's UDP fast path. See fastpath.h for the interface and the wire format.
 *
 * Two threads: TX reads frames from the TUN and sends them to the peer leasing the inner
 * destination; RX receives datagrams and writes the inner packets to the TUN when the outer
 * source is the PublicIP leasing the inner source (anti-spoofing).
 *
 * Speed comes from the kernel's offloads:
 *  - TUN with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4): the kernel hands us TCP super-packets
 *    of up to 64 KB; we cut them into MSS-sized inner packets (fresh IP/TCP headers and
 *    checksums) and pack them into UDP_SEGMENT datagrams, a batch's worth per sendmmsg (see the
 *    TX queue);
 *  - UDP_GRO: one recvmsg returns many datagrams of one size from one peer; consecutive
 *    segments of one TCP flow are coalesced back into one super-packet written to the TUN with
 *    a vnet header (gso TCPV4, checksum left to the kernel);
 *  - otherwise recvmmsg/sendmmsg batches.
 * What the kernel refuses is switched off at open time (fp_features tells what is on).
 *
 * The route table is immutable once built; fp_set_routes swaps a pointer. Readers publish the
 * table they use in a hazard slot and clear it before blocking, so the writer frees an old table
 * only when no thread can still hold it. No lock is taken on the packet path.
 */
#define _GNU_SOURCE
#include "fastpath.h"

#include <errno.h>
#include <fcntl.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/udp.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define VNET_LEN 10          /* struct virtio_net_hdr */
#define MAX_PKT 65535        /* largest IPv4 packet */
#define FRAME_CAP (VNET_LEN + MAX_PKT + 1)
/* The kernel copies to user space with `rep movsb`, which on AMD Zen runs ~15x slower when the
 * destination's offset in its 64-byte line is 1..31 bytes past the source's (measured here:
 * 2.7 vs 40 GB/s). A destination at offset 0 of a line is never in that window. So receive
 * buffers are 64-byte aligned, and TUN frames are placed so that the payload after a 10-byte
 * vnet header and 52 bytes of IPv4+TCP headers (with timestamps: the common case) starts a line. */
#define FRAME_SKEW 2
#define FRAME_STRIDE (((FRAME_CAP + FRAME_SKEW + 63) / 64) * 64)
#define TX_BATCH 32
#define RX_BATCH 32
#define RX_BUF 65536
#define GSO_MAX_SEGS 64       /* UDP_MAX_SEGMENTS on older kernels */
#define POLL_MS 100

struct vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
} __attribute__((packed));

/* ---------------------------------------------------------------- checksums ---- */
/* Ones-complement sums over native-order words: the folded result stored back in native
 * order is the correct network-order checksum (RFC 1071 byte-order independence). */
static inline uint64_t add_carry(uint64_t a, uint64_t b) {
    uint64_t s = a + b;
    return s + (s < a); /* end-around carry: ones-complement addition on 64-bit words */
}

static uint64_t csum_tail(const uint8_t *p, size_t len, uint64_t acc) {
    if (len >= 4) {
        uint32_t a;
        memcpy(&a, p, 4);
        acc = add_carry(acc, a);
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t a;
        memcpy(&a, p, 2);
        acc = add_carry(acc, a);
        p += 2;
        len -= 2;
    }
    if (len) {
        uint16_t a = 0;
        memcpy(&a, p, 1);
        acc = add_carry(acc, a);
    }
    return acc;
}

/* Four independent accumulators: the carries of one do not wait for another's, which makes the
 * loop ~2.3x faster than a single add-with-carry chain (the TX thread sums every payload byte). */
static uint64_t csum_add(const uint8_t *p, size_t len, uint64_t acc) {
    uint64_t s1 = 0, s2 = 0, s3 = 0;
    while (len >= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        memcpy(&c, p + 16, 8);
        memcpy(&d, p + 24, 8);
        acc = add_carry(acc, a);
        s1 = add_carry(s1, b);
        s2 = add_carry(s2, c);
        s3 = add_carry(s3, d);
        p += 32;
        len -= 32;
    }
    acc = add_carry(add_carry(acc, s1), add_carry(s2, s3));
    while (len >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        acc = add_carry(acc, a);
        p += 8;
        len -= 8;
    }
    return csum_tail(p, len, acc);
}

/* Copy and checksum in one pass (the payload is read once), accumulators as in csum_add. */
static uint64_t csum_copy_scalar(uint8_t *dst, const uint8_t *src, size_t len, uint64_t acc) {
    uint64_t s1 = 0, s2 = 0, s3 = 0;
    while (len >= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, src, 8);
        memcpy(&b, src + 8, 8);
        memcpy(&c, src + 16, 8);
        memcpy(&d, src + 24, 8);
        memcpy(dst, &a, 8);
        memcpy(dst + 8, &b, 8);
        memcpy(dst + 16, &c, 8);
        memcpy(dst + 24, &d, 8);
        acc = add_carry(acc, a);
        s1 = add_carry(s1, b);
        s2 = add_carry(s2, c);
        s3 = add_carry(s3, d);
        src += 32;
        dst += 32;
        len -= 32;
    }
    memcpy(dst, src, len);
    return csum_add(src, len, add_carry(add_carry(acc, s1), add_carry(s2, s3)));
}

#if defined(__x86_64__)
/* The same with AVX2 (1.7x the scalar loop here): 32-bit words widened into 64-bit lanes, which
 * cannot overflow, so no carries are handled until the lanes are added up. */
__attribute__((target("avx2"))) static uint64_t csum_copy_avx2(uint8_t *dst, const uint8_t *src, size_t len,
                                                               uint64_t acc) {
    __m256i z = _mm256_setzero_si256(), a0 = z, a1 = z, a2 = z, a3 = z;
    while (len >= 64) {
        __m256i x = _mm256_loadu_si256((const __m256i *)src), y = _mm256_loadu_si256((const __m256i *)(src + 32));
        _mm256_storeu_si256((__m256i *)dst, x);
        _mm256_storeu_si256((__m256i *)(dst + 32), y);
        a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(x, z));
        a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(x, z));
        a2 = _mm256_add_epi64(a2, _mm256_unpacklo_epi32(y, z));
        a3 = _mm256_add_epi64(a3, _mm256_unpackhi_epi32(y, z));
        src += 64;
        dst += 64;
        len -= 64;
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    for (int i = 0; i < 4; i++)
        acc = add_carry(acc, lanes[i]);
    return csum_copy_scalar(dst, src, len, acc);
}
#endif

static int simd = -1; /* -1: not decided yet (benign race: every thread decides the same) */

int fp_simd(int enable) {
#if defined(__x86_64__)
    simd = enable && __builtin_cpu_supports("avx2");
#else
    simd = 0 * enable;
#endif
    return simd;
}

static uint64_t csum_copy(uint8_t *dst, const uint8_t *src, size_t len, uint64_t acc) {
    if (simd < 0)
        fp_simd(1);
#if defined(__x86_64__)
    if (simd)
        return csum_copy_avx2(dst, src, len, acc);
#endif
    return csum_copy_scalar(dst, src, len, acc);
}

static uint16_t csum_fold(uint64_t s) {
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* pseudo header of IPv4 TCP/UDP: addresses straight from the IP header (memory order). */
static uint64_t pseudo4(const uint8_t *ip, uint8_t proto, uint32_t l4len) {
    uint64_t s = csum_add(ip + 12, 8, 0);
    s = add_carry(s, htons(proto));
    return add_carry(s, htons((uint16_t)l4len));
}

static void ip4_set_checksum(uint8_t *ip) {
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~csum_fold(csum_add(ip, ihl, 0));
    memcpy(ip + 10, &c, 2);
}

uint16_t fp_checksum(const uint8_t *buf, size_t len) {
    return ntohs((uint16_t)~csum_fold(csum_add(buf, len, 0)));
}

/* Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header sum. The range must lie
 * past the IP header (found by the structured fuzz: a vnet header saying csum_start 0 had the sum
 * written over the IP header's first bytes). */
static int complete_csum(uint8_t *pkt, size_t len, uint16_t start, uint16_t off) {
    size_t l3 = (pkt[0] >> 4) == 4 ? (size_t)(pkt[0] & 0x0f) * 4 : 40;
    if (l3 < 20 || start < l3 || (size_t)start + off + 2 > len)
        return -1;
    uint16_t c = (uint16_t)~csum_fold(csum_add(pkt + start, len - start, 0));
    /* a UDP checksum that sums to 0 is sent as 0xffff (0 means "none", which IPv6 forbids); the
     * checksum field sits at offset 6 of a UDP header, 16 of a TCP one */
    int udp = (pkt[0] >> 4) == 4 ? pkt[9] == IPPROTO_UDP : off == 6;
    if (udp && c == 0)
        c = 0xffff;
    memcpy(pkt + start + off, &c, 2);
    return 0;
}

/* ---------------------------------------------------------------- route table ---- */
/* One open-addressing hash set of (prefix, length) per family; a lookup probes once per distinct
 * prefix length, longest first (usually one length: every lease has the same SubnetLen). IPv6
 * prefixes are two 64-bit words in host order. */
struct slot {
    uint32_t net;
    uint32_t peer_ip;
    uint16_t peer_port;
    uint8_t plen;
    uint8_t used;
};

struct slot6 {
    uint64_t hi, lo;
    uint32_t peer_ip;
    uint16_t peer_port;
    uint8_t plen;
    uint8_t used;
};

struct fp_table {
    uint32_t mask; /* slots - 1 */
    int nlens;
    uint8_t lens[33]; /* distinct prefix lengths, longest first */
    struct slot *slots;
    uint32_t mask6;
    int nlens6;
    uint8_t lens6[129];
    struct slot6 *slots6;
};

static inline uint32_t prefix_mask(int plen) { return plen == 0 ? 0 : 0xffffffffu << (32 - plen); }

static inline uint32_t slot_hash(uint32_t net, uint8_t plen) {
    uint32_t h = net * 2654435761u ^ ((uint32_t)plen * 0x9e3779b1u);
    return h ^ (h >> 15);
}

static inline uint64_t load_be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

static inline void store_be64(uint8_t *p, uint64_t v) {
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
}

/* addr (16 bytes, network order) masked to plen bits, as two words */
static inline void prefix6(const uint8_t *addr, int plen, uint64_t *hi, uint64_t *lo) {
    uint64_t h = load_be64(addr), l = load_be64(addr + 8);
    *hi = plen >= 64 ? h : plen == 0 ? 0 : h & (~0ull << (64 - plen));
    *lo = plen <= 64 ? 0 : plen == 128 ? l : l & (~0ull << (128 - plen));
}

static inline uint32_t slot_hash6(uint64_t hi, uint64_t lo, uint8_t plen) {
    uint64_t h = hi * 0x9e3779b97f4a7c15ull ^ lo * 0xc2b2ae3d27d4eb4full ^ (uint64_t)plen * 0x165667b19e3779f9ull;
    h ^= h >> 29;
    return (uint32_t)(h ^ (h >> 32));
}

static uint32_t table_size(int n) {
    uint32_t size = 8;
    while (size < (uint32_t)n * 2 + 2)
        size <<= 1;
    return size;
}

struct fp_table *fp_table_build(const fp_route *routes, int n) {
    if (n < 0)
        return NULL;
    struct fp_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    int n6 = 0;
    for (int i = 0; i < n; i++)
        n6 += routes[i].family == 6;
    t->mask = table_size(n - n6) - 1;
    t->mask6 = table_size(n6) - 1;
    t->slots = calloc(t->mask + 1, sizeof(struct slot));
    t->slots6 = calloc(t->mask6 + 1, sizeof(struct slot6));
    if (!t->slots || !t->slots6) {
        fp_table_free(t);
        return NULL;
    }
    int seen[33] = {0}, seen6[129] = {0};
    for (int i = 0; i < n; i++) {
        const fp_route *r = &routes[i];
        if (r->family == 6) {
            uint8_t plen = r->plen > 128 ? 128 : r->plen;
            uint64_t hi, lo;
            prefix6(r->net6, plen, &hi, &lo);
            uint32_t h = slot_hash6(hi, lo, plen) & t->mask6;
            while (t->slots6[h].used && !(t->slots6[h].hi == hi && t->slots6[h].lo == lo && t->slots6[h].plen == plen))
                h = (h + 1) & t->mask6;
            t->slots6[h] = (struct slot6){hi, lo, r->peer_ip, r->peer_port, plen, 1};
            seen6[plen] = 1;
            continue;
        }
        uint8_t plen = r->plen > 32 ? 32 : r->plen;
        uint32_t net = r->net & prefix_mask(plen);
        uint32_t h = slot_hash(net, plen) & t->mask;
        while (t->slots[h].used && !(t->slots[h].net == net && t->slots[h].plen == plen))
            h = (h + 1) & t->mask;
        t->slots[h] = (struct slot){net, r->peer_ip, r->peer_port, plen, 1};
        seen[plen] = 1;
    }
    for (int l = 32; l >= 0; l--)
        if (seen[l])
            t->lens[t->nlens++] = (uint8_t)l;
    for (int l = 128; l >= 0; l--)
        if (seen6[l])
            t->lens6[t->nlens6++] = (uint8_t)l;
    return t;
}

/* Longest prefix first: one hash probe per distinct prefix length (usually one). */
int fp_table_lookup(const struct fp_table *t, uint32_t addr, fp_route *out) {
    if (!t)
        return 0;
    for (int i = 0; i < t->nlens; i++) {
        uint8_t plen = t->lens[i];
        uint32_t net = addr & prefix_mask(plen);
        uint32_t h = slot_hash(net, plen) & t->mask;
        while (t->slots[h].used) {
            if (t->slots[h].net == net && t->slots[h].plen == plen) {
                if (out)
                    *out = (fp_route){.net = net, .plen = plen, .peer_ip = t->slots[h].peer_ip,
                                      .peer_port = t->slots[h].peer_port, .family = 4};
                return 1;
            }
            h = (h + 1) & t->mask;
        }
    }
    return 0;
}

int fp_table_lookup6(const struct fp_table *t, const uint8_t *addr, fp_route *out) {
    if (!t)
        return 0;
    for (int i = 0; i < t->nlens6; i++) {
        uint8_t plen = t->lens6[i];
        uint64_t hi, lo;
        prefix6(addr, plen, &hi, &lo);
        uint32_t h = slot_hash6(hi, lo, plen) & t->mask6;
        while (t->slots6[h].used) {
            const struct slot6 *sl = &t->slots6[h];
            if (sl->hi == hi && sl->lo == lo && sl->plen == plen) {
                if (out) {
                    *out = (fp_route){.plen = plen, .peer_ip = sl->peer_ip, .peer_port = sl->peer_port, .family = 6};
                    store_be64(out->net6, hi);
                    store_be64(out->net6 + 8, lo);
                }
                return 1;
            }
            h = (h + 1) & t->mask6;
        }
    }
    return 0;
}

void fp_table_free(struct fp_table *t) {
    if (t) {
        free(t->slots);
        free(t->slots6);
        free(t);
    }
}

/* ---------------------------------------------------------------- instance ---- */
/* Hazard slots: one per forwarding direction, and HZ_TESTS for concurrent fp_lookup_loop callers,
 * each of which claims a slot of its own (test_claimed) for the length of its loop. */
#define HZ_TESTS 4
enum { HZ_TX, HZ_RX, HZ_TEST0, HZ_N = HZ_TEST0 + HZ_TESTS };

struct tx_state;
struct rx_state;

struct fp {
    int tun_fd;
    int udp_fd;
    int features;
    int vnet; /* the TUN carries vnet headers */
    _Atomic(struct fp_table *) table;
    _Atomic(struct fp_table *) hazard[HZ_N];
    atomic_int test_claimed[HZ_TESTS];
    pthread_mutex_t writer; /* serialises fp_set_routes callers, never taken by the threads */
    atomic_int stop;
    atomic_int tun_error; /* errno of the read/write that found the TUN gone; 0 while it works */
    atomic_int event_fd;  /* an eventfd of the caller's, written once when the TUN is lost; -1: none */
    int started;
    int threads; /* 1: both directions in one thread; 2: a thread per direction */
    pthread_t tx, rx;
    struct tx_state *txs; /* the threads' buffers, allocated by fp_start before any thread runs */
    struct rx_state *rxs;
    fp_stats stats; /* updated with relaxed atomic adds once per batch */
};

/* A read or write on the TUN failed in a way that retrying cannot mend: the device was deleted
 * (the kernel then answers EBADFD: the file lost its device). Recorded once, counted, and announced
 * on the caller's eventfd; the threads then stop polling the TUN (it would report POLLERR at once,
 * forever) until Python re-creates it, which it does by closing this instance and opening a new
 * one. Not EIO: a write to a TUN that is merely down fails with EIO (counted as tun_error). */
static int tun_gone(int err) { return err == EBADFD || err == ENODEV || err == ENXIO; }

static void tun_lost(struct fp *fp, int err) {
    int none = 0;
    if (!atomic_compare_exchange_strong(&fp->tun_error, &none, err))
        return;
    __atomic_fetch_add(&fp->stats.tun_failures, 1, __ATOMIC_RELAXED);
    int efd = atomic_load(&fp->event_fd);
    if (efd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(efd, &one, sizeof(one));
        (void)w;
    }
}

static struct fp_table *table_acquire(struct fp *fp, int slot) {
    struct fp_table *t;
    do {
        t = atomic_load(&fp->table);
        atomic_store(&fp->hazard[slot], t);
    } while (t != atomic_load(&fp->table));
    return t;
}

static void table_release(struct fp *fp, int slot) { atomic_store(&fp->hazard[slot], NULL); }

int fp_set_routes(struct fp *fp, const fp_route *routes, int n) {
    struct fp_table *t = fp_table_build(routes, n);
    if (!t)
        return n < 0 ? -EINVAL : -ENOMEM;
    pthread_mutex_lock(&fp->writer);
    struct fp_table *old = atomic_exchange(&fp->table, t);
    for (;;) { /* wait until no thread can still be reading the old table */
        int busy = 0;
        for (int i = 0; i < HZ_N; i++)
            busy |= atomic_load(&fp->hazard[i]) == old;
        if (!busy || !old)
            break;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_unlock(&fp->writer);
    fp_table_free(old);
    return 0;
}

int fp_get_routes(struct fp *fp, fp_route *out, int max) {
    /* Under the writer lock no swap happens, so the current table cannot be freed meanwhile. */
    pthread_mutex_lock(&fp->writer);
    const struct fp_table *t = atomic_load(&fp->table);
    int n = 0;
    for (uint32_t i = 0; t && i <= t->mask; i++) {
        const struct slot *sl = &t->slots[i];
        if (sl->used && n++ < max)
            out[n - 1] = (fp_route){.net = sl->net, .plen = sl->plen, .peer_ip = sl->peer_ip,
                                    .peer_port = sl->peer_port, .family = 4};
    }
    for (uint32_t i = 0; t && i <= t->mask6; i++) {
        const struct slot6 *sl = &t->slots6[i];
        if (sl->used && n++ < max) {
            out[n - 1] = (fp_route){.plen = sl->plen, .peer_ip = sl->peer_ip, .peer_port = sl->peer_port, .family = 6};
            store_be64(out[n - 1].net6, sl->hi);
            store_be64(out[n - 1].net6 + 8, sl->lo);
        }
    }
    pthread_mutex_unlock(&fp->writer);
    return n;
}

uint64_t fp_lookup_loop(struct fp *fp, uint32_t addr, uint64_t iterations) {
    int k = 0, free_slot = 0;
    while (k < HZ_TESTS && !atomic_compare_exchange_strong(&fp->test_claimed[k], &free_slot, 1)) {
        free_slot = 0;
        k++;
    }
    if (k == HZ_TESTS)
        return UINT64_MAX; /* more concurrent callers than slots */
    uint64_t misses = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        struct fp_table *t = table_acquire(fp, HZ_TEST0 + k);
        misses += !fp_table_lookup(t, addr, NULL);
        table_release(fp, HZ_TEST0 + k);
    }
    atomic_store(&fp->test_claimed[k], 0);
    return misses;
}

static void stats_publish(struct fp *fp, const fp_stats *local) {
    const uint64_t *src = (const uint64_t *)local;
    uint64_t *dst = (uint64_t *)&fp->stats;
    for (size_t i = 0; i < sizeof(fp_stats) / 8; i++)
        if (src[i])
            __atomic_fetch_add(&dst[i], src[i], __ATOMIC_RELAXED);
}

void fp_get_stats(const struct fp *fp, fp_stats *out) {
    const uint64_t *src = (const uint64_t *)&fp->stats;
    uint64_t *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof(fp_stats) / 8; i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

int fp_features(const struct fp *fp) { return fp->features; }

/* ---------------------------------------------------------------- TX queue ---- */
/* What the TX thread sends is queued as the datagrams of one sendmmsg. Consecutive inner packets
 * for the same peer join one UDP_SEGMENT datagram while they have its segment size (the last one
 * may be shorter), so the tail of a TCP super-packet shares a datagram with the head of the next
 * one. (A 64 KB super-packet is ~46 segments but a datagram holds at most 64 KB: without this,
 * every super-packet cost two sendmsg calls and two trips through the underlay's stack, the
 * second one for two segments.)
 * Each datagram is built contiguous in the queue's arena: segments are written there (headers,
 * then the payload copied and checksummed in one pass), so the kernel copies one buffer per
 * datagram. Every datagram starts at byte 63 of a 64-byte line: the kernel's copy from user space
 * (rep movsb) then starts each chunk at a line offset at or past its destination's, whatever
 * that is, which keeps it out of the slow case (see FRAME_SKEW). Handing the kernel the payload
 * slices of the TUN frame instead (no copy here) measured slower: the slices' alignments vary
 * segment by segment, and about half of them hit the slow case. */
#define TXQ_MSGS 64             /* datagrams per sendmmsg */
#define TXQ_ARENA (1 << 20)     /* bytes queued before an early flush (256 KB and 2 MB measured worse) */
#define UDP_MAX_PAYLOAD 65507   /* 65535 - IPv4 header - UDP header: the most one sendmsg can carry */

/* sendmmsg's contract: how many messages were sent, or -1 with errno. */
typedef int (*dgram_sink)(void *ctx, struct mmsghdr *msgs, unsigned n);

struct txq {
    struct mmsghdr msgs[TXQ_MSGS];
    struct sockaddr_in dst[TXQ_MSGS];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctrl[TXQ_MSGS];
    uint32_t nseg[TXQ_MSGS];
    uint32_t seg_size[TXQ_MSGS]; /* the first segment's size: the GSO size */
    uint8_t closed[TXQ_MSGS];    /* a shorter segment was added: it must be the last */
    struct iovec iov[TXQ_MSGS];  /* each datagram's bytes in the arena */
    uint8_t *arena;              /* TXQ_ARENA bytes, 64-byte aligned */
    size_t used;
    int nmsg;
    int gso; /* UDP_SEGMENT works: segments may share a datagram */
    dgram_sink send;
    void *ctx;
};

static struct txq *txq_new(int gso, dgram_sink send, void *ctx) {
    struct txq *q = calloc(1, sizeof(*q));
    if (q && !(q->arena = aligned_alloc(64, TXQ_ARENA))) {
        free(q);
        return NULL;
    }
    if (q) {
        q->gso = gso;
        q->send = send;
        q->ctx = ctx;
    }
    return q;
}

static void txq_free(struct txq *q) {
    if (q)
        free(q->arena);
    free(q);
}

static int wait_writable(int fd) {
    struct pollfd p = {fd, POLLOUT, 0};
    return poll(&p, 1, 10);
}

/* A full socket is waited for, 10 ms at a time, up to SEND_WAITS times (1 s) per call, and never
 * once fp_stop was called: the thread holds no route table meanwhile (see tx_lookup). */
#define SEND_WAITS 100
static int sink_to_socket(void *ctx, struct mmsghdr *msgs, unsigned n) {
    struct fp *fp = ctx;
    int spins = 0;
    for (;;) {
        int r = sendmmsg(fp->udp_fd, msgs, n, 0);
        if (r < 0 && (errno == EAGAIN || errno == ENOBUFS) && spins++ < SEND_WAITS && !atomic_load(&fp->stop)) {
            wait_writable(fp->udp_fd);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

/* Send everything queued; a datagram the socket refuses is counted (as its segments) and skipped. */
static void txq_flush(struct txq *q, fp_stats *st) {
    for (int m = 0; m < q->nmsg; m++) {
        struct msghdr *h = &q->msgs[m].msg_hdr;
        h->msg_control = NULL;
        h->msg_controllen = 0;
        if (q->nseg[m] > 1) {
            h->msg_control = q->ctrl[m].buf;
            h->msg_controllen = sizeof(q->ctrl[m].buf);
            struct cmsghdr *cm = CMSG_FIRSTHDR(h);
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_SEGMENT;
            cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t gso = (uint16_t)q->seg_size[m];
            memcpy(CMSG_DATA(cm), &gso, sizeof(gso));
        }
    }
    int done = 0;
    while (done < q->nmsg) {
        int r = q->send(q->ctx, q->msgs + done, (unsigned)(q->nmsg - done));
        st->tx_syscalls++;
        int n = r > 0 ? r : 1;
        for (int m = done; m < done + n; m++) {
            if (r > 0) {
                st->tx_packets += q->nseg[m];
                st->tx_bytes += q->iov[m].iov_len;
            } else {
                st->tx_drop_socket_error += q->nseg[m];
            }
        }
        done += n;
    }
    q->nmsg = 0;
    q->used = 0;
}

/* Queue one inner packet of len bytes for rt's peer; returns where to write it (it is read only
 * at the flush). */
static uint8_t *txq_push(struct txq *q, const fp_route *rt, size_t len, fp_stats *st) {
    uint32_t ip = htonl(rt->peer_ip);
    uint16_t port = htons(rt->peer_port);
    int m = q->nmsg - 1;
    int join = m >= 0 && q->gso && !q->closed[m] && q->dst[m].sin_addr.s_addr == ip && q->dst[m].sin_port == port &&
               len <= q->seg_size[m] && q->nseg[m] < GSO_MAX_SEGS && q->iov[m].iov_len + len <= UDP_MAX_PAYLOAD;
    size_t start = join ? q->used : (q->used | 63); /* a new datagram starts at line offset 63 */
    if (start + len > TXQ_ARENA || (!join && q->nmsg == TXQ_MSGS)) {
        txq_flush(q, st);
        join = 0;
        start = 63;
    }
    if (!join) {
        m = q->nmsg++;
        q->dst[m] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = port, .sin_addr.s_addr = ip};
        q->iov[m] = (struct iovec){q->arena + start, 0};
        q->msgs[m].msg_hdr = (struct msghdr){&q->dst[m], sizeof(q->dst[m]), &q->iov[m], 1, NULL, 0, 0};
        q->nseg[m] = 0;
        q->seg_size[m] = (uint32_t)len;
        q->closed[m] = 0;
    }
    uint8_t *p = q->arena + start;
    q->used = start + len;
    q->iov[m].iov_len += len;
    q->nseg[m]++;
    if (len < q->seg_size[m])
        q->closed[m] = 1;
    return p;
}

/* ---------------------------------------------------------------- TX: segmentation ---- */
/* Queue a TCP/IPv4 super-packet as segments of `mss` payload bytes: fresh IP/TCP headers and
 * checksums. Returns -1, queueing nothing, if the packet is malformed. */
static int segment_tcp4(struct txq *q, const fp_route *rt, const uint8_t *pkt, size_t len, uint16_t mss,
                        fp_stats *st) {
    if (len < 40 || (pkt[0] >> 4) != 4 || pkt[9] != IPPROTO_TCP || mss == 0)
        return -1;
    size_t ihl = (size_t)(pkt[0] & 0x0f) * 4;
    if (ihl < 20 || len < ihl + 20)
        return -1;
    const uint8_t *tcp = pkt + ihl;
    size_t thl = (size_t)(tcp[12] >> 4) * 4;
    if (thl < 20 || ihl + thl > len)
        return -1;
    size_t hdrs = ihl + thl, payload = len - hdrs;
    int nseg = payload ? (int)((payload + mss - 1) / mss) : 1;
    uint32_t seq0;
    uint16_t id0;
    memcpy(&seq0, tcp + 4, 4);
    seq0 = ntohl(seq0);
    memcpy(&id0, pkt + 4, 2);
    id0 = ntohs(id0);
    for (int i = 0; i < nseg; i++) {
        size_t chunk = payload - (size_t)i * mss;
        if (chunk > mss)
            chunk = mss;
        uint8_t *o = txq_push(q, rt, hdrs + chunk, st);
        memcpy(o, pkt, hdrs);
        /* the payload follows the headers at an even offset (thl is a multiple of 4): the sums add */
        uint64_t payload_sum = csum_copy(o + hdrs, pkt + hdrs + (size_t)i * mss, chunk, 0);
        uint16_t tot = htons((uint16_t)(hdrs + chunk)), id = htons((uint16_t)(id0 + i));
        memcpy(o + 2, &tot, 2);
        memcpy(o + 4, &id, 2);
        ip4_set_checksum(o);
        uint8_t *th = o + ihl;
        uint32_t seq = htonl(seq0 + (uint32_t)(i * mss));
        memcpy(th + 4, &seq, 4);
        if (i < nseg - 1)
            th[13] &= (uint8_t)~(0x01 | 0x08); /* FIN, PSH only on the last */
        if (i > 0)
            th[13] &= (uint8_t)~0x80; /* CWR only on the first */
        th[16] = th[17] = 0;
        uint64_t sum = add_carry(csum_add(th, thl, pseudo4(o, IPPROTO_TCP, (uint32_t)(thl + chunk))), payload_sum);
        uint16_t c = (uint16_t)~csum_fold(sum);
        memcpy(th + 16, &c, 2);
    }
    return 0;
}

enum { TX_MALFORMED = -1, TX_SINGLE = 0, TX_TSO4 = 1 };

/* What to do with one frame read from the TUN. A single packet's partial checksum is completed in
 * place; a TSO4 super-packet is left for segment_tcp4. */
static int tx_kind(const struct vnet_hdr *vh, uint8_t *pkt, size_t plen) {
    if ((vh->gso_type & ~VIRTIO_NET_HDR_GSO_ECN) == VIRTIO_NET_HDR_GSO_TCPV4)
        return TX_TSO4;
    if (vh->gso_type != VIRTIO_NET_HDR_GSO_NONE)
        return TX_MALFORMED;
    if ((vh->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && complete_csum(pkt, plen, vh->csum_start, vh->csum_offset))
        return TX_MALFORMED;
    return TX_SINGLE;
}

/* The route for the packet's destination: 1 found, 0 none (no_route), -1 malformed (what the
 * peer's RX check would refuse: a length field that disagrees with the packet, an IHL below 5). */
static int tx_route(const struct fp_table *t, const uint8_t *pkt, size_t len, fp_route *rt) {
    uint16_t field;
    if (len >= 1 && (pkt[0] >> 4) == 6) { /* IPv6 (dual-stack leases): the destination at 24 */
        if (len < 40)
            return -1;
        memcpy(&field, pkt + 4, 2);
        return (size_t)ntohs(field) + 40 != len ? -1 : fp_table_lookup6(t, pkt + 24, rt);
    }
    if (len < 20 || (pkt[0] >> 4) != 4 || (pkt[0] & 0x0f) < 5)
        return -1;
    memcpy(&field, pkt + 2, 2);
    if (ntohs(field) != len)
        return -1;
    uint32_t d;
    memcpy(&d, pkt + 16, 4);
    return fp_table_lookup(t, ntohl(d), rt);
}

/* Where TX looks routes up: the threads through their hazard slot, held for the lookup only (the
 * route is copied out, so no table is held while a full socket is waited for and fp_set_routes
 * never waits on a sender); the test entry through a table of its own. */
struct tx_router {
    struct fp *fp;
    const struct fp_table *t;
};

static int tx_lookup(const struct tx_router *r, const uint8_t *pkt, size_t len, fp_route *rt) {
    if (!r->fp)
        return tx_route(r->t, pkt, len, rt);
    struct fp_table *t = table_acquire(r->fp, HZ_TX);
    int found = tx_route(t, pkt, len, rt);
    table_release(r->fp, HZ_TX);
    return found;
}

/* One frame as read from the TUN (with a vnet header if vnet): route it and queue what it becomes. */
static void tx_frame(struct txq *q, const struct tx_router *router, int vnet, uint8_t *f, size_t len, fp_stats *st) {
    struct vnet_hdr vh = {0};
    uint8_t *pkt = f;
    size_t plen = len;
    if (vnet) {
        if (plen < VNET_LEN) {
            st->tx_drop_malformed++;
            return;
        }
        memcpy(&vh, f, VNET_LEN);
        pkt += VNET_LEN;
        plen -= VNET_LEN;
    }
    fp_route rt;
    int found = tx_lookup(router, pkt, plen, &rt);
    if (found <= 0) {
        if (found < 0)
            st->tx_drop_malformed++;
        else
            st->tx_drop_no_route++;
        return;
    }
    switch (tx_kind(&vh, pkt, plen)) {
    case TX_TSO4:
        if (segment_tcp4(q, &rt, pkt, plen, vh.gso_size, st) < 0)
            st->tx_drop_malformed++;
        return;
    case TX_SINGLE:
        memcpy(txq_push(q, &rt, plen, st), pkt, plen);
        return;
    default:
        st->tx_drop_malformed++;
    }
}

/* The test entry: a batch of frames through tx_frame and a queue whose sink records the datagrams. */
struct dgram_out {
    uint8_t *out;
    size_t cap, used;
    fp_datagram *dgrams;
    int max, n;
};

static int sink_to_buffer_dgrams(void *ctx, struct mmsghdr *msgs, unsigned n) {
    struct dgram_out *o = ctx;
    for (unsigned i = 0; i < n; i++) {
        const struct msghdr *h = &msgs[i].msg_hdr;
        size_t len = 0;
        for (size_t k = 0; k < h->msg_iovlen; k++)
            len += h->msg_iov[k].iov_len;
        if (o->n >= o->max || o->used + len > o->cap) {
            errno = ENOSPC;
            return i ? (int)i : -1;
        }
        const struct sockaddr_in *sa = h->msg_name;
        uint16_t gso = 0;
        struct cmsghdr *cm = h->msg_controllen ? CMSG_FIRSTHDR((struct msghdr *)h) : NULL;
        if (cm && cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_SEGMENT)
            memcpy(&gso, CMSG_DATA(cm), sizeof(gso));
        o->dgrams[o->n++] = (fp_datagram){ntohl(sa->sin_addr.s_addr), ntohs(sa->sin_port), gso, (uint32_t)len};
        for (size_t k = 0; k < h->msg_iovlen; k++) {
            memcpy(o->out + o->used, h->msg_iov[k].iov_base, h->msg_iov[k].iov_len);
            o->used += h->msg_iov[k].iov_len;
        }
    }
    return (int)n;
}

int fp_tx_batch(uint8_t *frames, const uint32_t *lens, int n, const fp_route *routes, int nroutes, int gso,
                uint8_t *out, size_t cap, fp_datagram *dgrams, int max_dgrams, fp_stats *st) {
    struct dgram_out o = {out, cap, 0, dgrams, max_dgrams, 0};
    struct fp_table *t = fp_table_build(routes, nroutes);
    struct txq *q = txq_new(gso, sink_to_buffer_dgrams, &o);
    if (!t || !q) {
        fp_table_free(t);
        txq_free(q);
        return -1;
    }
    memset(st, 0, sizeof(*st));
    struct tx_router router = {NULL, t};
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        tx_frame(q, &router, 1, frames + off, lens[i], st);
        off += lens[i];
    }
    txq_flush(q, st);
    txq_free(q);
    fp_table_free(t);
    return o.n;
}

long fp_tx_prepare(const uint8_t *frame, size_t len, uint8_t *out, size_t cap, uint32_t *seg_size) {
    uint8_t *copy = malloc(len ? len : 1);
    fp_datagram d[128];
    fp_stats st;
    fp_route any = {.plen = 0, .peer_ip = 0x7f000001, .peer_port = 8285, .family = 4};
    uint32_t l = (uint32_t)len;
    if (!copy)
        return -1;
    memcpy(copy, frame, len);
    int n = fp_tx_batch(copy, &l, 1, &any, 1, 1, out, cap, d, 128, &st);
    free(copy);
    if (n <= 0 || st.tx_drop_malformed || st.tx_drop_socket_error)
        return -1;
    *seg_size = d[0].gso_size ? d[0].gso_size : d[0].len;
    long total = 0;
    for (int i = 0; i < n; i++)
        total += d[i].len;
    return total;
}

/* ---------------------------------------------------------------- TX thread ---- */
struct tx_state {
    uint8_t *frame; /* one frame, reused (so it stays in cache): what it becomes is copied to q */
    struct txq *q;
};

static void tx_state_free(struct tx_state *s) {
    if (s) {
        free(s->frame);
        txq_free(s->q);
    }
    free(s);
}

static struct tx_state *tx_state_new(struct fp *fp) {
    struct tx_state *s = calloc(1, sizeof(*s));
    if (s) {
        s->frame = aligned_alloc(64, FRAME_STRIDE);
        s->q = txq_new((fp->features & FP_UDP_GSO) != 0, sink_to_socket, fp);
    }
    if (!s || !s->frame || !s->q) {
        tx_state_free(s);
        return NULL;
    }
    return s;
}

/* Read what the TUN holds (up to TX_BATCH frames) and send it. */
static void tx_service(struct fp *fp, struct tx_state *s) {
    struct tx_router router = {fp, NULL};
    fp_stats st = {0};
    for (int k = 0; k < TX_BATCH; k++) {
        uint8_t *f = s->frame + FRAME_SKEW;
        ssize_t r = read(fp->tun_fd, f, FRAME_CAP);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (tun_gone(errno)) /* else EAGAIN: drained */
                tun_lost(fp, errno);
            break;
        }
        st.tun_reads++;
        tx_frame(s->q, &router, fp->vnet, f, (size_t)r, &st);
    }
    txq_flush(s->q, &st);
    stats_publish(fp, &st);
}

/* The TUN's fd for poll(), or -1 (poll ignores it) once the TUN is lost: a deleted TUN reports
 * POLLERR at once on every poll, which would spin the thread. */
static int tun_pollfd(struct fp *fp) { return atomic_load(&fp->tun_error) ? -1 : fp->tun_fd; }

static void *tx_main(void *arg) {
    struct fp *fp = arg;
    while (!atomic_load(&fp->stop)) {
        struct pollfd p = {tun_pollfd(fp), POLLIN, 0};
        if (poll(&p, 1, POLL_MS) > 0)
            tx_service(fp, fp->txs);
    }
    return NULL;
}

/* ---------------------------------------------------------------- RX: coalescing ---- */
/* The coalescer never copies payload: a super-packet is a header block (vnet header + the first
 * segment's IP/TCP headers, fixed up at flush) and a list of payload slices that point into the
 * receive buffers, handed to one writev. Buffers stay valid until the batch is flushed. */
#define COAL_MAX_SEGS 64
#define HDR_CAP (VNET_LEN + 60 + 60)

typedef int (*frame_sink)(void *ctx, const struct iovec *iov, int n);

struct coalescer {
    uint8_t hdr[HDR_CAP]; /* vnet header, then the first segment's headers */
    struct iovec iov[COAL_MAX_SEGS + 2];
    const uint8_t *first; /* the first segment, whole (written as is when alone) */
    size_t first_len;
    size_t len;           /* IP length of the super-packet so far */
    int nseg;
    size_t hdrs;
    uint16_t mss;
    size_t last_payload;
    uint32_t next_seq;
    int psh;
    int tso;  /* may build super-packets (vnet TUN) */
    int vnet; /* frames carry a vnet header */
    frame_sink sink;
    void *ctx;
    uint64_t writes, errors_full, errors_other;
};

static const uint8_t zero_hdr[VNET_LEN];

static void coal_emit(struct coalescer *c, const struct iovec *iov, int n) {
    int r = c->sink(c->ctx, iov, n);
    if (r == 0)
        c->writes++;
    else if (r == -EAGAIN || r == -ENOBUFS)
        c->errors_full++;
    else
        c->errors_other++;
}

static void emit_single(struct coalescer *c, const uint8_t *pkt, size_t len) {
    struct iovec iov[2];
    int k = 0;
    if (c->vnet)
        iov[k++] = (struct iovec){(void *)zero_hdr, VNET_LEN};
    iov[k++] = (struct iovec){(void *)pkt, len};
    coal_emit(c, iov, k);
}

static void coal_flush(struct coalescer *c) {
    if (c->nseg == 0)
        return;
    if (c->nseg == 1) {
        emit_single(c, c->first, c->first_len);
    } else {
        uint8_t *ip = c->hdr + VNET_LEN;
        uint16_t tot = htons((uint16_t)c->len);
        memcpy(ip + 2, &tot, 2);
        ip4_set_checksum(ip);
        uint8_t *th = ip + 20;
        if (c->psh)
            th[13] |= 0x08;
        /* partial checksum: pseudo header only, the kernel adds the rest (NEEDS_CSUM) */
        uint16_t ps = csum_fold(pseudo4(ip, IPPROTO_TCP, (uint32_t)(c->len - 20)));
        memcpy(th + 16, &ps, 2);
        struct vnet_hdr vh = {VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, (uint16_t)c->hdrs, c->mss, 20, 16};
        memcpy(c->hdr, &vh, VNET_LEN);
        c->iov[0] = (struct iovec){c->hdr, VNET_LEN + c->hdrs};
        coal_emit(c, c->iov, c->nseg + 1);
    }
    c->nseg = 0;
    c->len = 0;
}

/* TCP/IPv4 without IP options, only ACK (+PSH), carrying data: may start a super-packet. */
static int coal_candidate(const uint8_t *p, size_t len) {
    if (len < 40 || p[0] != 0x45 || p[9] != IPPROTO_TCP)
        return 0;
    uint16_t frag;
    memcpy(&frag, p + 6, 2);
    if (ntohs(frag) & 0x3fff) /* MF or offset: a fragment */
        return 0;
    const uint8_t *th = p + 20;
    size_t thl = (size_t)(th[12] >> 4) * 4;
    if (thl < 20 || 20 + thl >= len)
        return 0;
    return (th[13] & ~0x08) == 0x10; /* ACK, maybe PSH, nothing else */
}

static int coal_mergeable(const struct coalescer *c, const uint8_t *p, size_t len) {
    const uint8_t *q = c->hdr + VNET_LEN; /* first segment's headers */
    if (!coal_candidate(p, len) || c->psh || c->last_payload != c->mss || c->nseg >= COAL_MAX_SEGS)
        return 0;
    size_t payload = len - c->hdrs;
    if ((size_t)(p[32] >> 4) * 4 + 20 != c->hdrs || payload == 0 || payload > c->mss)
        return 0;
    if (c->len + payload > MAX_PKT)
        return 0;
    if (p[1] != q[1] || p[8] != q[8] || memcmp(p + 6, q + 6, 2) || memcmp(p + 12, q + 12, 8))
        return 0; /* tos, ttl, DF, addresses */
    const uint8_t *a = p + 20, *b = q + 20;
    if (memcmp(a, b, 4) || memcmp(a + 8, b + 8, 4)) /* ports, ack */
        return 0;
    if (a[12] != b[12] || (a[13] & ~0x08) != (b[13] & ~0x08) || memcmp(a + 14, b + 14, 2))
        return 0; /* data offset, flags, window */
    if (memcmp(a + 20, b + 20, c->hdrs - 40)) /* options (timestamps) identical */
        return 0;
    uint32_t seq;
    memcpy(&seq, a + 4, 4);
    return ntohl(seq) == c->next_seq;
}

static void coal_add(struct coalescer *c, const uint8_t *p, size_t len) {
    if (c->tso && c->nseg > 0 && coal_mergeable(c, p, len)) {
        size_t payload = len - c->hdrs;
        c->iov[++c->nseg] = (struct iovec){(void *)(p + c->hdrs), payload};
        c->len += payload;
        c->next_seq += (uint32_t)payload;
        c->last_payload = payload;
        c->psh = (p[33] & 0x08) != 0;
        if (c->psh)
            coal_flush(c);
        return;
    }
    coal_flush(c);
    if (c->tso && coal_candidate(p, len)) {
        c->hdrs = 20 + (size_t)(p[32] >> 4) * 4;
        memcpy(c->hdr + VNET_LEN, p, c->hdrs);
        c->iov[1] = (struct iovec){(void *)(p + c->hdrs), len - c->hdrs};
        c->first = p;
        c->first_len = len;
        c->len = len;
        c->nseg = 1;
        c->mss = (uint16_t)(len - c->hdrs);
        c->last_payload = c->mss;
        uint32_t seq;
        memcpy(&seq, p + 24, 4);
        c->next_seq = ntohl(seq) + (uint32_t)(len - c->hdrs);
        c->psh = (p[33] & 0x08) != 0;
        if (c->psh)
            coal_flush(c);
        return;
    }
    emit_single(c, p, len);
}

struct out_sink {
    uint8_t *out;
    size_t cap, used;
    uint32_t *lens;
    int max, n;
};

static int sink_to_buffer(void *ctx, const struct iovec *iov, int n) {
    struct out_sink *o = ctx;
    size_t need = 0;
    for (int i = 0; i < n; i++)
        need += iov[i].iov_len;
    if (o->n >= o->max || o->used + need > o->cap)
        return -ENOSPC;
    for (int i = 0; i < n; i++) {
        memcpy(o->out + o->used, iov[i].iov_base, iov[i].iov_len);
        o->used += iov[i].iov_len;
    }
    o->lens[o->n++] = (uint32_t)need;
    return 0;
}

int fp_rx_coalesce(const uint8_t *pkts, const uint32_t *lens, int n, uint8_t *out, size_t cap, uint32_t *out_lens,
                   int max_out) {
    struct out_sink o = {out, cap, 0, out_lens, max_out, 0};
    struct coalescer c;
    memset(&c, 0, sizeof(c));
    c.tso = c.vnet = 1;
    c.sink = sink_to_buffer;
    c.ctx = &o;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        coal_add(&c, pkts + off, lens[i]);
        off += lens[i];
    }
    coal_flush(&c);
    return c.errors_other || c.errors_full ? -1 : o.n;
}

/* ---------------------------------------------------------------- RX thread ---- */
static int sink_to_tun(void *ctx, const struct iovec *iov, int n) {
    struct fp *fp = ctx;
    for (;;) {
        ssize_t r = writev(fp->tun_fd, iov, n);
        if (r >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (tun_gone(errno))
            tun_lost(fp, errno);
        return -errno;
    }
}

/* Validate one inner packet and check its source against the route table: the outer source
 * must be the PublicIP leasing the inner source's subnet (for IPv6 too: a dual-stack lease). */
static int rx_accept(const struct fp_table *t, uint32_t outer_src, const uint8_t *d, size_t dl, fp_stats *st) {
    fp_route rt;
    int found;
    if (dl >= 1 && (d[0] >> 4) == 6) {
        uint16_t payload = 0;
        if (dl >= 40)
            memcpy(&payload, d + 4, 2);
        if (dl < 40 || (size_t)ntohs(payload) + 40 != dl) { /* truncated, padded or a jumbogram */
            st->rx_drop_malformed++;
            return 0;
        }
        found = fp_table_lookup6(t, d + 8, &rt);
    } else {
        size_t ihl = dl >= 1 ? (size_t)(d[0] & 0x0f) * 4 : 0;
        uint16_t tot;
        if (dl < 20 || (d[0] >> 4) != 4 || ihl < 20 || ihl > dl) {
            st->rx_drop_malformed++;
            return 0;
        }
        memcpy(&tot, d + 2, 2);
        if (ntohs(tot) != dl || csum_fold(csum_add(d, ihl, 0)) != 0xffff) {
            st->rx_drop_malformed++;
            return 0;
        }
        uint32_t src;
        memcpy(&src, d + 12, 4);
        found = fp_table_lookup(t, ntohl(src), &rt);
    }
    if (!found) {
        st->rx_drop_no_route++;
        return 0;
    }
    if (rt.peer_ip != outer_src) {
        st->rx_drop_spoofed++;
        return 0;
    }
    return 1;
}

int fp_rx_accept(const fp_route *routes, int nroutes, uint32_t outer_src, const uint8_t *pkt, size_t len,
                 fp_stats *st) {
    struct fp_table *t = fp_table_build(routes, nroutes);
    memset(st, 0, sizeof(*st));
    if (!t)
        return -1;
    int ok = rx_accept(t, outer_src, pkt, len, st);
    fp_table_free(t);
    return ok;
}

struct rx_state {
    uint8_t *bufs; /* RX_BATCH buffers of RX_BUF bytes, 64-byte aligned: see FRAME_SKEW */
    struct coalescer *c;
    struct mmsghdr msgs[RX_BATCH];
    struct iovec iov[RX_BATCH];
    struct sockaddr_in src[RX_BATCH];
    char ctrl[RX_BATCH][CMSG_SPACE(sizeof(int))];
};

static struct rx_state *rx_state_new(struct fp *fp) {
    struct rx_state *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->bufs = aligned_alloc(4096, (size_t)RX_BATCH * RX_BUF);
    s->c = calloc(1, sizeof(struct coalescer));
    if (!s->bufs || !s->c) {
        free(s->bufs);
        free(s->c);
        free(s);
        return NULL;
    }
    s->c->vnet = fp->vnet;
    s->c->tso = fp->vnet && (fp->features & FP_TUN_TSO);
    s->c->sink = sink_to_tun;
    s->c->ctx = fp;
    return s;
}

static void rx_state_free(struct rx_state *s) {
    if (s) {
        free(s->bufs);
        free(s->c);
    }
    free(s);
}

/* Receive what the socket holds (one recvmmsg) and write it to the TUN. */
static void rx_service(struct fp *fp, struct rx_state *s) {
    for (int i = 0; i < RX_BATCH; i++) {
        s->iov[i] = (struct iovec){s->bufs + (size_t)i * RX_BUF, RX_BUF};
        s->msgs[i].msg_hdr =
            (struct msghdr){&s->src[i], sizeof(s->src[i]), &s->iov[i], 1, s->ctrl[i], sizeof(s->ctrl[i]), 0};
    }
    int n = recvmmsg(fp->udp_fd, s->msgs, RX_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) {
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            fp_stats st = {0};
            st.rx_drop_socket_error = 1;
            stats_publish(fp, &st);
        }
        return;
    }
    struct coalescer *c = s->c;
    struct fp_table *t = table_acquire(fp, HZ_RX);
    fp_stats st = {0};
    st.rx_syscalls = 1;
    c->writes = c->errors_full = c->errors_other = 0;
    for (int i = 0; i < n; i++) {
        struct msghdr *mh = &s->msgs[i].msg_hdr;
        size_t total = s->msgs[i].msg_len;
        size_t gso = total;
        if (total == 0) { /* carries no packet: counted, as everything received is */
            st.rx_drop_empty++;
            continue;
        }
        if (mh->msg_flags & MSG_TRUNC) {
            st.rx_drop_malformed++;
            continue;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
            if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                int g;
                memcpy(&g, CMSG_DATA(cm), sizeof(g));
                if (g > 0)
                    gso = (size_t)g;
            }
        }
        uint32_t outer = ntohl(s->src[i].sin_addr.s_addr);
        const uint8_t *b = s->bufs + (size_t)i * RX_BUF;
        for (size_t off = 0; off < total; off += gso) {
            size_t dl = total - off < gso ? total - off : gso;
            if (!rx_accept(t, outer, b + off, dl, &st))
                continue;
            st.rx_packets++;
            st.rx_bytes += dl;
            coal_add(c, b + off, dl);
        }
    }
    coal_flush(c);
    table_release(fp, HZ_RX);
    st.tun_writes = c->writes;
    st.rx_drop_tun_full = c->errors_full;
    st.rx_drop_tun_error = c->errors_other;
    stats_publish(fp, &st);
}

static void *rx_main(void *arg) {
    struct fp *fp = arg;
    while (!atomic_load(&fp->stop)) {
        struct pollfd p = {fp->udp_fd, POLLIN, 0};
        if (poll(&p, 1, POLL_MS) > 0)
            rx_service(fp, fp->rxs);
    }
    return NULL;
}

/* Both directions in one thread, as flannel's proxy does (netd --udp-threads=1). With a thread per
 * direction, the reverse direction of a TCP stream (its ACKs) costs the other thread a wake-up
 * every few packets; here the ACKs wait for this thread's next turn instead. Measured on 2 cores
 * (docs/DECISIONS.md): 6% less forwarder CPU per byte for one TCP stream at the same throughput on
 * an Intel Xeon, but 8% less throughput with both directions busy there, and 13% less single-
 * stream throughput on an AMD EPYC. So a thread per direction is the default. */
static void *both_main(void *arg) {
    struct fp *fp = arg;
    while (!atomic_load(&fp->stop)) {
        struct pollfd p[2] = {{tun_pollfd(fp), POLLIN, 0}, {fp->udp_fd, POLLIN, 0}};
        if (poll(p, 2, POLL_MS) <= 0)
            continue;
        if (p[1].revents)
            rx_service(fp, fp->rxs);
        if (p[0].revents)
            tx_service(fp, fp->txs);
    }
    return NULL;
}

/* ---------------------------------------------------------------- setup ---- */
static int tun_attach(const char *name, int vnet, char *err, size_t errlen, int *offload_ok) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "open /dev/net/tun: %s", strerror(errno));
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        snprintf(err, errlen, "attach to TUN %s (%s mode): %s%s", name, vnet ? "vnet" : "plain", strerror(e),
                 e == EBUSY ? " (another process has it open: another netd, or flannel?)" : "");
        close(fd);
        errno = e;
        return -1;
    }
    *offload_ok = 0;
    if (vnet) {
        int sz = VNET_LEN;
        unsigned off = TUN_F_CSUM | TUN_F_TSO4;
        if (ioctl(fd, TUNSETVNETHDRSZ, &sz) == 0 && ioctl(fd, TUNSETOFFLOAD, off) == 0)
            *offload_ok = 1;
    } else if (ioctl(fd, TUNSETOFFLOAD, 0) < 0) {
        /* A persistent TUN keeps the offloads a vnet-mode run set; without a vnet header to say
         * so, the kernel would then hand us packets with their checksums left undone. */
        int e = errno;
        snprintf(err, errlen, "clear the offloads of TUN %s for plain mode: %s", name, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    if (ioctl(fd, TUNSETPERSIST, 1) < 0) {
        int e = errno;
        snprintf(err, errlen, "make TUN %s persistent: %s", name, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static int udp_open(uint32_t bind_ip, uint16_t port, int *features, char *err, size_t errlen) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "udp socket: %s", strerror(errno));
        return -1;
    }
    int one = 1, big = 16 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(bind_ip)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        snprintf(err, errlen, "bind udp %u: %s", port, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    if (*features & FP_UDP_GSO) { /* probe: set a size, then back to 0 (per-message cmsg wins) */
        int probe = 1400, zero = 0;
        if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &probe, sizeof(probe)) < 0)
            *features &= ~FP_UDP_GSO;
        else
            setsockopt(fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof(zero));
    }
    if ((*features & FP_UDP_GRO) && setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0)
        *features &= ~FP_UDP_GRO;
    return fd;
}

struct fp *fp_open(const char *name, uint32_t bind_ip, uint16_t port, int features, char *err, size_t errlen) {
    struct fp *fp = calloc(1, sizeof(*fp));
    if (!fp) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int offload_ok = 0;
    fp->vnet = (features & FP_TUN_TSO) != 0;
    fp->tun_fd = tun_attach(name, fp->vnet, err, errlen, &offload_ok);
    if (fp->tun_fd < 0) {
        int e = errno;
        free(fp);
        errno = e;
        return NULL;
    }
    if (!offload_ok)
        features &= ~FP_TUN_TSO;
    fp->udp_fd = udp_open(bind_ip, port, &features, err, errlen);
    if (fp->udp_fd < 0) {
        int e = errno;
        close(fp->tun_fd);
        free(fp);
        errno = e;
        return NULL;
    }
    fp->features = features;
    atomic_store(&fp->event_fd, -1);
    pthread_mutex_init(&fp->writer, NULL);
    atomic_store(&fp->table, fp_table_build(NULL, 0));
    return fp;
}

static void free_thread_states(struct fp *fp) {
    tx_state_free(fp->txs);
    rx_state_free(fp->rxs);
    fp->txs = NULL;
    fp->rxs = NULL;
}

int fp_start(struct fp *fp, int threads) {
    if (threads != 1 && threads != 2)
        return -EINVAL;
    if (fp->started)
        return fp->threads == threads ? 0 : -EBUSY;
    /* Every buffer the threads use is allocated here, before any of them runs: a failure is this
     * call's -ENOMEM, never a thread that exits after start reported success. */
    fp->txs = tx_state_new(fp);
    fp->rxs = rx_state_new(fp);
    if (!fp->txs || !fp->rxs) {
        free_thread_states(fp);
        return -ENOMEM;
    }
    atomic_store(&fp->stop, 0);
    int r = pthread_create(&fp->tx, NULL, threads == 1 ? both_main : tx_main, fp);
    if (r) {
        free_thread_states(fp);
        return -r;
    }
    if (threads == 2 && (r = pthread_create(&fp->rx, NULL, rx_main, fp))) {
        atomic_store(&fp->stop, 1);
        pthread_join(fp->tx, NULL);
        free_thread_states(fp);
        return -r;
    }
    pthread_setname_np(fp->tx, threads == 1 ? "netd-fp" : "netd-fp-tx");
    if (threads == 2)
        pthread_setname_np(fp->rx, "netd-fp-rx");
    fp->threads = threads;
    fp->started = 1;
    return 0;
}

void fp_stop(struct fp *fp) {
    if (!fp->started)
        return;
    atomic_store(&fp->stop, 1);
    pthread_join(fp->tx, NULL);
    if (fp->threads == 2)
        pthread_join(fp->rx, NULL);
    free_thread_states(fp);
    fp->started = 0;
}

void fp_set_event_fd(struct fp *fp, int fd) { atomic_store(&fp->event_fd, fd); }

int fp_tun_error(const struct fp *fp) { return atomic_load(&((struct fp *)fp)->tun_error); }

void fp_close(struct fp *fp) {
    if (!fp)
        return;
    fp_stop(fp);
    close(fp->tun_fd);
    close(fp->udp_fd);
    fp_table_free(atomic_load(&fp->table));
    pthread_mutex_destroy(&fp->writer);
    free(fp);
}
