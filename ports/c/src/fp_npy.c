/* The .npy header (docs/PROTOCOL.md §6): read what numpy.save writes, write it the same way.
 * This port holds float32 and float64, little-endian, C order; other numeric dtypes numpy allows
 * are recognised (so the node answers Message.error "unsupported") and anything else is refused. */
#include <stdio.h>
#include <string.h>

#include "fp_internal.h"

size_t fp_dtype_size(fp_dtype dtype) { return dtype == FP_DTYPE_F4 ? 4 : 8; }
const char *fp_dtype_name(fp_dtype dtype) { return dtype == FP_DTYPE_F4 ? "float32" : "float64"; }
const char *fp_dtype_descr(fp_dtype dtype) { return dtype == FP_DTYPE_F4 ? "<f4" : "<f8"; }

/* The dtypes of §6 numpy and fedproto accept: one kind letter and item sizes. */
static bool numeric_descr(const char *d) {
    static const char *const allowed[] = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
                                          "f2", "f4", "f8", "c8", "c16"};
    if (d[0] != '<' && d[0] != '>' && d[0] != '|') return false;
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        if (strcmp(d + 1, allowed[i]) == 0) return true;
    return false;
}

static const char *skip(const char *p, const char *end) {
    while (p < end && *p == ' ') p++;
    return p;
}

static int literal(const char **p, const char *end, const char *text) {
    size_t n = strlen(text);
    *p = skip(*p, end);
    if ((size_t)(end - *p) < n || memcmp(*p, text, n) != 0) return -1;
    *p += n;
    return 0;
}

/* "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" in numpy's key order, padded. */
int fp_npy_parse_header(const char *dict, size_t length, fp_npy_info *info, fp_err *e) {
    const char *p = dict, *end = dict + length;
    memset(info, 0, sizeof *info);
    while (end > p && (end[-1] == ' ' || end[-1] == '\n')) end--;
    if (literal(&p, end, "{'descr':") || literal(&p, end, "'")) goto malformed;
    const char *quote = memchr(p, '\'', (size_t)(end - p));
    if (quote == NULL || quote - p >= (long)sizeof info->descr) goto malformed;
    memcpy(info->descr, p, (size_t)(quote - p));
    p = quote + 1;
    bool fortran;
    if (literal(&p, end, ",") || literal(&p, end, "'fortran_order':")) goto malformed;
    if (literal(&p, end, "False") == 0) fortran = false;
    else if (literal(&p, end, "True") == 0) fortran = true;
    else goto malformed;
    if (literal(&p, end, ",") || literal(&p, end, "'shape':") || literal(&p, end, "(")) goto malformed;
    info->count = 1;
    while (literal(&p, end, ")") != 0) {
        p = skip(p, end);
        uint64_t n = 0;
        const char *start = p;
        while (p < end && *p >= '0' && *p <= '9' && n <= UINT32_MAX) n = n * 10 + (uint64_t)(*p++ - '0');
        if (p == start || n > UINT32_MAX || info->ndim == 8) goto malformed;
        info->shape[info->ndim++] = (uint32_t)n;
        if (n != 0 && info->count > UINT64_MAX / n) goto malformed;
        info->count *= n;
        if (literal(&p, end, ",") != 0 && (p = skip(p, end), p >= end || *p != ')')) goto malformed;
    }
    if (literal(&p, end, ",") || literal(&p, end, "}") || p != end) goto malformed;
    if (!numeric_descr(info->descr)) {
        fp_err_set(e, "the .npy dtype is not a numeric numpy dtype");
        return -1;
    }
    info->supported = !fortran || info->ndim < 2;
    if (strcmp(info->descr, "<f4") == 0) info->dtype = FP_DTYPE_F4;
    else if (strcmp(info->descr, "<f8") == 0) info->dtype = FP_DTYPE_F8;
    else info->supported = false;
    info->itemsize = fp_dtype_size(info->dtype);
    return 0;
malformed:
    fp_err_set(e, "the .npy header is not one numpy.save writes for a numeric array");
    return -1;
}

size_t fp_npy_write_header(uint8_t *out, size_t capacity, fp_dtype dtype, unsigned ndim, const uint32_t *shape) {
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", fp_dtype_descr(dtype));
    for (unsigned i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, i + 1 < ndim || ndim > 1 ? "%u, " : "%u,", (unsigned)shape[i]);
    if (ndim > 1) n -= 2;  /* numpy writes (2, 3) and (4,) */
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t total = 10 + (size_t)n + 1;
    total = (total + 63) / 64 * 64;
    if (total > capacity) return 0;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (uint8_t)((total - 10) & 0xff);
    out[9] = (uint8_t)((total - 10) >> 8);
    memcpy(out + 10, dict, (size_t)n);
    memset(out + 10 + n, ' ', total - 10 - (size_t)n - 1);
    out[total - 1] = '\n';
    return total;
}
