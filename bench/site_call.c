/* bench/site_call.c -- the loop bench/site_cost.py runs on pyusdt's own probe
 * site: built as a shared library, loaded with ctypes into a Python process
 * that imported pyusdt, and given the address of the site pyusdt fires on
 * this kernel and of its semaphore. Like bench/sdt_loop.c's loop, it checks
 * the semaphore and, when it is raised, calls the site (a naked `nop; ret`
 * function in pyusdt's library) with PY_START's arguments; it returns the
 * loop's duration in ns.
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
