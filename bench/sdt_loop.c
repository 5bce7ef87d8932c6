/* bench/sdt_loop.c -- the uprobe-cost reference of the pyusdt benchmark.
 *
 * Fires one USDT probe (provider `bench`, probe `tick`, five arguments like
 * pyusdt's PY_START) guarded by its semaphore, N times in a loop, and prints
 * the loop's duration: "LOOP_NS <ns> <n> <total hits>". bench/run.py runs it untraced and
 * traced (bpftrace with the same action as for pyusdt); the difference divided
 * by N is the cost of one probe hit, the floor of what any USDT-based tracer
 * can do per event.
 *
 * usage: sdt_loop N [--wait] [--repeat K]
 *   --wait  poll (up to 60 s) until a tracer has set the semaphore, wait 0.2 s
 *           more (like bench/workload.py's --settle), then run.
 *   --repeat K  run the loop K times (default 1) and print the fastest.
 *   --threads T run it in T threads at once (N hits each): whether uprobe hits
 *               in one process scale across CPUs (for the 3.13t figure).
 * The first line printed ("PID n") tells the harness it may attach.
 *
 * With <sys/sdt.h> (Debian: systemtap-sdt-dev) the probe comes from
 * STAP_PROBE5; without it (-DBENCH_OWN_SDT) the same stapsdt note and
 * semaphore are written here with inline asm. -DBENCH_NOP5 writes the probe
 * site as pyusdt's src/probes.rs does: a 5-byte nop (which Linux 6.18+ turns
 * into a trampoline call instead of an int3 trap) with the stack pointer
 * stepped past the red zone around it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef BENCH_NOP5
#define BENCH_OWN_SDT 1
#define SITE "lea -128(%%rsp), %%rsp\n990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\nlea 128(%%rsp), %%rsp\n"
#else
#define SITE "990: nop\n"
#endif

#ifndef BENCH_OWN_SDT
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
#endif

/* The semaphore: a u16 in section .probes, named PROVIDER_PROBE_semaphore. */
__extension__ unsigned short bench_tick_semaphore
    __attribute__((unused)) __attribute__((section(".probes")));

#ifndef BENCH_OWN_SDT
#define TICK(a, b, c, d, e) STAP_PROBE5(bench, tick, a, b, c, d, e)
#else
/* A stapsdt v3 note: pc, base (.stapsdt.base), semaphore, provider, name, args. */
#define TICK(a, b, c, d, e)                                                        \
    __asm__ __volatile__(                                                          \
        SITE                                                                       \
        ".pushsection .note.stapsdt,\"?\",\"note\"\n"                              \
        ".balign 4\n"                                                              \
        ".4byte 992f-991f, 994f-993f, 3\n"                                         \
        "991: .asciz \"stapsdt\"\n"                                                \
        "992: .balign 4\n"                                                         \
        "993: .8byte 990b\n"                                                       \
        ".8byte _.stapsdt.base\n"                                                  \
        ".8byte bench_tick_semaphore\n"                                            \
        ".asciz \"bench\"\n"                                                       \
        ".asciz \"tick\"\n"                                                        \
        ".asciz \"8@%0 8@%1 -4@%2 8@%3 8@%4\"\n"                                   \
        "994: .balign 4\n"                                                         \
        ".popsection\n"                                                            \
        ".ifndef _.stapsdt.base\n"                                                 \
        ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n"    \
        ".weak _.stapsdt.base\n"                                                   \
        ".hidden _.stapsdt.base\n"                                                 \
        "_.stapsdt.base: .space 1\n"                                               \
        ".size _.stapsdt.base, 1\n"                                                \
        ".popsection\n"                                                            \
        ".endif\n" ::"r"((uint64_t)(a)),                                           \
        "r"((uint64_t)(b)), "r"((int32_t)(c)), "r"((int64_t)(d)), "r"((int64_t)(e)))
#endif

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned short semaphore(void)
{
    return *(volatile unsigned short *)&bench_tick_semaphore;
}

static const char name[] = "fib";
static const char file[] = "/bench/workload.py";

static void *loop(void *arg)
{
    long n = *(long *)arg;
    for (long i = 0; i < n; i++) {
        /* Like a pyusdt callback: check the semaphore, fire if attached. */
        if (__builtin_expect(semaphore() != 0, 0))
            TICK(name, file, 42, i, 0);
        __asm__ __volatile__("" ::: "memory");
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s N [--wait] [--repeat K] [--threads T]\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    int wait = 0;
    long repeat = 1, threads = 1;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0)
            wait = 1;
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc)
            repeat = atol(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atol(argv[++i]);
    }
    if (threads < 1 || threads > 64) {
        fprintf(stderr, "sdt_loop: --threads must be 1..64\n");
        return 2;
    }

    printf("PID %d\n", (int)getpid());
    fflush(stdout);
    if (wait) {
        uint64_t deadline = now_ns() + 60ull * 1000000000u;
        while (!semaphore()) {
            if (now_ns() > deadline) {
                fprintf(stderr, "sdt_loop: no tracer attached after 60 s\n");
                return 1;
            }
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
        /* The kernel sets the semaphore when it registers the uprobe, a moment
         * before bpftrace has attached its program: let that moment pass, or
         * the first hits are traps that bpftrace does not count. */
        struct timespec settle = {0, 200000000};
        nanosleep(&settle, NULL);
    }

    uint64_t best = UINT64_MAX;
    for (long r = 0; r < repeat; r++) {
        uint64_t t0 = now_ns();
        if (threads == 1) {
            loop(&n);
        } else {
            pthread_t tid[64];
            for (long t = 0; t < threads; t++)
                pthread_create(&tid[t], NULL, loop, &n);
            for (long t = 0; t < threads; t++)
                pthread_join(tid[t], NULL);
        }
        uint64_t t = now_ns() - t0;
        if (t < best)
            best = t;
    }
    /* The fastest loop (interference only ever adds time), N, and the total hits. */
    printf("LOOP_NS %llu %ld %ld\n", (unsigned long long)best, n, n * repeat * threads);
    return 0;
}
