/* threshold.c: the mechaway WASM ABI (mechaway/logic/WASM-ABI.md) in freestanding C.
 *
 * In:  a msgpack map, e.g. {"topic": "gh/1", "seq": 7, "payload": {"temp": 31.5}}
 * Out: the same map with "payload" replaced by "on" (temp > threshold) or "off"; every
 *      other entry (seq, topic, ts, ...) is copied byte for byte. With the param
 *      "route": true the result goes out as [["hot", msg]] or [["cold", msg]] instead.
 * Params (init): {"threshold": <number, default 30>, "route": <bool, default false>}.
 *
 * No libc, no WASI, no imports. Build (Debian: apt-get install clang lld):
 *   clang --target=wasm32 -O2 -ffreestanding -nostdlib -fno-builtin \
 *         -Wl,--no-entry -o threshold.wasm threshold.c
 */
#include <stddef.h>
#include <stdint.h>

#define EXPORT(name) __attribute__((export_name(name)))

typedef uint8_t u8;
typedef uint32_t u32;
typedef uint64_t u64;

/* ---- memory: a bump allocator on top of memory.grow ---------------------------- */

extern u8 __heap_base; /* end of static data and stack, set by wasm-ld */
static uintptr_t heap_top;

EXPORT("alloc") u8 *alloc(u32 len) {
    if (heap_top == 0) heap_top = (uintptr_t)&__heap_base;
    uintptr_t p = (heap_top + 7u) & ~(uintptr_t)7u;
    uintptr_t end = p + len;
    if (end < p) return 0;
    size_t have = __builtin_wasm_memory_size(0);
    size_t need = (end + 0xffffu) >> 16;
    /* past the host's memory limit memory.grow returns -1: report 0 */
    if (need > have && __builtin_wasm_memory_grow(0, need - have) == (size_t)-1) return 0;
    heap_top = end;
    return (u8 *)p;
}

/* The host reuses the buffers it gets from alloc; nothing to free in a bump heap. */
EXPORT("dealloc") void dealloc(u8 *ptr, u32 len) { (void)ptr; (void)len; }

static void copy(u8 *dst, const u8 *src, u32 n) {
    while (n--) *dst++ = *src++;
}

static int64_t pack(const void *ptr, u32 len) {
    return (int64_t)(((u64)(uintptr_t)ptr << 32) | len);
}

/* An error: bit 63 set, then the packed UTF-8 message. */
#define FAIL(text) ((int64_t)((1ull << 63) | (u64)pack(text, sizeof(text) - 1)))

/* ---- a minimal msgpack reader ---------------------------------------------------- */

static u64 be(const u8 *p, u32 n) {
    u64 v = 0;
    while (n--) v = (v << 8) | *p++;
    return v;
}

static const u8 *skip(const u8 *p, const u8 *end);

static const u8 *skip_n(const u8 *p, const u8 *end, u64 count) {
    while (count-- && p) p = skip(p, end);
    return p;
}

static const u8 *adv(const u8 *p, u64 n, const u8 *end) {
    return n > (u64)(end - p) ? 0 : p + n;
}

/* Position after the value at p, or 0 if it is malformed or truncated. */
static const u8 *skip(const u8 *p, const u8 *end) {
    if (p >= end) return 0;
    u8 b = *p++;
    if (b < 0x80 || b >= 0xe0) return p;                       /* fixint */
    if (b < 0x90) return skip_n(p, end, 2u * (b & 15));         /* fixmap */
    if (b < 0xa0) return skip_n(p, end, b & 15);                /* fixarray */
    if (b < 0xc0) return adv(p, b & 31, end);                   /* fixstr */
    switch (b) {
    case 0xc0: case 0xc2: case 0xc3: return p;                  /* nil, bools */
    case 0xc4: case 0xd9: return (p = adv(p, 1, end)) ? adv(p, p[-1], end) : 0;
    case 0xc5: case 0xda: return (p = adv(p, 2, end)) ? adv(p, be(p - 2, 2), end) : 0;
    case 0xc6: case 0xdb: return (p = adv(p, 4, end)) ? adv(p, be(p - 4, 4), end) : 0;
    case 0xc7: return (p = adv(p, 1, end)) ? adv(p, 1 + be(p - 1, 1), end) : 0;
    case 0xc8: return (p = adv(p, 2, end)) ? adv(p, 1 + be(p - 2, 2), end) : 0;
    case 0xc9: return (p = adv(p, 4, end)) ? adv(p, 1 + be(p - 4, 4), end) : 0;
    case 0xcc: case 0xd0: return adv(p, 1, end);
    case 0xcd: case 0xd1: return adv(p, 2, end);
    case 0xca: case 0xce: case 0xd2: return adv(p, 4, end);
    case 0xcb: case 0xcf: case 0xd3: return adv(p, 8, end);
    case 0xd4: return adv(p, 2, end);
    case 0xd5: return adv(p, 3, end);
    case 0xd6: return adv(p, 5, end);
    case 0xd7: return adv(p, 9, end);
    case 0xd8: return adv(p, 17, end);
    case 0xdc: return (p = adv(p, 2, end)) ? skip_n(p, end, be(p - 2, 2)) : 0;
    case 0xdd: return (p = adv(p, 4, end)) ? skip_n(p, end, be(p - 4, 4)) : 0;
    case 0xde: return (p = adv(p, 2, end)) ? skip_n(p, end, 2 * be(p - 2, 2)) : 0;
    case 0xdf: return (p = adv(p, 4, end)) ? skip_n(p, end, 2 * be(p - 4, 4)) : 0;
    default: return 0;                                          /* 0xc1 */
    }
}

/* Entry count of the map at p; *hdr = header length, 0 if p is not a map. */
static u32 map_header(const u8 *p, const u8 *end, u32 *hdr) {
    *hdr = 0;
    if (p >= end) return 0;
    if ((*p & 0xf0) == 0x80) { *hdr = 1; return *p & 15; }
    if (*p == 0xde && adv(p, 3, end)) { *hdr = 3; return (u32)be(p + 1, 2); }
    if (*p == 0xdf && adv(p, 5, end)) { *hdr = 5; return (u32)be(p + 1, 4); }
    return 0;
}

/* Do the encoded bytes [p, q) equal the fixstr encoding of the C string s? */
static int key_is(const u8 *p, const u8 *q, const char *s) {
    u32 n = 0;
    while (s[n]) n++;
    if ((u32)(q - p) != n + 1 || *p != (0xa0 | n)) return 0;
    for (u32 i = 0; i < n; i++) if (p[1 + i] != (u8)s[i]) return 0;
    return 1;
}

/* The number at [p, end) as a double; *ok = 0 if it is not a number. */
static double number(const u8 *p, const u8 *end, int *ok) {
    *ok = 0;
    if (p >= end) return 0;
    u8 b = *p++;
    if (b < 0x80) { *ok = 1; return b; }
    if (b >= 0xe0) { *ok = 1; return (int)b - 256; }
    if (b < 0xca || b > 0xd3) return 0;
    u32 n = b == 0xca ? 4 : b == 0xcb ? 8 : 1u << ((b - 0xcc) & 3);
    if (!adv(p, n, end)) return 0;
    u64 v = be(p, n);
    *ok = 1;
    if (b == 0xca) { u32 w = (u32)v; float f; __builtin_memcpy(&f, &w, 4); return f; }
    if (b == 0xcb) { double d; __builtin_memcpy(&d, &v, 8); return d; }
    if (b < 0xd0) return (double)v;
    u32 shift = 64 - 8 * n;
    return (double)((int64_t)(v << shift) >> shift);
}

/* Value of key in the map [p, end), or 0. *vend = end of that value. */
static const u8 *lookup(const u8 *p, const u8 *end, const char *key, const u8 **vend) {
    u32 hdr;
    u32 n = map_header(p, end, &hdr);
    if (!hdr) return 0;
    for (p += hdr; n--;) {
        const u8 *v = skip(p, end);
        const u8 *next = v ? skip(v, end) : 0;
        if (!next) return 0;
        if (key_is(p, v, key)) { *vend = next; return v; }
        p = next;
    }
    return 0;
}

/* ---- the node ---------------------------------------------------------------------- */

static double threshold = 30;
static int route = 0;
static u8 *out;
static u32 out_cap;

EXPORT("init") int64_t init(const u8 *params, u32 len) {
    const u8 *end = params + len, *vend;
    u32 hdr;
    map_header(params, end, &hdr);
    if (!hdr) return FAIL("params must be a msgpack map");
    const u8 *v = lookup(params, end, "threshold", &vend);
    if (v) {
        int ok;
        threshold = number(v, vend, &ok);
        if (!ok) return FAIL("params.threshold must be a number");
    }
    v = lookup(params, end, "route", &vend);
    if (v) {
        if (*v != 0xc2 && *v != 0xc3) return FAIL("params.route must be a boolean");
        route = *v == 0xc3;
    }
    return 0;
}

EXPORT("process") int64_t process(const u8 *in, u32 len) {
    const u8 *end = in + len;
    /* room for the [[port, ...]] wrapper; "on"/"off" never outgrow a payload map */
    u32 need = len + 16;
    if (need > out_cap) {
        out = alloc(need);
        out_cap = out ? need : 0;
        if (!out) return FAIL("out of memory");
    }
    u8 *o = out;
    u32 hdr, n = map_header(in, end, &hdr);
    if (!hdr) return FAIL("input is not a msgpack map");
    int found = 0, hot = 0;
    if (route) { /* patched below once hot/cold is known */
        static const u8 pair[] = {0x91, 0x92, 0xa4, 'c', 'o', 'l', 'd'};
        copy(o, pair, sizeof pair);
        o += sizeof pair;
    }
    u8 *map_start = o;
    copy(o, in, hdr);
    o += hdr;
    for (const u8 *p = in + hdr; n--;) {
        const u8 *v = skip(p, end);
        const u8 *next = v ? skip(v, end) : 0;
        if (!next) return FAIL("input is not a msgpack map");
        if (key_is(p, v, "payload")) {
            const u8 *tend, *t = lookup(v, next, "temp", &tend);
            int ok = 0;
            double temp = t ? number(t, tend, &ok) : 0;
            if (!ok) return FAIL("payload.temp missing or not a number");
            found = 1;
            hot = temp > threshold;
            copy(o, p, (u32)(v - p));
            o += v - p;
            copy(o, hot ? (const u8 *)"\xa2on" : (const u8 *)"\xa3off", hot ? 3 : 4);
            o += hot ? 3 : 4;
        } else {
            copy(o, p, (u32)(next - p));
            o += next - p;
        }
        p = next;
    }
    if (!found) return FAIL("payload.temp missing or not a number");
    if (route && hot) {
        /* "cold" (5 bytes) -> "hot" (4 bytes): shift the map left by one byte */
        static const u8 port[] = {0xa3, 'h', 'o', 't'};
        copy(out + 2, port, sizeof port);
        copy(out + 6, map_start, (u32)(o - map_start));
        o -= 1;
    }
    return pack(out, (u32)(o - out));
}
