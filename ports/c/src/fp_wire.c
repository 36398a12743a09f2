/* Small pieces shared by the core: error texts, bounded peer text, the byte sink that nanopb
 * encodes into (count, hash or window), object headers, and the JSON of object bodies. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <pb_encode.h>

#include "fp_internal.h"

const char *const fp_type_names[T_NONE] = {
    "Message", "RecordDict", "ArrayRecord", "Array", "ArrayChunk", "ConfigRecord", "MetricRecord",
};

void fp_err_set(fp_err *e, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(e->text, sizeof e->text, fmt, args);
    va_end(args);
}

void fp_bound_text(char *out, size_t out_size, const uint8_t *text, size_t length, size_t limit) {
    size_t o = 0;
    for (size_t i = 0; i < length && o + 5 < out_size; i++) {
        if (i == limit) {
            if (o + 4 < out_size) memcpy(out + o, "...", 3), o += 3;
            break;
        }
        uint8_t c = text[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, out_size - o, "\\x%02x", c);
        }
    }
    out[o < out_size ? o : out_size - 1] = 0;
}

/* ---- the sink ---- */

static bool sink_callback(pb_ostream_t *stream, const pb_byte_t *buf, size_t count) {
    fp_sink *sink = stream->state;
    if (sink->hash != NULL) fp_sha256_update(sink->hash, buf, count);
    if (sink->window != NULL) {
        /* nanopb's submessage streams count from 0: the sink counts the absolute position itself. */
        size_t at = sink->position;
        size_t end = sink->from + sink->capacity;
        if (at + count > sink->from && at < end) {
            size_t skip = at < sink->from ? sink->from - at : 0;
            size_t take = count - skip;
            if (at + skip + take > end) take = end - (at + skip);
            memcpy(sink->window + (at + skip - sink->from), buf + skip, take);
            sink->copied += take;
        }
    }
    sink->position += count;
    return true;
}

pb_ostream_t fp_sink_stream(fp_sink *sink) {
    pb_ostream_t stream = {sink_callback, sink, SIZE_MAX, 0, NULL};
    return stream;
}

bool fp_write(pb_ostream_t *out, const void *bytes, size_t length) {
    return pb_write(out, bytes, length);
}

bool fp_write_text(pb_ostream_t *out, const char *text) { return pb_write(out, (const pb_byte_t *)text, strlen(text)); }

bool fp_write_uint(pb_ostream_t *out, uint64_t value) {
    char digits[24];
    size_t at = sizeof digits;  /* on every object header: no printf on this path */
    do digits[--at] = (char)('0' + value % 10); while ((value /= 10) != 0);
    return fp_write(out, digits + at, sizeof digits - at);
}

static bool write_u_escape(pb_ostream_t *out, unsigned unit) {
    char text[12];
    snprintf(text, sizeof text, "\\u%04x", unit & 0xffffu);
    return fp_write_text(out, text);
}

/* Python's json.dumps(ensure_ascii=True) of a UTF-8 string (invalid UTF-8 is written as U+FFFD). */
bool fp_write_json_string(pb_ostream_t *out, const char *utf8) {
    const uint8_t *p = (const uint8_t *)utf8;
    bool ok = fp_write_text(out, "\"");
    while (ok && *p) {
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            switch (c) {
            case '"': ok = fp_write_text(out, "\\\""); break;
            case '\\': ok = fp_write_text(out, "\\\\"); break;
            case '\n': ok = fp_write_text(out, "\\n"); break;
            case '\r': ok = fp_write_text(out, "\\r"); break;
            case '\t': ok = fp_write_text(out, "\\t"); break;
            case '\b': ok = fp_write_text(out, "\\b"); break;
            case '\f': ok = fp_write_text(out, "\\f"); break;
            default: ok = c < 0x20 ? write_u_escape(out, c) : fp_write(out, &c, 1);
            }
            continue;
        }
        unsigned need = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
        uint32_t code = c & (0x3f >> need);
        unsigned i = 1;
        for (; i <= need && (p[i] & 0xc0) == 0x80; i++) code = (code << 6) | (p[i] & 0x3f);
        if (need == 0 || i <= need || code > 0x10ffff) code = 0xfffd, i = 1;
        p += i;
        if (code >= 0x10000) {
            code -= 0x10000;
            ok = write_u_escape(out, 0xd800 | (code >> 10)) && write_u_escape(out, 0xdc00 | (code & 0x3ff));
        } else {
            ok = write_u_escape(out, code);
        }
    }
    return ok && fp_write_text(out, "\"");
}

void fp_hex(char out[65], const uint8_t digest[32]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[digest[i] >> 4];
        out[2 * i + 1] = digits[digest[i] & 15];
    }
    out[64] = 0;
}

/* ---- object headers: "<Type> <id,id,...> <len>" ---- */

bool fp_is_object_id(const char *text, size_t length) {
    if (length != 64) return false;
    for (size_t i = 0; i < 64; i++) {
        char c = text[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

int fp_parse_object_header(const char *header, size_t length, fp_object_header *out, fp_err *e) {
    const char *first = memchr(header, ' ', length);
    const char *second = first ? memchr(first + 1, ' ', length - (size_t)(first + 1 - header)) : NULL;
    if (second == NULL || memchr(second + 1, ' ', length - (size_t)(second + 1 - header)) != NULL) {
        fp_err_set(e, "the header does not have exactly 3 fields");
        return -1;
    }
    out->type = T_NONE;
    for (int t = 0; t < T_NONE; t++) {
        if ((size_t)(first - header) == strlen(fp_type_names[t]) && memcmp(header, fp_type_names[t], (size_t)(first - header)) == 0)
            out->type = (fp_type)t;
    }
    if (out->type == T_NONE) {
        char shown[40];
        fp_bound_text(shown, sizeof shown, (const uint8_t *)header, (size_t)(first - header), 20);
        fp_err_set(e, "unknown object type '%s'", shown);
        return -1;
    }
    size_t ids_length = (size_t)(second - first - 1);
    out->children = first + 1;
    out->child_count = 0;
    if (ids_length > 0) {
        if ((ids_length + 1) % 65 != 0) {
            fp_err_set(e, "malformed child id list");
            return -1;
        }
        out->child_count = (unsigned)((ids_length + 1) / 65);
        for (unsigned i = 0; i < out->child_count; i++) {
            const char *id = out->children + 65 * i;
            if (!fp_is_object_id(id, 64) || (i + 1 < out->child_count && id[64] != ',')) {
                fp_err_set(e, "malformed child id %u", i);
                return -1;
            }
            for (unsigned j = 0; j < i; j++) {
                if (memcmp(out->children + 65 * j, id, 64) == 0) {
                    fp_err_set(e, "the header lists child %u twice", i);
                    return -1;
                }
            }
        }
    }
    const char *digits = second + 1;
    size_t count = length - (size_t)(digits - header);
    out->body_length = 0;
    if (count == 0 || count > 12 || (digits[0] == '0' && count > 1)) {
        fp_err_set(e, "malformed body length");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        if (digits[i] < '0' || digits[i] > '9') {
            fp_err_set(e, "malformed body length");
            return -1;
        }
        out->body_length = out->body_length * 10 + (uint64_t)(digits[i] - '0');
    }
    return 0;
}

/* ---- JSON: only what json.dumps writes for object bodies (objects, strings, ints, arrays) ---- */

static void skip_space(fp_json *j) {
    while (j->at < j->end && (*j->at == ' ' || *j->at == '\n' || *j->at == '\t' || *j->at == '\r')) j->at++;
}

int fp_json_peek(fp_json *j) {
    skip_space(j);
    return j->at < j->end ? *j->at : -1;
}

int fp_json_expect(fp_json *j, char c) {
    if (fp_json_peek(j) != (unsigned char)c) return -1;
    j->at++;
    return 0;
}

static int hex4(const uint8_t *p, unsigned *value) {
    *value = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        unsigned d = (c >= '0' && c <= '9') ? (unsigned)(c - '0') : (c >= 'a' && c <= 'f') ? (unsigned)(c - 'a' + 10)
                   : (c >= 'A' && c <= 'F') ? (unsigned)(c - 'A' + 10) : 16u;
        if (d == 16) return -1;
        *value = *value * 16 + d;
    }
    return 0;
}

static int put_utf8(char *out, size_t out_size, size_t *o, uint32_t code) {
    uint8_t bytes[4];
    size_t n;
    if (code < 0x80) bytes[0] = (uint8_t)code, n = 1;
    else if (code < 0x800) bytes[0] = (uint8_t)(0xc0 | (code >> 6)), bytes[1] = (uint8_t)(0x80 | (code & 0x3f)), n = 2;
    else if (code < 0x10000) {
        bytes[0] = (uint8_t)(0xe0 | (code >> 12)), bytes[1] = (uint8_t)(0x80 | ((code >> 6) & 0x3f));
        bytes[2] = (uint8_t)(0x80 | (code & 0x3f)), n = 3;
    } else {
        bytes[0] = (uint8_t)(0xf0 | (code >> 18)), bytes[1] = (uint8_t)(0x80 | ((code >> 12) & 0x3f));
        bytes[2] = (uint8_t)(0x80 | ((code >> 6) & 0x3f)), bytes[3] = (uint8_t)(0x80 | (code & 0x3f)), n = 4;
    }
    if (*o + n >= out_size) return -1;
    memcpy(out + *o, bytes, n);
    *o += n;
    return 0;
}

int fp_json_string(fp_json *j, char *out, size_t out_size) {
    if (fp_json_expect(j, '"') != 0) return -1;
    size_t o = 0;
    while (j->at < j->end && *j->at != '"') {
        uint8_t c = *j->at++;
        uint32_t code = c;
        if (c < 0x20 || c == 0) return -1;
        if (c == '\\') {
            if (j->at >= j->end) return -1;
            uint8_t k = *j->at++;
            const char *simple = strchr("\"\\/bfnrt", k);
            if (k != 0 && simple != NULL) {
                code = (uint32_t)("\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]);
            } else if (k == 'u') {
                unsigned unit, low;
                if (j->end - j->at < 4 || hex4(j->at, &unit) != 0) return -1;
                j->at += 4;
                code = unit;
                if (unit >= 0xd800 && unit < 0xdc00) {  /* a surrogate pair */
                    if (j->end - j->at < 6 || j->at[0] != '\\' || j->at[1] != 'u' || hex4(j->at + 2, &low) != 0 ||
                        low < 0xdc00 || low > 0xdfff)
                        return -1;
                    j->at += 6;
                    code = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                } else if (unit >= 0xdc00 && unit < 0xe000) {
                    return -1;
                }
                if (code == 0) return -1;  /* names are C strings */
            } else {
                return -1;
            }
            if (put_utf8(out, out_size, &o, code) != 0) return -1;
            continue;
        }
        if (o + 1 >= out_size) return -1;
        out[o++] = (char)c;
    }
    if (j->at >= j->end) return -1;
    j->at++;
    out[o] = 0;
    return 0;
}

int fp_json_uint(fp_json *j, uint64_t *value, uint64_t max) {
    skip_space(j);
    const uint8_t *start = j->at;
    *value = 0;
    while (j->at < j->end && *j->at >= '0' && *j->at <= '9') {
        *value = *value * 10 + (uint64_t)(*j->at - '0');
        if (*value > max) return -1;
        j->at++;
    }
    if (j->at == start || (*start == '0' && j->at - start > 1)) return -1;
    return 0;
}

int fp_json_end(fp_json *j) {
    skip_space(j);
    return j->at == j->end ? 0 : -1;
}
