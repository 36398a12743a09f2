/* The session's memory: everything lives in the arena the application hands in. */
#ifndef FP_SESSION_H
#define FP_SESSION_H

#include "flwr/proto/message.pb.h"
#include "fp_internal.h"

typedef enum {
    S_REGISTER, S_ACTIVATE, S_IDLE, S_PULL_OBJECTS, S_CONFIRM, S_HANDLING, S_PUSH_MESSAGE, S_PUSH_OBJECTS,
    S_DEACTIVATE, S_UNREGISTER, S_DONE, S_ERROR, S_COUNT
} fp_state;

typedef enum {
    RPC_NONE, RPC_REGISTER, RPC_ACTIVATE, RPC_HEARTBEAT, RPC_PULL_MESSAGES, RPC_PULL_OBJECT, RPC_CONFIRM,
    RPC_PUSH_MESSAGES, RPC_PUSH_OBJECT, RPC_DEACTIVATE, RPC_UNREGISTER, RPC_COUNT
} fp_rpc;

/* One node of the pulled message's ObjectTree, in the order the tree lists them (pre-order). */
typedef struct {
    char id[65];
    int16_t parent;          /* -1: the root (the Message object) */
    uint8_t depth;
    uint8_t type;            /* fp_type, T_NONE until the object is pulled */
    bool pulled;
    int16_t first;           /* the first node with this id: each id is pulled once */
    int16_t array;           /* Array: the first fp_in_array it describes */
    uint64_t chunk_offset;   /* ArrayChunk: where in its array's .npy stream it was first used */
    uint32_t chunk_length;
} fp_tree_node;

typedef struct {
    char *name;
    int16_t node;            /* tree node (distinct) of the record */
    const uint8_t *body;     /* ConfigRecord: its body, kept for fp_config_* */
    size_t body_length;
} fp_in_record;

typedef struct {
    fp_array view;           /* what the handler sees */
    int16_t node;            /* tree node of the Array object */
    int16_t record;
    int16_t same_as;         /* another entry of the same Array object (-1: none); its data is copied */
    bool described;          /* the Array object's JSON has been read into this entry */
    bool announced;          /* dtype and shape were in the JSON (message API); legacy reads the .npy */
    bool wanted;             /* in the record the handler is called with */
    uint16_t *positions;     /* arraychunk_ids: one index into the Array's children per slice */
    unsigned position_count, next_position;
    uint64_t stream_position;    /* bytes of its .npy stream seen */
    uint64_t data_start;         /* 0 until the .npy header has been read */
    uint64_t data_length;
} fp_in_array;

/* One object of the reply, in push order (children first); bodies are written again on demand. */
typedef struct {
    uint8_t type;
    char id[65];
    uint16_t first_child, child_count;   /* into out_children */
    uint16_t ref;                        /* chunk/Array: array index; record: reply record index */
    uint32_t slice;                      /* chunk: which slice of the array's .npy */
    uint64_t body_length;
    bool wanted;                         /* asked for by PushMessages */
} fp_out_object;

typedef struct {
    const char *key;
    uint8_t kind;            /* 0 sint64, 1 double, 2 string */
    int64_t int_value;
    double double_value;
    const char *text;
} fp_out_item;

typedef struct {
    const char *name;
    fp_type type;            /* ArrayRecord, MetricRecord or ConfigRecord */
    unsigned first_item, item_count;
    bool legacy_keys;        /* ArrayRecord: keys "0", "1", ... (else the instruction's keys) */
} fp_out_record;

/* Streaming parse of a PullObjectResponse: three top-level fields, object_content streamed. */
typedef struct {
    uint8_t pending[16];
    size_t pending_length;
    enum { F_TAG, F_CONTENT, F_SKIP } state;
    uint64_t remaining;
    bool found, available, content_seen;
    /* the object inside object_content */
    fp_sha256 hash;
    size_t header_length;
    bool header_done;
    fp_object_header header;
    uint64_t body_received;
    int16_t array;           /* ArrayChunk: the array it streams into */
} fp_pull_rx;

struct fp_session {
    fp_config config;
    double heartbeat_period;
    fp_state state;
    fp_rpc awaiting;
    const char *outcome;
    uint64_t node_id;
    double heartbeat_at, poll_at, register_at, register_delay, activated_at;
    bool handler_running;
    fp_err error;
    fp_stats stats;

    /* arena regions */
    uint8_t *arena_end;
    fp_tree_node *nodes;
    fp_in_array *arrays;
    fp_out_object *out;
    uint16_t *out_children;
    size_t out_children_capacity;
    uint8_t *scratch;
    size_t scratch_size, scratch_used;
    uint8_t *names;
    size_t names_used, names_peak;
    uint8_t *model;
    size_t model_used, model_peak;
    size_t fixed_bytes;

    /* the message in the works (MessageWork in node.py): reset as a unit */
    bool has_work;
    struct {
        flwr_proto_Message delivered;       /* PullMessages' copy of the message */
        flwr_proto_Message hashed;          /* the Message object's: the only one trusted */
        unsigned message_count, tree_count;
        char message_id[65];
        uint64_t run_id;
        unsigned node_count;
        int tree_error;
        unsigned phase1_depth, phase1_index;    /* pull cursor over non-chunk objects */
        unsigned array_cursor;                  /* pull cursor over chunks */
        bool phase1_done, all_pulled;
        int16_t pulling;                        /* tree node being pulled */
        uint64_t pulled_bytes;
        double pull_started, retry_at, retry_delay;
        fp_in_record records[FP_MAX_RECORDS];
        unsigned record_count, array_count;
        int legacy;                             /* -1 undecided, 0 message API, 1 legacy */
        int call_record;                        /* the ArrayRecord of the call */
        int config_record;                      /* -1: none */
        char unsupported[200];                  /* not empty: answer Message.error with this */
        fp_call call;
        fp_array *call_arrays;                  /* points into arrays' views, in call order */
        bool handler_launched;
        double handler_started, handler_seconds;
        /* the reply */
        char error_reason[257];
        bool reply_built;
        flwr_proto_Metadata reply_metadata;
        fp_out_record reply_records[FP_MAX_RECORDS];
        unsigned reply_record_count;
        fp_out_item items[FP_MAX_METRICS + 8];
        char legacy_names[5][40];               /* "fitres.metrics", ...: reply record names */
        unsigned item_count;
        uint16_t out_count;
        uint16_t *out_array_object;            /* reply array index -> its Array object */
        uint16_t **slice_maps;                 /* reply array index -> per slice, its chunk's child index */
        uint16_t record_objects[FP_MAX_RECORDS];
        unsigned to_push, pushed;              /* objects asked for / pushed */
        uint16_t push_cursor;
        char session_id[129];
    } work;
    fp_pull_rx rx;

    int response_status;
    /* the request being sent */
    size_t request_length, request_position;
};

/* fp_objects.c: the pulled message and the reply */
void fp_work_reset(fp_session *s);
bool fp_tree_decode(pb_istream_t *stream, const pb_field_t *field, void **arg);
int fp_tree_check(fp_session *s);
int fp_next_pull(fp_session *s);               /* tree node to pull next, -1 when all are pulled */
void fp_pull_begin(fp_session *s, int node);
int fp_pull_feed(fp_session *s, const uint8_t *bytes, size_t length);  /* object_content bytes */
int fp_pull_end(fp_session *s);                 /* 0 ok, -1 protocol error (s->error) */
int fp_message_finish(fp_session *s);           /* after the last object: build the call */
int fp_reply_build(fp_session *s, const fp_result *result, const char *error, double now);
void fp_reply_message(fp_session *s, flwr_proto_Message *m);
bool fp_reply_encode_tree(pb_ostream_t *out, fp_session *s, const pb_field_t *field);
int fp_phase1_done(fp_session *s);
bool fp_reply_write_object(pb_ostream_t *out, fp_session *s, unsigned index);
uint64_t fp_reply_object_size(fp_session *s, unsigned index);
void *fp_names_alloc(fp_session *s, size_t size);

#endif
