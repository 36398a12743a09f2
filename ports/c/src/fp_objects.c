/* A message's object tree (docs/PROTOCOL.md §16, §17): pulled objects in, checked and streamed into
 * the model buffer; the reply's objects out, their ids computed in a first pass over the model and
 * their bytes written again, slice by slice, when the SuperLink asks for them.
 *
 * Pull order is parents first, level by level (Message, RecordDict, records, Arrays), then the
 * ArrayChunks of each array in data order, so each chunk's bytes go straight to their place in the
 * model buffer as they arrive (hashed on the way; the message is used only once every hash matched).
 * A chunk that an array repeats ("arraychunk_ids": [0, 1, 1, 2]) is pulled once and copied. */
#include <stdio.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "flwr/proto/recorddict.pb.h"
#include "fp_session.h"

#define NAME_MAX_BYTES 256
#define CLIENT_APP_RAISED_EXCEPTION 2  /* flwr/common/constant.py ErrorCode */

static size_t align8(size_t n) { return (n + 7u) & ~(size_t)7u; }

void *fp_names_alloc(fp_session *s, size_t size) {
    size = align8(size);
    if (size > s->config.limits.names_bytes - s->names_used) return NULL;
    void *p = s->names + s->names_used;
    s->names_used += size;
    if (s->names_used > s->names_peak) s->names_peak = s->names_used;
    return p;
}

static char *names_copy(fp_session *s, const char *text) {
    char *copy = fp_names_alloc(s, strlen(text) + 1);
    if (copy != NULL) memcpy(copy, text, strlen(text) + 1);
    return copy;
}

static void *model_alloc(fp_session *s, uint64_t size) {
    if (size > s->config.limits.model_bytes - s->model_used) return NULL;
    void *p = s->model + s->model_used;
    s->model_used += align8((size_t)size);
    if (s->model_used > s->model_peak) s->model_peak = s->model_used;
    return p;
}

static void unsupported(fp_session *s, const char *why) {
    if (s->work.unsupported[0] == 0) snprintf(s->work.unsupported, sizeof s->work.unsupported, "%s", why);
}

static int fail(fp_session *s, const char *reason) {
    char shown[80];
    fp_bound_text(shown, sizeof shown, (const uint8_t *)s->nodes[s->work.pulling].id, 64, 16);
    fp_err_set(&s->error, "object %s: %s", shown, reason);
    return -1;
}

void fp_work_reset(fp_session *s) {
    memset(&s->work, 0, sizeof s->work);
    memset(&s->rx, 0, sizeof s->rx);
    s->work.legacy = -1;
    s->work.call_record = -1;
    s->work.config_record = -1;
    s->work.pulling = 0;
    s->work.retry_delay = 1.0;
    s->names_used = 0;
    s->model_used = 0;
    s->has_work = false;
}

/* ---- the tree ---- */

typedef struct {
    fp_session *s;
    int16_t parent;
    uint8_t depth;
} tree_context;

bool fp_tree_decode(pb_istream_t *stream, const pb_field_t *field, void **arg) {
    (void)field;
    tree_context *context = *arg;
    fp_session *s = context->s;
    if (s->work.node_count >= s->config.limits.max_objects) {
        s->work.tree_error = 1;
        return false;
    }
    if (context->depth >= FP_MAX_TREE_DEPTH) {
        s->work.tree_error = 2;
        return false;
    }
    int16_t index = (int16_t)s->work.node_count++;
    fp_tree_node *node = &s->nodes[index];
    memset(node, 0, sizeof *node);
    node->parent = context->parent;
    node->depth = context->depth;
    node->type = T_NONE;
    node->array = -1;
    tree_context children = {s, index, (uint8_t)(context->depth + 1)};
    flwr_proto_ObjectTree tree = flwr_proto_ObjectTree_init_zero;
    tree.children.funcs.decode = fp_tree_decode;
    tree.children.arg = &children;
    if (!pb_decode(stream, flwr_proto_ObjectTree_fields, &tree)) return false;
    memcpy(node->id, tree.object_id, sizeof node->id);
    return true;
}

/* The k-th child (tree order) of a node, or -1. */
static int child_of(const fp_session *s, int parent, unsigned k) {
    for (unsigned i = 0; i < s->work.node_count; i++) {
        if (s->nodes[i].parent == parent && k-- == 0) return (int)i;
    }
    return -1;
}

static unsigned child_count(const fp_session *s, int parent) {
    unsigned count = 0;
    for (unsigned i = 0; i < s->work.node_count; i++) count += s->nodes[i].parent == parent;
    return count;
}

int fp_tree_check(fp_session *s) {
    if (s->work.tree_error == 1) {
        fp_err_set(&s->error, "PullMessages: the object tree has more than %u objects (this node's limit)",
                   s->config.limits.max_objects);
        return -1;
    }
    if (s->work.tree_error == 2) {
        fp_err_set(&s->error, "PullMessages: the object tree is deeper than %d levels", FP_MAX_TREE_DEPTH);
        return -1;
    }
    for (unsigned i = 0; i < s->work.node_count; i++) {
        fp_tree_node *node = &s->nodes[i];
        if (!fp_is_object_id(node->id, strlen(node->id))) {
            fp_err_set(&s->error, "PullMessages: object tree node %u has no valid object id", i);
            return -1;
        }
        node->first = (int16_t)i;
        for (unsigned j = 0; j < i; j++) {
            if (strcmp(s->nodes[j].id, node->id) != 0) continue;
            if (node->parent == s->nodes[j].parent) {
                fp_err_set(&s->error, "PullMessages: the object tree lists a child twice under one parent");
                return -1;
            }
            node->first = s->nodes[j].first;
            break;
        }
        if (node->first == (int16_t)i) continue;
        /* The same object elsewhere in the tree: same level, same children (no cycles). */
        const fp_tree_node *first = &s->nodes[node->first];
        unsigned count = child_count(s, (int)i);
        bool same = first->depth == node->depth && count == child_count(s, node->first);
        for (unsigned k = 0; same && k < count; k++)
            same = strcmp(s->nodes[child_of(s, (int)i, k)].id, s->nodes[child_of(s, node->first, k)].id) == 0;
        if (!same) {
            fp_err_set(&s->error, "PullMessages: the object tree lists one object with two different subtrees");
            return -1;
        }
    }
    return 0;
}

/* ---- what to pull next ---- */

static int array_finish(fp_session *s, fp_in_array *a) {
    if (s->work.unsupported[0]) return 0;
    if (a->data_start == 0 || a->stream_position != a->data_start + a->data_length) {
        fp_err_set(&s->error, "array '%.40s': its chunks are not one complete .npy", a->view.name);
        return -1;
    }
    return 0;
}

static int npy_feed(fp_session *s, fp_in_array *a, const uint8_t *bytes, size_t length);

/* Pull cursor: every non-chunk object level by level, then each wanted array's chunks in order. */
int fp_next_pull(fp_session *s) {
    while (!s->work.phase1_done) {
        for (unsigned i = s->work.phase1_index; i < s->work.node_count; i++) {
            const fp_tree_node *node = &s->nodes[i];
            if (node->depth == s->work.phase1_depth && node->first == (int16_t)i && !node->pulled) {
                s->work.phase1_index = i;
                return (int)i;
            }
        }
        s->work.phase1_index = 0;
        if (++s->work.phase1_depth == FP_MAX_TREE_DEPTH - 1) {
            s->work.phase1_done = true;
            if (fp_phase1_done(s) != 0) return -2;
        }
    }
    while (s->work.array_cursor < s->work.array_count && !s->work.unsupported[0]) {
        fp_in_array *a = &s->arrays[s->work.array_cursor];
        if (!a->wanted || a->same_as >= 0) {
            s->work.array_cursor++;
            continue;
        }
        while (a->next_position < a->position_count && !s->work.unsupported[0]) {
            int chunk = child_of(s, a->node, a->positions[a->next_position]);
            fp_tree_node *node = &s->nodes[s->nodes[chunk].first];
            if (!node->pulled) {
                s->rx.array = (int16_t)s->work.array_cursor;
                return (int)(node - s->nodes);
            }
            /* A repeated chunk: its bytes are already in the model buffer, where it was first used. */
            a->next_position++;
            if (node->chunk_offset < a->data_start || a->data_start == 0) {
                unsupported(s, "an array repeats a chunk that holds its .npy header");
                break;
            }
            const uint8_t *from = (const uint8_t *)a->view.data + (node->chunk_offset - a->data_start);
            if (npy_feed(s, a, from, node->chunk_length) != 0) return -2;
        }
        if (s->work.unsupported[0]) break;
        if (array_finish(s, a) != 0) return -2;
        s->work.array_cursor++;
    }
    /* Whatever the call does not use (an unsupported message's data, other records' arrays) is
     * still pulled, each object once, hashed and dropped: the SuperLink hands out whole messages. */
    for (unsigned i = 0; i < s->work.node_count; i++) {
        if (s->nodes[i].first == (int16_t)i && !s->nodes[i].pulled) {
            s->rx.array = -1;
            return (int)i;
        }
    }
    return -1;
}

/* ---- one pulled object, streamed ---- */

void fp_pull_begin(fp_session *s, int node) {
    int16_t array = s->rx.array;
    memset(&s->rx, 0, sizeof s->rx);
    s->rx.array = array;
    s->work.pulling = (int16_t)node;
    fp_sha256_start(&s->rx.hash);
}

static fp_type expected_type(const fp_session *s, const fp_tree_node *node, fp_type got) {
    switch (node->depth) {
    case 0: return T_MESSAGE;
    case 1: return T_RECORDDICT;
    case 2: return got == T_CONFIGRECORD || got == T_METRICRECORD ? got : T_ARRAYRECORD;
    case 3: return s->nodes[node->parent].type == T_ARRAYRECORD ? T_ARRAY : T_NONE;
    default: return s->nodes[node->parent].type == T_ARRAY ? T_ARRAYCHUNK : T_NONE;
    }
}

static int header_done(fp_session *s) {
    fp_pull_rx *rx = &s->rx;
    fp_tree_node *node = &s->nodes[s->work.pulling];
    if (fp_parse_object_header((const char *)s->scratch, rx->header_length, &rx->header, &s->error) != 0) {
        char reason[FP_ERROR_TEXT];
        memcpy(reason, s->error.text, sizeof reason);
        return fail(s, reason);
    }
    if (rx->header.type != expected_type(s, node, rx->header.type)) {
        char why[96];
        snprintf(why, sizeof why, "a %s where the tree has no place for one", fp_type_names[rx->header.type]);
        return fail(s, why);
    }
    unsigned count = child_count(s, s->work.pulling);
    bool same = count == rx->header.child_count;
    for (unsigned k = 0; same && k < count; k++)
        same = memcmp(s->nodes[child_of(s, s->work.pulling, k)].id, rx->header.children + 65 * k, 64) == 0;
    if (!same) return fail(s, "its header's children are not the object tree's");
    node->type = (uint8_t)rx->header.type;
    if (rx->header.type == T_ARRAYCHUNK) {
        node->chunk_offset = rx->array >= 0 ? s->arrays[rx->array].stream_position : 0;
        node->chunk_length = (uint32_t)rx->header.body_length;
        if (rx->header.body_length > FP_CHUNK_SIZE * 2ull) return fail(s, "a chunk larger than any flwr sends");
    } else if (rx->header_length + 1 + rx->header.body_length > s->scratch_size) {
        return fail(s, "its body exceeds this node's object buffer");
    }
    return 0;
}

int fp_pull_feed(fp_session *s, const uint8_t *bytes, size_t length) {
    fp_pull_rx *rx = &s->rx;
    fp_sha256_update(&rx->hash, bytes, length);
    s->work.pulled_bytes += length;
    while (length > 0 && !rx->header_done) {
        if (rx->header_length >= s->scratch_size - 1) return fail(s, "its header has no NUL within the buffer");
        uint8_t c = *bytes++;
        length--;
        if (c == 0) {
            rx->header_done = true;
            if (header_done(s) != 0) return -1;
        } else {
            s->scratch[rx->header_length++] = c;
        }
    }
    if (length == 0) return 0;
    if (length > rx->header.body_length - rx->body_received) return fail(s, "its body is longer than its header says");
    if (rx->header.type == T_ARRAYCHUNK) {
        rx->body_received += length;
        return rx->array >= 0 ? npy_feed(s, &s->arrays[rx->array], bytes, length) : 0;
    }
    memcpy(s->scratch + rx->header_length + 1 + rx->body_received, bytes, length);
    rx->body_received += length;
    return 0;
}

/* ---- .npy streaming into the model buffer ---- */

static int npy_header(fp_session *s, fp_in_array *a, const uint8_t *header, size_t length) {
    fp_npy_info info;
    fp_err e;
    if (fp_npy_parse_header((const char *)header, length, &info, &e) != 0) {
        fp_err_set(&s->error, "array '%.40s': %s", a->view.name, e.text);
        return -1;
    }
    if (a->announced) {
        bool same = info.supported && info.dtype == a->view.dtype && info.ndim == a->view.ndim;
        for (unsigned i = 0; same && i < info.ndim; i++) same = info.shape[i] == a->view.shape[i];
        if (!same) {
            fp_err_set(&s->error, "array '%.40s': the .npy header contradicts the Array's dtype and shape", a->view.name);
            return -1;
        }
    } else {
        char why[160];
        if (!info.supported) {
            snprintf(why, sizeof why, "array '%.40s': dtype %s (this node holds float32 and float64, C order)",
                     a->view.name, info.descr);
            unsupported(s, why);
            return 0;
        }
        a->view.dtype = info.dtype;
        a->view.ndim = info.ndim;
        memcpy(a->view.shape, info.shape, sizeof info.shape);
        a->view.count = (size_t)info.count;
        if (a->view.data == NULL && info.count <= (uint64_t)SIZE_MAX / 8)  /* not on a retried first chunk */
            a->view.data = model_alloc(s, info.count * info.itemsize);
        if (a->view.data == NULL) {
            snprintf(why, sizeof why, "the model does not fit this node's %zu-byte model buffer",
                     s->config.limits.model_bytes);
            unsupported(s, why);
            return 0;
        }
    }
    a->data_length = (uint64_t)a->view.count * fp_dtype_size(a->view.dtype);
    return 0;
}

/* How many .npy bytes make the preamble and header, as far as `at` bytes of it tell. */
static uint64_t npy_header_end(const uint8_t *held, uint64_t at) {
    if (at < 10) return 10;
    if (held[6] == 1) return 10 + (uint64_t)held[8] + ((uint64_t)held[9] << 8);
    if (at < 12) return 12;
    return 12 + (uint64_t)held[8] + ((uint64_t)held[9] << 8) + ((uint64_t)held[10] << 16) + ((uint64_t)held[11] << 24);
}

static int npy_feed(fp_session *s, fp_in_array *a, const uint8_t *bytes, size_t length) {
    uint8_t *held = s->scratch + s->scratch_size - (FP_NPY_HEADER_MAX + 16);  /* the .npy header, while it arrives */
    while (length > 0 && s->work.unsupported[0] == 0) {
        uint64_t at = a->stream_position;
        if (a->data_start == 0) {  /* still in the preamble or header: every pass takes bytes or ends it */
            uint64_t need = npy_header_end(held, at);
            if (need > FP_NPY_HEADER_MAX + 12) {
                unsupported(s, "an .npy header longer than this node reads");
                return 0;
            }
            if (at < need) {
                size_t take = (size_t)(need - at) < length ? (size_t)(need - at) : length;
                memcpy(held + at, bytes, take);
                a->stream_position += take, bytes += take, length -= take;
                if (a->stream_position < need) continue;
                at = a->stream_position;
            }
            if (at == 10 && (memcmp(held, "\x93NUMPY", 6) != 0 || held[6] < 1 || held[6] > 3 || held[7] != 0)) {
                fp_err_set(&s->error, "array '%.40s': its data is not an .npy file (magic or version)", a->view.name);
                return -1;
            }
            uint64_t end = npy_header_end(held, at);
            if (end > at) continue;  /* the header's length is known now: read the header */
            size_t offset = held[6] == 1 ? 10 : 12;
            if (npy_header(s, a, held + offset, (size_t)end - offset) != 0) return -1;
            a->data_start = end;
            continue;
        }
        uint64_t offset = at - a->data_start;
        if (length > a->data_length - offset) {
            fp_err_set(&s->error, "array '%.40s': its chunks hold more data than its .npy header says", a->view.name);
            return -1;
        }
        memmove((uint8_t *)a->view.data + offset, bytes, length);
        a->stream_position += length;
        length = 0;
    }
    if (length > 0) a->stream_position += length;  /* unsupported: counted, not kept */
    return 0;
}

/* ---- bodies of the pulled objects ---- */

static int find_child(fp_session *s, const char *id) {
    unsigned count = child_count(s, s->work.pulling);
    for (unsigned k = 0; k < count; k++) {
        int child = child_of(s, s->work.pulling, k);
        if (strcmp(s->nodes[child].id, id) == 0) return s->nodes[child].first;
    }
    return -1;
}

/* {"name": "child id", ...}: every name once, every id a child, every child named. */
typedef int (*entry_visitor)(fp_session *s, const char *name, int node, void *context);

static int read_name_map(fp_session *s, const uint8_t *body, size_t length, entry_visitor visit, void *context) {
    fp_json j = {body, body + length};
    char name[NAME_MAX_BYTES], id[72];
    unsigned count = child_count(s, s->work.pulling), entries = 0, distinct = 0;
    if (fp_json_expect(&j, '{') != 0) return fail(s, "its body is not a JSON object");
    if (fp_json_peek(&j) == '}') j.at++;
    else {
        do {
            if (fp_json_string(&j, name, sizeof name) != 0 || fp_json_expect(&j, ':') != 0 ||
                fp_json_string(&j, id, sizeof id) != 0)
                return fail(s, "its body is not a JSON object of name -> object id (or a name is too long)");
            int child = find_child(s, id);
            if (child < 0) return fail(s, "its body names an object its header does not list");
            /* Repeated names and ids: compare with the entries before (bodies are small). */
            fp_json again = {body, j.at};
            char earlier[NAME_MAX_BYTES], earlier_id[72];
            bool id_seen = false;
            fp_json_expect(&again, '{');
            for (unsigned e = 0; e < entries; e++) {
                fp_json_string(&again, earlier, sizeof earlier);
                fp_json_expect(&again, ':');
                fp_json_string(&again, earlier_id, sizeof earlier_id);
                fp_json_expect(&again, ',');
                if (strcmp(earlier, name) == 0) return fail(s, "its body repeats a name");
                id_seen |= strcmp(earlier_id, id) == 0;
            }
            entries++;
            distinct += !id_seen;
            if (visit(s, name, child, context) != 0) return -1;
        } while (fp_json_expect(&j, ',') == 0);
        if (fp_json_expect(&j, '}') != 0) return fail(s, "its body is not a JSON object");
    }
    if (fp_json_end(&j) != 0) return fail(s, "its body has bytes after the JSON object");
    /* Every named id is a distinct child (checked above): all children are named iff as many. */
    if (distinct != count) return fail(s, "its header lists a child its body does not name");
    return 0;
}

static int add_record(fp_session *s, const char *name, int node, void *context) {
    (void)context;
    if (s->work.record_count == FP_MAX_RECORDS) {
        unsupported(s, "more records than this node reads");
        return 0;
    }
    fp_in_record *r = &s->work.records[s->work.record_count];
    if ((r->name = names_copy(s, name)) == NULL) return fail(s, "the record names exceed this node's name buffer");
    r->node = (int16_t)node;
    s->work.record_count++;
    return 0;
}

static int add_array(fp_session *s, const char *name, int node, void *context) {
    int record = *(int *)context;
    if (s->work.array_count == s->config.limits.max_arrays) {
        unsupported(s, "more arrays than this node holds");
        return 0;
    }
    fp_in_array *a = &s->arrays[s->work.array_count];
    memset(a, 0, sizeof *a);
    if ((a->view.name = names_copy(s, name)) == NULL) return fail(s, "the array names exceed this node's name buffer");
    a->node = (int16_t)node;
    a->record = (int16_t)record;
    a->same_as = s->nodes[node].array;
    if (a->same_as < 0) s->nodes[node].array = (int16_t)s->work.array_count;
    s->work.array_count++;
    return 0;
}

static int read_array(fp_session *s, const uint8_t *body, size_t length) {
    int index = s->nodes[s->work.pulling].array;
    if (index < 0) return fail(s, "an Array no ArrayRecord names");
    fp_in_array *a = &s->arrays[index];
    fp_json j = {body, body + length};
    char key[24], dtype[24], stype[24];
    unsigned seen = 0, children = child_count(s, s->work.pulling);
    uint16_t scratch_positions[1];
    (void)scratch_positions;
    if (fp_json_expect(&j, '{') != 0) return fail(s, "its body is not a JSON object");
    do {
        if (fp_json_string(&j, key, sizeof key) != 0 || fp_json_expect(&j, ':') != 0) goto malformed;
        if (strcmp(key, "dtype") == 0 && !(seen & 1)) {
            seen |= 1;
            if (fp_json_string(&j, dtype, sizeof dtype) != 0) goto malformed;
        } else if (strcmp(key, "stype") == 0 && !(seen & 2)) {
            seen |= 2;
            if (fp_json_string(&j, stype, sizeof stype) != 0 || strcmp(stype, "numpy.ndarray") != 0)
                return fail(s, "its stype is not numpy.ndarray");
        } else if (strcmp(key, "shape") == 0 && !(seen & 4)) {
            seen |= 4;
            if (fp_json_expect(&j, '[') != 0) goto malformed;
            a->view.ndim = 0;
            if (fp_json_peek(&j) == ']') j.at++;
            else {
                do {
                    uint64_t n;
                    if (a->view.ndim == 8 || fp_json_uint(&j, &n, UINT32_MAX) != 0) goto malformed;
                    a->view.shape[a->view.ndim++] = (uint32_t)n;
                } while (fp_json_expect(&j, ',') == 0);
                if (fp_json_expect(&j, ']') != 0) goto malformed;
            }
        } else if (strcmp(key, "arraychunk_ids") == 0 && !(seen & 8)) {
            seen |= 8;
            /* Count first, then store: positions live in the name buffer. */
            fp_json count_pass = j;
            unsigned count = 0;
            uint64_t n;
            if (fp_json_expect(&count_pass, '[') != 0) goto malformed;
            if (fp_json_peek(&count_pass) != ']') {
                do {
                    if (fp_json_uint(&count_pass, &n, 65535) != 0) goto malformed;
                    count++;
                } while (fp_json_expect(&count_pass, ',') == 0);
            }
            a->positions = fp_names_alloc(s, (count ? count : 1) * sizeof(uint16_t));
            if (a->positions == NULL) return fail(s, "its chunk list exceeds this node's name buffer");
            fp_json_expect(&j, '[');
            size_t names_mark = s->names_used;  /* a bitmap of the children used, dropped below */
            uint8_t *used = fp_names_alloc(s, children / 8 + 1);
            if (used == NULL) return fail(s, "its chunk list exceeds this node's name buffer");
            memset(used, 0, children / 8 + 1);
            if (fp_json_peek(&j) == ']') j.at++;
            else {
                do {
                    fp_json_uint(&j, &n, 65535);
                    if (n >= children) return fail(s, "a chunk index out of range");
                    used[n / 8] |= (uint8_t)(1u << (n % 8));
                    a->positions[a->position_count++] = (uint16_t)n;
                } while (fp_json_expect(&j, ',') == 0);
                if (fp_json_expect(&j, ']') != 0) goto malformed;
            }
            for (unsigned k = 0; k < children; k++)
                if (!(used[k / 8] & (1u << (k % 8)))) return fail(s, "a chunk its arraychunk_ids never use");
            s->names_used = names_mark;
        } else {
            goto malformed;
        }
    } while (fp_json_expect(&j, ',') == 0);
    if (seen != 15 || fp_json_expect(&j, '}') != 0 || fp_json_end(&j) != 0) goto malformed;
    a->described = true;
    a->announced = dtype[0] != 0;
    if (!a->announced) return 0;  /* legacy: dtype and shape come from the .npy header */
    char why[160];
    if (strcmp(dtype, "float32") == 0) a->view.dtype = FP_DTYPE_F4;
    else if (strcmp(dtype, "float64") == 0) a->view.dtype = FP_DTYPE_F8;
    else {
        snprintf(why, sizeof why, "array '%.40s': dtype %.20s (this node holds float32 and float64)", a->view.name, dtype);
        unsupported(s, why);
        return 0;
    }
    uint64_t count = 1;
    for (unsigned i = 0; i < a->view.ndim; i++) {
        if (a->view.shape[i] != 0 && count > UINT64_MAX / 8 / a->view.shape[i]) count = UINT64_MAX / 8;
        else count *= a->view.shape[i];
    }
    a->view.count = (size_t)count;
    return 0;
malformed:
    return fail(s, "its body is not {\"dtype\", \"shape\", \"stype\", \"arraychunk_ids\"}");
}

/* Scan a Config/MetricRecord body: items of {key, value}. visit(key, value stream) per item. */
typedef bool (*item_visitor)(const char *key, pb_istream_t *value, void *context);

static bool scan_items(const uint8_t *body, size_t length, item_visitor visit, void *context) {
    pb_istream_t stream = pb_istream_from_buffer(body, length);
    while (stream.bytes_left > 0) {
        pb_wire_type_t wire;
        uint32_t tag;
        bool eof;
        pb_istream_t item;
        if (!pb_decode_tag(&stream, &wire, &tag, &eof) || tag != 1 || wire != PB_WT_STRING) return false;
        if (!pb_make_string_substream(&stream, &item)) return false;
        char key[130] = {0};
        bool has_key = false, has_value = false;
        pb_istream_t value = item;
        while (item.bytes_left > 0) {
            pb_istream_t field;
            if (!pb_decode_tag(&item, &wire, &tag, &eof) || wire != PB_WT_STRING) return false;
            if (!pb_make_string_substream(&item, &field)) return false;
            if (tag == 1) {
                if (has_key || field.bytes_left >= sizeof key || !pb_read(&field, (pb_byte_t *)key, field.bytes_left))
                    return false;
                has_key = true;
            } else if (tag == 2) {
                if (has_value || field.bytes_left == 0) return false;
                value = field;
                has_value = true;
                if (!pb_read(&field, NULL, field.bytes_left)) return false;
            } else if (!pb_read(&field, NULL, field.bytes_left)) {
                return false;
            }
            if (!pb_close_string_substream(&item, &field)) return false;
        }
        if (!pb_close_string_substream(&stream, &item)) return false;
        if (!has_key || !has_value || strlen(key) == 0 || !visit(key, &value, context)) return false;
    }
    return true;
}

typedef struct {
    const uint8_t *body;
    size_t length;
    unsigned index;
} duplicate_check;

static bool count_key(const char *key, pb_istream_t *value, void *context) {
    (void)value;
    const char **wanted = context;
    return strcmp(key, wanted[0]) != 0 || (wanted[1] = key, wanted[2] == NULL ? (wanted[2] = key, true) : false);
}

static bool check_unique(const char *key, pb_istream_t *value, void *context) {
    (void)value;
    duplicate_check *check = context;
    const char *state[3] = {key, NULL, NULL};
    return scan_items(check->body, check->length, count_key, state);
}

static int read_record(fp_session *s, const uint8_t *body, size_t length) {
    duplicate_check check = {body, length, 0};
    if (!scan_items(body, length, check_unique, &check))
        return fail(s, "its body is not a record of {key, value} items, each key once");
    if (s->rx.header.type != T_CONFIGRECORD) return 0;
    uint8_t *copy = fp_names_alloc(s, length ? length : 1);
    if (copy == NULL) return fail(s, "its body exceeds this node's name buffer");
    memcpy(copy, body, length);
    for (unsigned r = 0; r < s->work.record_count; r++) {
        if (s->work.records[r].node == s->work.pulling) {
            s->work.records[r].body = copy;
            s->work.records[r].body_length = length;
        }
    }
    return 0;
}

static bool same_metadata(const flwr_proto_Metadata *a, const flwr_proto_Metadata *b) {
    return a->run_id == b->run_id && a->src_node_id == b->src_node_id && a->dst_node_id == b->dst_node_id &&
           strcmp(a->reply_to_message_id, b->reply_to_message_id) == 0 && strcmp(a->group_id, b->group_id) == 0 &&
           a->ttl == b->ttl && strcmp(a->message_type, b->message_type) == 0 && a->created_at == b->created_at;
}

static int read_message(fp_session *s, const uint8_t *body, size_t length) {
    flwr_proto_Message *m = &s->work.hashed;
    memset(m, 0, sizeof *m);
    pb_istream_t stream = pb_istream_from_buffer(body, length);
    if (!pb_decode(&stream, flwr_proto_Message_fields, m)) return fail(s, "its body is not a Message proto");
    if (m->has_content || m->metadata.message_id[0] != 0) return fail(s, "a Message object carrying content inline or a message_id");
    if (m->has_error != (s->rx.header.child_count == 0)) return fail(s, "it must carry either a RecordDict child or an error");
    if (!same_metadata(&m->metadata, &s->work.delivered.metadata))
        return fail(s, "PullMessages' metadata differs from the hashed Message object's");
    memcpy(m->metadata.message_id, s->work.message_id, sizeof m->metadata.message_id);
    if (m->has_error) unsupported(s, "the message carries an error, no content");
    return 0;
}

int fp_pull_end(fp_session *s) {
    fp_pull_rx *rx = &s->rx;
    fp_tree_node *node = &s->nodes[s->work.pulling];
    if (!rx->header_done || rx->body_received != rx->header.body_length) return fail(s, "its content is cut short");
    uint8_t digest[32];
    char id[65];
    fp_sha256_finish(&rx->hash, digest);
    fp_hex(id, digest);
    if (strcmp(id, node->id) != 0) return fail(s, "its sha256 is not its id");
    node->pulled = true;
    const uint8_t *body = s->scratch + rx->header_length + 1;
    size_t length = (size_t)rx->header.body_length;
    int record = -1;
    switch (rx->header.type) {
    case T_MESSAGE: return read_message(s, body, length);
    case T_RECORDDICT: return read_name_map(s, body, length, add_record, NULL);
    case T_ARRAYRECORD:
        for (unsigned r = 0; r < s->work.record_count; r++) {
            if (s->work.records[r].node != s->work.pulling) continue;
            record = (int)r;
            if (read_name_map(s, body, length, add_array, &record) != 0) return -1;
        }
        return 0;
    case T_ARRAY: return read_array(s, body, length);
    case T_CONFIGRECORD:
    case T_METRICRECORD: return read_record(s, body, length);
    default:  /* ArrayChunk: already in the model buffer (or dropped, rx->array < 0) */
        if (rx->array >= 0) s->arrays[rx->array].next_position++;
        return 0;
    }
}

/* ---- the call: which layout, which arrays (docs/PROTOCOL.md §17) ---- */

static int record_named(const fp_session *s, const char *name) {
    for (unsigned r = 0; r < s->work.record_count; r++)
        if (strcmp(s->work.records[r].name, name) == 0) return (int)r;
    return -1;
}

static fp_type record_type(const fp_session *s, int record) { return (fp_type)s->nodes[s->work.records[record].node].type; }

static bool digits_only(const char *text) {
    if (*text == 0 || strlen(text) > 9) return false;
    for (; *text; text++) if (*text < '0' || *text > '9') return false;
    return true;
}

/* Decide the layout once the records and Arrays are in, before any chunk is pulled. */
static void decide_call(fp_session *s) {
    static const char *const legacy[][2] = {{"fitins", "fit"}, {"evaluateins", "evaluate"},
                                            {"getparametersins", "get_parameters"}, {"getpropertiesins", "get_properties"}};
    char name[64], why[200];
    const char *type = s->work.hashed.metadata.message_type;
    for (unsigned l = 0; l < 4; l++) {
        snprintf(name, sizeof name, "%s.config", legacy[l][0]);
        int config = record_named(s, name);
        if (config < 0) continue;
        s->work.legacy = 1;
        if (l >= 2) {
            snprintf(why, sizeof why, "%s is not implemented by this node", legacy[l][1]);
            unsupported(s, why);
            return;
        }
        snprintf(name, sizeof name, "%s.parameters", legacy[l][0]);
        int parameters = record_named(s, name);
        if (parameters < 0 || record_type(s, parameters) != T_ARRAYRECORD || record_type(s, config) != T_CONFIGRECORD) {
            snprintf(why, sizeof why, "unsupported message: %s.parameters is not an ArrayRecord", legacy[l][0]);
            unsupported(s, why);
            return;
        }
        s->work.call.method = l == 0 ? FP_CALL_FIT : FP_CALL_EVALUATE;
        s->work.call_record = parameters;
        s->work.config_record = config;
        return;
    }
    s->work.legacy = 0;
    if (strcmp(type, "train") == 0) s->work.call.method = FP_CALL_FIT;
    else if (strcmp(type, "evaluate") == 0) s->work.call.method = FP_CALL_EVALUATE;
    else {
        char shown[64];
        fp_bound_text(shown, sizeof shown, (const uint8_t *)type, strlen(type), 40);
        snprintf(why, sizeof why, "unsupported message: message type '%s' is not train/evaluate (this node)", shown);
        unsupported(s, why);
        return;
    }
    unsigned array_records = 0, config_records = 0;
    for (unsigned r = 0; r < s->work.record_count; r++) {
        if (record_type(s, (int)r) == T_ARRAYRECORD) array_records++, s->work.call_record = (int)r;
        if (record_type(s, (int)r) == T_CONFIGRECORD) config_records++, s->work.config_record = (int)r;
    }
    if (array_records != 1 || config_records > 1) {
        snprintf(why, sizeof why, "unsupported message: %u ArrayRecords and %u ConfigRecords, expected 1 and at most 1",
                 array_records, config_records);
        unsupported(s, why);
    }
}

/* After the last non-chunk object: mark the arrays to download, check they fit. */
int fp_phase1_done(fp_session *s) {
    if (s->work.unsupported[0]) return 0;
    decide_call(s);
    if (s->work.unsupported[0]) return 0;
    unsigned count = 0;
    for (unsigned i = 0; i < s->work.array_count; i++) {
        fp_in_array *a = &s->arrays[i];
        if (a->record != s->work.call_record) continue;
        if (s->work.legacy == 1 && strcmp(a->view.name, "_empty") == 0) continue;
        if (s->work.legacy == 1 && !digits_only(a->view.name)) {
            unsupported(s, "unsupported message: legacy parameters keys are not 0, 1, ...");
            return 0;
        }
        a->wanted = true;
        count++;
        if (a->same_as >= 0 || !a->announced) continue;
        if ((a->view.data = model_alloc(s, (uint64_t)a->view.count * fp_dtype_size(a->view.dtype))) == NULL) {
            char why[160];
            snprintf(why, sizeof why, "the model does not fit this node's %zu-byte model buffer", s->config.limits.model_bytes);
            unsupported(s, why);
            return 0;
        }
    }
    s->work.call.array_count = count;
    return 0;
}

static int legacy_key(const fp_array *a) {
    int n = 0;
    for (const char *p = a->name; *p; p++) n = n * 10 + (*p - '0');
    return n;
}

int fp_message_finish(fp_session *s) {
    if (s->work.unsupported[0]) return 0;
    fp_array *views = fp_names_alloc(s, (s->work.call.array_count ? s->work.call.array_count : 1) * sizeof(fp_array));
    if (views == NULL) {
        unsupported(s, "the arrays exceed this node's name buffer");
        return 0;
    }
    unsigned n = 0;
    for (unsigned i = 0; i < s->work.array_count; i++) {
        fp_in_array *a = &s->arrays[i];
        if (!a->wanted) continue;
        if (a->same_as >= 0) {  /* the same Array object under a second key: its own copy */
            const fp_in_array *source = &s->arrays[a->same_as];
            const char *name = a->view.name;
            size_t bytes = source->view.count * fp_dtype_size(source->view.dtype);
            a->view = source->view;
            a->view.name = name;
            if ((a->view.data = model_alloc(s, bytes)) == NULL) {
                unsupported(s, "the model does not fit this node's model buffer");
                return 0;
            }
            memcpy(a->view.data, source->view.data, bytes);
        }
        views[n++] = a->view;
    }
    if (s->work.legacy == 1) {  /* tensors in integer key order */
        for (unsigned i = 1; i < n; i++)
            for (unsigned k = i; k > 0 && legacy_key(&views[k - 1]) > legacy_key(&views[k]); k--) {
                fp_array t = views[k];
                views[k] = views[k - 1];
                views[k - 1] = t;
            }
    }
    s->work.call.arrays = views;
    return 0;
}

/* ---- config lookups ---- */

typedef struct {
    const char *key;
    flwr_proto_ConfigRecordValue value;
    bool found;
} config_lookup;

static bool find_key(const char *key, pb_istream_t *value, void *context) {
    config_lookup *lookup = context;
    if (strcmp(key, lookup->key) != 0) return true;
    pb_istream_t copy = *value;
    lookup->found = pb_decode(&copy, flwr_proto_ConfigRecordValue_fields, &lookup->value);
    return true;
}

static int config_value(const fp_session *s, const char *key, flwr_proto_ConfigRecordValue *value) {
    if (s->work.config_record < 0) return -1;
    const fp_in_record *r = &s->work.records[s->work.config_record];
    config_lookup lookup = {key, flwr_proto_ConfigRecordValue_init_zero, false};
    if (r->body == NULL || !scan_items(r->body, r->body_length, find_key, &lookup) || !lookup.found) return -1;
    *value = lookup.value;
    return 0;
}

int fp_config_int(const fp_session *s, const char *key, int64_t *value) {
    flwr_proto_ConfigRecordValue v;
    if (config_value(s, key, &v) != 0) return -1;
    if (v.which_value == flwr_proto_ConfigRecordValue_sint64_tag) *value = v.value.sint64;
    else if (v.which_value == flwr_proto_ConfigRecordValue_uint64_tag && v.value.uint64 <= INT64_MAX) *value = (int64_t)v.value.uint64;
    else return -1;
    return 0;
}

int fp_config_double(const fp_session *s, const char *key, double *value) {
    flwr_proto_ConfigRecordValue v;
    int64_t i;
    if (config_value(s, key, &v) == 0 && v.which_value == flwr_proto_ConfigRecordValue_double_value_tag) {
        *value = v.value.double_value;
        return 0;
    }
    if (fp_config_int(s, key, &i) != 0) return -1;
    *value = (double)i;
    return 0;
}
