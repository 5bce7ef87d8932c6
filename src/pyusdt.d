/* The pyusdt USDT provider: the probe layout of the original pyusdt 0.1.1,
 * with the interpreter id appended as the last argument of every probe.
 * Strings are passed as uintptr_t pointers to NUL-terminated UTF-8 that
 * already exists (the usdt crate copies `char *` arguments on every fire). */
provider pyusdt {
    probe PY_START(uintptr_t, uintptr_t, int32_t, int64_t, int64_t);
    probe PY_RESUME(uintptr_t, uintptr_t, int32_t, int64_t, int64_t);
    probe PY_RETURN(uintptr_t, uintptr_t, int32_t, int64_t, uintptr_t, int64_t);
    probe PY_YIELD(uintptr_t, uintptr_t, int32_t, int64_t, uintptr_t, int64_t);
    probe CALL(uintptr_t, uintptr_t, int32_t, int64_t, uintptr_t, int64_t);
    probe LINE(uintptr_t, uintptr_t, int32_t, int64_t);
};
