/* The route table swapped under concurrent lookups, as tests/adapters/test_fastpath.py does from
 * Python, as a C program of its own so it can run under ThreadSanitizer (a Python interpreter does
 * not run with libtsan preloaded here). Built and run by scripts/sanitizers:
 *   gcc -fsanitize=thread -I cext tests/c/table_swap.c -o table_swap && ./table_swap
 * Two readers loop through the threads' lock-free lookup path (each in a hazard slot of its own)
 * while a writer replaces the table 3000 times; every table holds the readers' route, so a miss
 * (or a report from the sanitizer) is a bug. Then the threads' buffers are allocated and freed as
 * fp_start and fp_stop do (under ASan, LeakSanitizer reports a leak). Exit status: 0 when clean. */
#include "../../cext/fastpath.c"

static struct fp inst;
static atomic_int done;
static const uint32_t TARGET = 0x0A050709; /* 10.5.7.9 in 10.5.7.0/24 */

static void *reader(void *arg) {
    uint64_t *misses = arg;
    while (!atomic_load(&done)) {
        uint64_t m = fp_lookup_loop(&inst, TARGET, 2000);
        *misses += m == UINT64_MAX ? 1 : m;
    }
    return NULL;
}

int main(void) {
    pthread_mutex_init(&inst.writer, NULL);
    atomic_store(&inst.event_fd, -1);
    fp_route target = {.net = 0x0A050700, .plen = 24, .peer_ip = 0xC0000207, .peer_port = 8285, .family = 4};
    atomic_store(&inst.table, fp_table_build(&target, 1));
    pthread_t readers[2];
    uint64_t misses[2] = {0, 0};
    for (int i = 0; i < 2; i++)
        pthread_create(&readers[i], NULL, reader, &misses[i]);
    fp_route routes[64];
    for (int round = 0; round < 3000; round++) {
        int n = 0;
        routes[n++] = target;
        for (int j = 0; j < round % 50; j++)
            routes[n++] = (fp_route){.net = 0x0A050000u | (uint32_t)((j + round) % 200 + 20) << 8, .plen = 24,
                                     .peer_ip = 0xC0000209, .peer_port = 8285, .family = 4};
        if (round % 3 == 0)
            routes[n++] = (fp_route){.net = 0x0A050000, .plen = 16, .peer_ip = 0xC0000201, .peer_port = 8285,
                                     .family = 4};
        if (fp_set_routes(&inst, routes, n) != 0) {
            fprintf(stderr, "fp_set_routes failed\n");
            return 2;
        }
    }
    atomic_store(&done, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(readers[i], NULL);
    fp_route all[64];
    int held = fp_get_routes(&inst, all, 64);
    fp_table_free(atomic_load(&inst.table));
    /* the threads' buffers, as fp_start allocates and fp_stop frees them (LeakSanitizer checks) */
    for (int i = 0; i < 20; i++) {
        inst.txs = tx_state_new(&inst);
        inst.rxs = rx_state_new(&inst);
        if (!inst.txs || !inst.rxs)
            return 3;
        free_thread_states(&inst);
    }
    pthread_mutex_destroy(&inst.writer);
    printf("table swap: 3000 swaps under 2 concurrent readers, misses %llu, %d routes at the end\n",
           (unsigned long long)(misses[0] + misses[1]), held);
    return misses[0] + misses[1] == 0 ? 0 : 1;
}
