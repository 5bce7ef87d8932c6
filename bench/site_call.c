/* bench/site_call.c -- the loop bench/site_cost.py runs on pyusdt's own probe
 * site: built as a shared library, loaded with ctypes into a Python process
 * that imported pyusdt, and given the address of the site pyusdt fires on
 * this kernel and of its semaphore. Like bench/sdt_loop.c's loop, it checks
 * the semaphore and, when it is raised, calls the site (a naked `nop; ret`
 * function in pyusdt's library) with PY_START's arguments; it returns the
 * loop's duration in ns. `ref_loop` is the same loop on a standard SDT site
 * (a 1-byte nop, provider `bench`, probe `tick`, as in bench/sdt_loop.c)
 * written inline here: the 1-byte-nop reference measured in the very same
 * process (a Python process has more threads and mappings than sdt_loop).
 */
#include <stdint.h>
#include <time.h>

typedef void (*site_fn)(uint64_t, uint64_t, int32_t, int64_t, int64_t);

static const char name[] = "fib";
static const char file[] = "/bench/workload.py";

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t site_loop(long n, void *site, const volatile unsigned short *sema)
{
    site_fn fire = (site_fn)site;
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (__builtin_expect(*sema != 0, 0))
            fire((uint64_t)name, (uint64_t)file, 42, i, 0);
        __asm__ __volatile__("" ::: "memory");
    }
    return now_ns() - t0;
}

__extension__ unsigned short bench_tick_semaphore
    __attribute__((unused)) __attribute__((section(".probes")));

uint64_t ref_loop(long n)
{
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (__builtin_expect(*(volatile unsigned short *)&bench_tick_semaphore != 0, 0))
            __asm__ __volatile__(
                "990: nop\n"
                ".pushsection .note.stapsdt,\"?\",\"note\"\n"
                ".balign 4\n"
                ".4byte 992f-991f, 994f-993f, 3\n"
                "991: .asciz \"stapsdt\"\n"
                "992: .balign 4\n"
                "993: .8byte 990b\n"
                ".8byte _.stapsdt.base\n"
                ".8byte bench_tick_semaphore\n"
                ".asciz \"bench\"\n"
                ".asciz \"tick\"\n"
                ".asciz \"8@%0 8@%1 -4@%2 8@%3 8@%4\"\n"
                "994: .balign 4\n"
                ".popsection\n"
                ".ifndef _.stapsdt.base\n"
                ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n"
                ".weak _.stapsdt.base\n"
                ".hidden _.stapsdt.base\n"
                "_.stapsdt.base: .space 1\n"
                ".size _.stapsdt.base, 1\n"
                ".popsection\n"
                ".endif\n" ::"r"((uint64_t)name),
                "r"((uint64_t)file), "r"((int32_t)42), "r"((int64_t)i), "r"((int64_t)0));
        __asm__ __volatile__("" ::: "memory");
    }
    return now_ns() - t0;
}
