/* The reply (docs/PROTOCOL.md §16, §17): its objects are computed in a first pass over the model
 * (each body written into a counting stream, then into SHA-256) and written again, a window at a
 * time, when PushObject sends them: memory holds ids and lengths, never a body. */
#include <stdio.h>
#include <string.h>

#include <pb_encode.h>

#include "flwr/proto/recorddict.pb.h"
#include "fp_session.h"

#define CLIENT_APP_RAISED_EXCEPTION 2  /* flwr/common/constant.py ErrorCode */

#define FP_NPY_WRITTEN_MAX 256  /* the header numpy writes for up to 8 dimensions fits */

static const fp_array *reply_array(const fp_session *s, unsigned index) { return &s->work.call.arrays[index]; }

static uint64_t npy_total(const fp_array *a, uint8_t *header, size_t *header_length) {
    *header_length = fp_npy_write_header(header, FP_NPY_WRITTEN_MAX, a->dtype, a->ndim, a->shape);
    return *header_length + (uint64_t)a->count * fp_dtype_size(a->dtype);
}

/* ---- bodies ---- */

static bool write_chunk(pb_ostream_t *out, const fp_session *s, const fp_out_object *o) {
    uint8_t header[FP_NPY_WRITTEN_MAX];
    size_t header_length;
    const fp_array *a = reply_array(s, o->ref);
    uint64_t total = npy_total(a, header, &header_length);
    uint64_t from = (uint64_t)o->slice * FP_CHUNK_SIZE, to = from + FP_CHUNK_SIZE < total ? from + FP_CHUNK_SIZE : total;
    if (from < header_length && !fp_write(out, header + from, (size_t)((to < header_length ? to : header_length) - from)))
        return false;
    uint64_t data_from = from > header_length ? from - header_length : 0;
    uint64_t data_to = to - header_length;
    return to <= header_length || fp_write(out, (const uint8_t *)a->data + data_from, (size_t)(data_to - data_from));
}

static bool write_array(pb_ostream_t *out, const fp_session *s, const fp_out_object *o) {
    const fp_array *a = reply_array(s, o->ref);
    uint8_t header[FP_NPY_WRITTEN_MAX];
    size_t header_length;
    uint64_t slices = (npy_total(a, header, &header_length) + FP_CHUNK_SIZE - 1) / FP_CHUNK_SIZE;
    bool ok = fp_write_text(out, "{\"dtype\": \"") && fp_write_text(out, fp_dtype_name(a->dtype)) &&
              fp_write_text(out, "\", \"shape\": [");
    for (unsigned i = 0; ok && i < a->ndim; i++)
        ok = (i == 0 || fp_write_text(out, ", ")) && fp_write_uint(out, a->shape[i]);
    ok = ok && fp_write_text(out, "], \"stype\": \"numpy.ndarray\", \"arraychunk_ids\": [");
    /* Each slice's chunk, as an index into this Array's distinct children (kept by the first pass). */
    const uint16_t *slice_map = s->work.slice_maps[o->ref];
    for (uint64_t k = 0; ok && k < slices; k++) ok = (k == 0 || fp_write_text(out, ", ")) && fp_write_uint(out, slice_map[k]);
    return ok && fp_write_text(out, "]}");
}

static bool write_name_map(pb_ostream_t *out, const fp_session *s, const fp_out_object *o) {
    bool ok = fp_write_text(out, "{");
    const fp_out_record *r = o->type == T_ARRAYRECORD ? &s->work.reply_records[o->ref] : NULL;
    unsigned count = o->type == T_RECORDDICT ? s->work.reply_record_count : s->work.call.array_count;
    for (unsigned i = 0; ok && i < count; i++) {
        char digits[16];
        const char *name;
        unsigned target;
        if (o->type == T_RECORDDICT) {
            name = s->work.reply_records[i].name;
            target = s->work.record_objects[i];
        } else {
            snprintf(digits, sizeof digits, "%u", i);
            name = r->legacy_keys ? digits : reply_array(s, i)->name;
            target = s->work.out_array_object[i];
        }
        ok = (i == 0 || fp_write_text(out, ", ")) && fp_write_json_string(out, name) && fp_write_text(out, ": \"") &&
             fp_write_text(out, s->out[target].id) && fp_write_text(out, "\"");
    }
    return ok && fp_write_text(out, "}");
}

typedef struct {
    const fp_session *s;
    const fp_out_record *record;
} items_context;

static bool encode_items(pb_ostream_t *out, const pb_field_t *field, void *const *arg) {
    const items_context *context = *arg;
    const fp_out_record *r = context->record;
    for (unsigned i = 0; i < r->item_count; i++) {
        const fp_out_item *item = &context->s->work.items[r->first_item + i];
        bool ok;
        if (r->type == T_METRICRECORD) {
            flwr_proto_MetricRecord_Item m = flwr_proto_MetricRecord_Item_init_zero;
            strncpy(m.key, item->key, sizeof m.key - 1);
            m.has_value = true;
            m.value.which_value = item->kind == 1 ? flwr_proto_MetricRecordValue_double_value_tag
                                                  : flwr_proto_MetricRecordValue_sint64_tag;
            if (item->kind == 1) m.value.value.double_value = item->double_value;
            else m.value.value.sint64 = item->int_value;
            ok = pb_encode_tag_for_field(out, field) && pb_encode_submessage(out, flwr_proto_MetricRecord_Item_fields, &m);
        } else {
            flwr_proto_ConfigRecord_Item c = flwr_proto_ConfigRecord_Item_init_zero;
            strncpy(c.key, item->key, sizeof c.key - 1);
            c.has_value = true;
            if (item->kind == 2) {
                c.value.which_value = flwr_proto_ConfigRecordValue_string_tag;
                strncpy(c.value.value.string, item->text, sizeof c.value.value.string - 1);
            } else if (item->kind == 1) {
                c.value.which_value = flwr_proto_ConfigRecordValue_double_value_tag;
                c.value.value.double_value = item->double_value;
            } else {
                c.value.which_value = flwr_proto_ConfigRecordValue_sint64_tag;
                c.value.value.sint64 = item->int_value;
            }
            ok = pb_encode_tag_for_field(out, field) && pb_encode_submessage(out, flwr_proto_ConfigRecord_Item_fields, &c);
        }
        if (!ok) return false;
    }
    return true;
}

static bool write_record(pb_ostream_t *out, const fp_session *s, const fp_out_object *o) {
    items_context context = {s, &s->work.reply_records[o->ref]};
    if (o->type == T_METRICRECORD) {
        flwr_proto_MetricRecord record = flwr_proto_MetricRecord_init_zero;
        record.items.funcs.encode = encode_items;
        record.items.arg = &context;
        return pb_encode(out, flwr_proto_MetricRecord_fields, &record);
    }
    flwr_proto_ConfigRecord record = flwr_proto_ConfigRecord_init_zero;
    record.items.funcs.encode = encode_items;
    record.items.arg = &context;
    return pb_encode(out, flwr_proto_ConfigRecord_fields, &record);
}

static bool write_message_body(pb_ostream_t *out, const fp_session *s) {
    flwr_proto_Message m = flwr_proto_Message_init_zero;
    m.has_metadata = true;
    m.metadata = s->work.reply_metadata;
    m.metadata.message_id[0] = 0;
    if (s->work.error_reason[0]) {
        m.has_error = true;
        m.error.code = CLIENT_APP_RAISED_EXCEPTION;
        memcpy(m.error.reason, s->work.error_reason, sizeof m.error.reason);
    }
    return pb_encode(out, flwr_proto_Message_fields, &m);
}

static bool write_body(pb_ostream_t *out, const fp_session *s, const fp_out_object *o) {
    switch (o->type) {
    case T_ARRAYCHUNK: return write_chunk(out, s, o);
    case T_ARRAY: return write_array(out, s, o);
    case T_ARRAYRECORD:
    case T_RECORDDICT: return write_name_map(out, s, o);
    case T_CONFIGRECORD:
    case T_METRICRECORD: return write_record(out, s, o);
    default: return write_message_body(out, s);
    }
}

static bool write_header(pb_ostream_t *out, const fp_session *s, const fp_out_object *o) {
    bool ok = fp_write_text(out, fp_type_names[o->type]) && fp_write_text(out, " ");
    for (unsigned c = 0; ok && c < o->child_count; c++)
        ok = (c == 0 || fp_write_text(out, ",")) && fp_write_text(out, s->out[s->out_children[o->first_child + c]].id);
    return ok && fp_write_text(out, " ") && fp_write_uint(out, o->body_length) && fp_write(out, "", 1);
}

bool fp_reply_write_object(pb_ostream_t *out, fp_session *s, unsigned index) {
    return write_header(out, s, &s->out[index]) && write_body(out, s, &s->out[index]);
}

uint64_t fp_reply_object_size(fp_session *s, unsigned index) {
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    fp_reply_write_object(&sizing, s, index);
    return sizing.bytes_written;
}

/* ---- first pass: every object's length and id, deduplicated, in push order ---- */

static int add_object(fp_session *s, fp_type type, unsigned ref, uint32_t slice, unsigned first_child, unsigned children) {
    if (s->work.out_count >= s->config.limits.max_objects) {
        fp_err_set(&s->error, "the reply has more than %u objects (this node's limit)", s->config.limits.max_objects);
        return -1;
    }
    fp_out_object *o = &s->out[s->work.out_count];
    memset(o, 0, sizeof *o);
    o->type = (uint8_t)type;
    o->ref = (uint16_t)ref;
    o->slice = slice;
    o->first_child = (uint16_t)first_child;
    o->child_count = (uint16_t)children;
    pb_ostream_t sizing = PB_OSTREAM_SIZING;
    if (!write_body(&sizing, s, o)) {
        fp_err_set(&s->error, "the reply's %s does not encode", fp_type_names[type]);
        return -1;
    }
    o->body_length = sizing.bytes_written;
    fp_sha256 hash;
    fp_sink sink = {NULL, 0, 0, 0, &hash, 0};
    pb_ostream_t hashing = fp_sink_stream(&sink);
    uint8_t digest[32];
    fp_sha256_start(&hash);
    fp_reply_write_object(&hashing, s, s->work.out_count);
    fp_sha256_finish(&hash, digest);
    fp_hex(o->id, digest);
    for (unsigned i = 0; i < s->work.out_count; i++)
        if (strcmp(s->out[i].id, o->id) == 0) return (int)i;  /* the same object again: one object */
    return s->work.out_count++;
}

/* Append the distinct `objects` to a children list that ends the lists used so far. */
static int add_children(fp_session *s, unsigned *first, unsigned *count, const uint16_t *objects, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        bool seen = false;
        for (unsigned c = 0; c < *count; c++) seen |= s->out_children[*first + c] == objects[i];
        if (seen) continue;
        if (*first + *count >= s->out_children_capacity) {
            fp_err_set(&s->error, "the reply's tree exceeds this node's object table");
            return -1;
        }
        s->out_children[*first + (*count)++] = objects[i];
    }
    return 0;
}

static unsigned children_used(const fp_session *s) {
    unsigned used = 0;
    for (unsigned i = 0; i < s->work.out_count; i++)
        if (s->out[i].first_child + s->out[i].child_count > used) used = s->out[i].first_child + s->out[i].child_count;
    return used;
}

static int add_array_objects(fp_session *s, unsigned index) {
    uint8_t header[FP_NPY_WRITTEN_MAX];
    size_t header_length;
    uint64_t slices = (npy_total(reply_array(s, index), header, &header_length) + FP_CHUNK_SIZE - 1) / FP_CHUNK_SIZE;
    uint16_t *slice_map = fp_names_alloc(s, (size_t)slices * sizeof(uint16_t));
    unsigned first = children_used(s), count = 0;
    if (slice_map == NULL || first + slices >= s->out_children_capacity) {
        fp_err_set(&s->error, "the reply has more chunks than this node's object table holds");
        return -1;
    }
    s->work.slice_maps[index] = slice_map;
    for (uint64_t k = 0; k < slices; k++) {
        int chunk = add_object(s, T_ARRAYCHUNK, index, (uint32_t)k, 0, 0);
        if (chunk < 0) return -1;
        uint16_t id = (uint16_t)chunk;
        if (add_children(s, &first, &count, &id, 1) != 0) return -1;
        for (unsigned c = 0; c < count; c++)
            if (s->out_children[first + c] == id) slice_map[k] = (uint16_t)c;
    }
    int array = add_object(s, T_ARRAY, index, 0, first, count);
    if (array < 0) return -1;
    s->work.out_array_object[index] = (uint16_t)array;
    return 0;
}

static void add_item(fp_session *s, const char *key, int kind, int64_t int_value, double double_value, const char *text) {
    fp_out_item *item = &s->work.items[s->work.item_count++];
    item->key = key;
    item->kind = (uint8_t)kind;
    item->int_value = int_value;
    item->double_value = double_value;
    item->text = text;
}

static fp_out_record *add_reply_record(fp_session *s, const char *name, fp_type type) {
    fp_out_record *r = &s->work.reply_records[s->work.reply_record_count++];
    r->name = name;
    r->type = type;
    r->first_item = s->work.item_count;
    r->item_count = 0;
    r->legacy_keys = s->work.legacy == 1;
    return r;
}

static int copy_metrics(fp_session *s, fp_out_record *r, const fp_result *result, const char *const *reserved) {
    for (unsigned i = 0; i < result->metric_count && s->work.item_count < FP_MAX_METRICS; i++) {
        const fp_metric *m = &result->metrics[i];
        bool is_reserved = false;
        for (const char *const *k = reserved; *k; k++) is_reserved |= strcmp(*k, m->key) == 0;
        if (is_reserved) continue;
        char *key = fp_names_alloc(s, strlen(m->key) + 1);
        if (key == NULL || strlen(m->key) >= 129) {
            fp_err_set(&s->error, "metric keys exceed this node's name buffer");
            return -1;
        }
        memcpy(key, m->key, strlen(m->key) + 1);
        add_item(s, key, m->is_double ? 1 : 0, m->int_value, m->double_value, NULL);
    }
    r->item_count = s->work.item_count - r->first_item;
    return 0;
}

static void close_record(fp_session *s, fp_out_record *r) { r->item_count = s->work.item_count - r->first_item; }

/* The content records, per layout and method (fedproto/fleet_content.py, in its order). */
static int plan_records(fp_session *s, const fp_result *result) {
    static const char *const none[] = {NULL};
    static const char *const fit_reserved[] = {"num-examples", NULL};
    static const char *const evaluate_reserved[] = {"eval_loss", "num-examples", NULL};
    bool fit = s->work.call.method == FP_CALL_FIT;
    int64_t examples = (int64_t)result->num_examples;
    fp_out_record *r;
    if (s->work.legacy == 1) {
        const char *prefix = fit ? "fitres" : "evaluateres";
        char (*names)[40] = s->work.legacy_names;
        const char *suffixes[] = {"metrics", "num_examples", "parameters", "status", "loss"};
        for (int i = 0; i < 5; i++) snprintf(names[i], sizeof names[i], "%s.%s", prefix, suffixes[i]);
        if (!fit) {
            r = add_reply_record(s, names[4], T_METRICRECORD);
            add_item(s, "loss", 1, 0, result->loss, NULL);
            close_record(s, r);
        }
        fp_out_record *metrics = NULL;
        if (fit) {
            metrics = add_reply_record(s, names[0], T_CONFIGRECORD);
            if (copy_metrics(s, metrics, result, none) != 0) return -1;
        }
        r = add_reply_record(s, names[1], T_METRICRECORD);
        add_item(s, "num_examples", 0, examples, 0, NULL);
        close_record(s, r);
        if (fit) add_reply_record(s, names[2], T_ARRAYRECORD);
        else {
            metrics = add_reply_record(s, names[0], T_CONFIGRECORD);
            if (copy_metrics(s, metrics, result, none) != 0) return -1;
        }
        r = add_reply_record(s, names[3], T_CONFIGRECORD);
        add_item(s, "code", 0, 0, 0, NULL);
        add_item(s, "message", 2, 0, 0, "Success");
        close_record(s, r);
        return 0;
    }
    if (fit) {
        add_reply_record(s, s->work.records[s->work.call_record].name, T_ARRAYRECORD);
        r = add_reply_record(s, "metrics", T_METRICRECORD);
        if (copy_metrics(s, r, result, fit_reserved) != 0) return -1;
        add_item(s, "num-examples", 0, examples, 0, NULL);
    } else {
        r = add_reply_record(s, "metrics", T_METRICRECORD);
        if (copy_metrics(s, r, result, evaluate_reserved) != 0) return -1;
        add_item(s, "eval_loss", 1, 0, result->loss, NULL);
        add_item(s, "num-examples", 0, examples, 0, NULL);
    }
    close_record(s, r);
    return 0;
}

int fp_reply_build(fp_session *s, const fp_result *result, const char *error, double now) {
    const flwr_proto_Metadata *in = &s->work.hashed.metadata;
    flwr_proto_Metadata *m = &s->work.reply_metadata;
    memset(m, 0, sizeof *m);
    m->run_id = in->run_id;
    m->src_node_id = s->node_id;
    m->dst_node_id = in->src_node_id;
    memcpy(m->reply_to_message_id, s->work.message_id, sizeof m->reply_to_message_id);
    memcpy(m->group_id, in->group_id, sizeof m->group_id);
    memcpy(m->message_type, in->message_type, sizeof m->message_type);
    m->created_at = now;
    m->ttl = in->created_at + in->ttl - now;  /* a longer ttl makes the SuperLink drop the reply */
    s->work.out_count = 0;
    s->work.reply_record_count = 0;
    s->work.item_count = 0;
    s->work.error_reason[0] = 0;
    if (error != NULL) {
        fp_bound_text(s->work.error_reason, sizeof s->work.error_reason, (const uint8_t *)error, strlen(error), 240);
    } else {
        if (plan_records(s, result) != 0) return -1;
        s->work.out_array_object = fp_names_alloc(s, (s->work.call.array_count + 1) * sizeof(uint16_t));
        s->work.slice_maps = fp_names_alloc(s, (s->work.call.array_count + 1) * sizeof(uint16_t *));
        if (s->work.out_array_object == NULL || s->work.slice_maps == NULL) {
            fp_err_set(&s->error, "the reply exceeds this node's name buffer");
            return -1;
        }
        bool has_arrays = false;
        for (unsigned i = 0; i < s->work.reply_record_count; i++) has_arrays |= s->work.reply_records[i].type == T_ARRAYRECORD;
        for (unsigned i = 0; has_arrays && i < s->work.call.array_count; i++)
            if (add_array_objects(s, i) != 0) return -1;
        uint16_t records[FP_MAX_RECORDS];
        for (unsigned i = 0; i < s->work.reply_record_count; i++) {
            const fp_out_record *r = &s->work.reply_records[i];
            unsigned first = children_used(s), count = 0;
            if (r->type == T_ARRAYRECORD &&
                add_children(s, &first, &count, s->work.out_array_object, s->work.call.array_count) != 0)
                return -1;
            int object = add_object(s, r->type, i, 0, first, count);
            if (object < 0) return -1;
            records[i] = s->work.record_objects[i] = (uint16_t)object;
        }
        unsigned first = children_used(s), count = 0;
        if (add_children(s, &first, &count, records, s->work.reply_record_count) != 0) return -1;
        int dict = add_object(s, T_RECORDDICT, 0, 0, first, count);
        if (dict < 0) return -1;
        uint16_t dict_id = (uint16_t)dict;
        first = children_used(s), count = 0;
        if (add_children(s, &first, &count, &dict_id, 1) != 0) return -1;
        if (add_object(s, T_MESSAGE, 0, 0, first, count) < 0) return -1;
        s->work.reply_built = true;
        return 0;
    }
    if (add_object(s, T_MESSAGE, 0, 0, 0, 0) < 0) return -1;
    s->work.reply_built = true;
    return 0;
}

/* ---- PushMessages: the Message with its id, and the ObjectTree ---- */

static bool encode_tree_children(pb_ostream_t *out, const pb_field_t *field, void *const *arg);

static bool encode_tree(pb_ostream_t *out, const fp_session *s, unsigned index, const pb_field_t *field) {
    flwr_proto_ObjectTree tree = flwr_proto_ObjectTree_init_zero;
    struct { const fp_session *s; unsigned index; } context = {s, index};
    memcpy(tree.object_id, s->out[index].id, sizeof tree.object_id);
    tree.children.funcs.encode = encode_tree_children;
    tree.children.arg = &context;
    if (field == NULL) return pb_encode(out, flwr_proto_ObjectTree_fields, &tree);
    return pb_encode_tag_for_field(out, field) && pb_encode_submessage(out, flwr_proto_ObjectTree_fields, &tree);
}

static bool encode_tree_children(pb_ostream_t *out, const pb_field_t *field, void *const *arg) {
    const struct { const fp_session *s; unsigned index; } *context = *arg;
    const fp_out_object *o = &context->s->out[context->index];
    for (unsigned c = 0; c < o->child_count; c++)
        if (!encode_tree(out, context->s, context->s->out_children[o->first_child + c], field)) return false;
    return true;
}

bool fp_reply_encode_tree(pb_ostream_t *out, fp_session *s, const pb_field_t *field) {
    return encode_tree(out, s, s->work.out_count - 1u, field);
}

void fp_reply_message(fp_session *s, flwr_proto_Message *m) {
    memset(m, 0, sizeof *m);
    m->has_metadata = true;
    m->metadata = s->work.reply_metadata;
    memcpy(m->metadata.message_id, s->out[s->work.out_count - 1].id, sizeof m->metadata.message_id);
    if (s->work.error_reason[0]) {
        m->has_error = true;
        m->error.code = CLIENT_APP_RAISED_EXCEPTION;
        memcpy(m->error.reason, s->work.error_reason, sizeof m->error.reason);
    } else {
        m->has_content = true;  /* an empty RecordDict: the content travels as objects */
    }
}
