/* Internal types of the core: the session, the pulled message, the reply. Not for applications. */
#ifndef FP_INTERNAL_H
#define FP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pb.h>

#include "fedproto_node.h"
#include "fp_crypto.h"

#define FP_CHUNK_SIZE 5242880u          /* flwr's FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE */
#define FP_MAX_TREE_DEPTH 5             /* Message > RecordDict > record > Array > ArrayChunk */
#define FP_NPY_HEADER_MAX 1024          /* a numeric tensor's header is ~118 bytes */
#define FP_MAX_RECORDS 8                /* records of one message's RecordDict */
#define FP_MAX_METRICS 16
#define FP_ERROR_TEXT 256

typedef enum {
    T_MESSAGE, T_RECORDDICT, T_ARRAYRECORD, T_ARRAY, T_ARRAYCHUNK, T_CONFIGRECORD, T_METRICRECORD, T_NONE
} fp_type;
extern const char *const fp_type_names[T_NONE];

/* ---- errors: a fixed text buffer; every peer string is bounded and escaped first ---- */
typedef struct { char text[FP_ERROR_TEXT]; } fp_err;
void fp_err_set(fp_err *e, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Peer text for a log or an error: at most `limit` characters, non-printables as \xNN. */
void fp_bound_text(char *out, size_t out_size, const uint8_t *text, size_t length, size_t limit);

/* ---- a byte sink over nanopb's output stream: count, hash or copy a window of the bytes ---- */
typedef struct {
    uint8_t *window;        /* copy bytes [from, from + capacity) of the stream here */
    size_t from, capacity, copied;
    fp_sha256 *hash;        /* or hash every byte */
    size_t position;        /* bytes written so far */
} fp_sink;
pb_ostream_t fp_sink_stream(fp_sink *sink);
bool fp_write(pb_ostream_t *out, const void *bytes, size_t length);
bool fp_write_text(pb_ostream_t *out, const char *text);
bool fp_write_uint(pb_ostream_t *out, uint64_t value);
bool fp_write_json_string(pb_ostream_t *out, const char *utf8);  /* json.dumps(ensure_ascii) */
void fp_hex(char out[65], const uint8_t digest[32]);

/* ---- object headers ---- */
typedef struct {
    fp_type type;
    unsigned child_count;
    const char *children;   /* child_count ids of 64 hex digits, comma separated */
    uint64_t body_length;
} fp_object_header;
/* Parse "<Type> <ids> <len>" (without the NUL); 0 or -1 with the reason in e. */
int fp_parse_object_header(const char *header, size_t length, fp_object_header *out, fp_err *e);
bool fp_is_object_id(const char *text, size_t length);

/* ---- tiny JSON for exactly the object bodies: {"name": "id", ...} and an Array's metadata ---- */
typedef struct {
    const uint8_t *at, *end;
} fp_json;
int fp_json_expect(fp_json *j, char c);
int fp_json_peek(fp_json *j);
/* A string, unescaped into out (NUL-terminated UTF-8); -1 if malformed or longer than out_size - 1. */
int fp_json_string(fp_json *j, char *out, size_t out_size);
int fp_json_uint(fp_json *j, uint64_t *value, uint64_t max);
int fp_json_end(fp_json *j);

/* ---- .npy ---- */
typedef struct {
    fp_dtype dtype;
    bool supported;         /* false: a valid numpy dtype this port does not hold (Message.error) */
    char descr[8];
    unsigned ndim;
    uint32_t shape[8];
    uint64_t count;
    size_t itemsize;
} fp_npy_info;
/* Parse a version 1.0-3.0 header dict (the text after the length field). -1: not a numeric .npy. */
int fp_npy_parse_header(const char *dict, size_t length, fp_npy_info *info, fp_err *e);
/* The header numpy.save writes for (dtype, shape): magic, version 1.0, dict, padding to 64. */
size_t fp_npy_write_header(uint8_t *out, size_t capacity, fp_dtype dtype, unsigned ndim, const uint32_t *shape);
size_t fp_dtype_size(fp_dtype dtype);
const char *fp_dtype_name(fp_dtype dtype);   /* "float32" */
const char *fp_dtype_descr(fp_dtype dtype);  /* "<f4" */

#endif
