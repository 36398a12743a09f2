/* The node session: fedproto/node.py's table, (state, event) -> (action, next state), in C.
 * No I/O, no malloc: requests are encoded by nanopb into a window of the caller's buffer, responses
 * are fed in as they arrive (PullObject's content streamed, the small ones held in the scratch
 * buffer and decoded by nanopb). Timing is flwr 1.42's SuperNode's (node.py "Timing"). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "flwr/proto/fleet.pb.h"
#include "flwr/proto/heartbeat.pb.h"
#include "fp_session.h"

#define HEARTBEAT_CALL_TIMEOUT 5.0   /* flwr's HEARTBEAT_CALL_TIMEOUT */
#define HEARTBEAT_MULTIPLIER 0.8     /* flwr's HEARTBEAT_BASE_MULTIPLIER */
#define OBJECT_RETRY_FIRST 1.0       /* flwr's PULL_INITIAL_BACKOFF */
#define OBJECT_RETRY_CAP 10.0        /* flwr's PULL_BACKOFF_CAP */
#define OBJECT_WAIT_LIMIT 7200.0     /* flwr's PULL_MAX_TIME */
#define REREGISTER_FIRST 1.0
#define REREGISTER_CAP 60.0
#define MAX_MESSAGE_LENGTH (512ull * 1024 * 1024)

static const struct { const char *name, *path; } RPCS[RPC_COUNT] = {
    {"", ""},
    {"RegisterNode", "/v1/fleet/register-node"},
    {"ActivateNode", "/v1/fleet/activate-node"},
    {"SendNodeHeartbeat", "/v1/fleet/send-node-heartbeat"},
    {"PullMessages", "/v1/fleet/pull-messages"},
    {"PullObject", "/v1/fleet/pull-object"},
    {"ConfirmMessageReceived", "/v1/fleet/confirm-message-received"},
    {"PushMessages", "/v1/fleet/push-messages"},
    {"PushObject", "/v1/fleet/push-object"},
    {"DeactivateNode", "/v1/fleet/deactivate-node"},
    {"UnregisterNode", "/v1/fleet/unregister-node"},
};

static const char *const STATE_NAMES[S_COUNT] = {
    "REGISTER", "ACTIVATE", "IDLE", "PULL_OBJECTS", "CONFIRM", "HANDLING", "PUSH_MESSAGE", "PUSH_OBJECTS",
    "DEACTIVATE", "UNREGISTER", "DONE", "ERROR",
};

typedef enum {
    E_HEARTBEAT_DUE, E_READY, E_NOT_YET, E_REGISTERED, E_ACTIVATED, E_HEARTBEAT_OK, E_NO_MESSAGE, E_MESSAGE,
    E_OBJECT, E_OBJECT_NOT_READY, E_LAST_OBJECT, E_OBJECT_MISSING, E_CONFIRMED, E_HANDLER_DONE, E_STALE_RESULT,
    E_PUSH_ACCEPTED, E_NOTHING_TO_PUSH, E_OBJECT_PUSHED, E_LAST_OBJECT_PUSHED, E_DEACTIVATED, E_UNREGISTERED,
    E_NODE_UNKNOWN, E_RUN_NOT_RUNNING, E_REJECTED, E_STOP,
} fp_event;

typedef enum {
    A_NONE, A_SEND_REGISTER, A_SEND_ACTIVATE, A_SEND_HEARTBEAT, A_SEND_PULL_MESSAGES, A_SEND_PULL_OBJECT,
    A_SEND_CONFIRM, A_RUN_HANDLER, A_SEND_PUSH_MESSAGE, A_SEND_PUSH_OBJECT, A_SEND_DEACTIVATE, A_SEND_UNREGISTER,
    A_WAIT, A_FINISH, A_GIVE_UP, A_REGISTER_AGAIN, A_DROP_MESSAGE, A_FINISH_MESSAGE,
} fp_action;

#define B(state) (1u << (state))
#define ONLINE (B(S_IDLE) | B(S_PULL_OBJECTS) | B(S_CONFIRM) | B(S_HANDLING) | B(S_PUSH_MESSAGE) | B(S_PUSH_OBJECTS))
#define MESSAGE_WORK (B(S_PULL_OBJECTS) | B(S_CONFIRM) | B(S_PUSH_MESSAGE) | B(S_PUSH_OBJECTS))
#define SAME (-1)
#define NEXT_LEAVING (-2)  /* UNREGISTER after DEACTIVATE, DONE after UNREGISTER */

/* The table of fedproto/node.py, row for row. */
static const struct { uint32_t states; uint8_t event, action; int8_t next; } TRANSITIONS[] = {
    {B(S_REGISTER), E_READY, A_SEND_REGISTER, S_REGISTER},
    {B(S_REGISTER), E_NOT_YET, A_WAIT, S_REGISTER},
    {B(S_REGISTER), E_REGISTERED, A_NONE, S_ACTIVATE},
    {B(S_REGISTER), E_NODE_UNKNOWN, A_GIVE_UP, S_DONE},
    {B(S_REGISTER), E_RUN_NOT_RUNNING, A_GIVE_UP, S_DONE},
    {B(S_REGISTER), E_REJECTED, A_GIVE_UP, S_DONE},
    {B(S_ACTIVATE), E_NODE_UNKNOWN, A_GIVE_UP, S_UNREGISTER},
    {B(S_ACTIVATE), E_RUN_NOT_RUNNING, A_GIVE_UP, S_UNREGISTER},
    {B(S_ACTIVATE), E_REJECTED, A_GIVE_UP, S_UNREGISTER},
    {B(S_REGISTER), E_STOP, A_NONE, S_DONE},
    {B(S_ACTIVATE), E_READY, A_SEND_ACTIVATE, S_ACTIVATE},
    {B(S_ACTIVATE), E_ACTIVATED, A_NONE, S_IDLE},
    {B(S_ACTIVATE), E_STOP, A_NONE, S_UNREGISTER},
    {B(S_IDLE), E_READY, A_SEND_PULL_MESSAGES, S_IDLE},
    {B(S_IDLE), E_NOT_YET, A_WAIT, S_IDLE},
    {B(S_IDLE), E_NO_MESSAGE, A_NONE, S_IDLE},
    {B(S_IDLE), E_MESSAGE, A_NONE, S_PULL_OBJECTS},
    {B(S_PULL_OBJECTS), E_READY, A_SEND_PULL_OBJECT, S_PULL_OBJECTS},
    {B(S_PULL_OBJECTS), E_NOT_YET, A_WAIT, S_PULL_OBJECTS},
    {B(S_PULL_OBJECTS), E_OBJECT, A_NONE, S_PULL_OBJECTS},
    {B(S_PULL_OBJECTS), E_OBJECT_NOT_READY, A_NONE, S_PULL_OBJECTS},
    {B(S_PULL_OBJECTS), E_LAST_OBJECT, A_NONE, S_CONFIRM},
    {B(S_PULL_OBJECTS), E_OBJECT_MISSING, A_DROP_MESSAGE, S_IDLE},
    {B(S_CONFIRM), E_READY, A_SEND_CONFIRM, S_CONFIRM},
    {B(S_CONFIRM), E_CONFIRMED, A_NONE, S_HANDLING},
    {B(S_HANDLING), E_READY, A_RUN_HANDLER, S_HANDLING},
    {B(S_HANDLING), E_NOT_YET, A_WAIT, S_HANDLING},
    {B(S_HANDLING), E_HANDLER_DONE, A_NONE, S_PUSH_MESSAGE},
    {B(S_PUSH_MESSAGE), E_READY, A_SEND_PUSH_MESSAGE, S_PUSH_MESSAGE},
    {B(S_PUSH_MESSAGE), E_PUSH_ACCEPTED, A_NONE, S_PUSH_OBJECTS},
    {B(S_PUSH_MESSAGE), E_NOTHING_TO_PUSH, A_FINISH_MESSAGE, S_IDLE},
    {B(S_PUSH_OBJECTS), E_READY, A_SEND_PUSH_OBJECT, S_PUSH_OBJECTS},
    {B(S_PUSH_OBJECTS), E_OBJECT_PUSHED, A_NONE, S_PUSH_OBJECTS},
    {B(S_PUSH_OBJECTS), E_LAST_OBJECT_PUSHED, A_FINISH_MESSAGE, S_IDLE},
    {MESSAGE_WORK, E_RUN_NOT_RUNNING, A_DROP_MESSAGE, S_IDLE},
    {MESSAGE_WORK, E_REJECTED, A_DROP_MESSAGE, S_IDLE},
    {ONLINE, E_HEARTBEAT_DUE, A_SEND_HEARTBEAT, SAME},
    {ONLINE, E_HEARTBEAT_OK, A_NONE, SAME},
    {ONLINE, E_NODE_UNKNOWN, A_REGISTER_AGAIN, S_REGISTER},
    {ONLINE, E_STOP, A_DROP_MESSAGE, S_DEACTIVATE},
    {B(S_REGISTER) | B(S_ACTIVATE) | B(S_IDLE) | B(S_PULL_OBJECTS) | B(S_CONFIRM) | B(S_HANDLING) | B(S_DEACTIVATE) |
         B(S_UNREGISTER), E_STALE_RESULT, A_NONE, SAME},
    {B(S_DEACTIVATE), E_READY, A_SEND_DEACTIVATE, S_DEACTIVATE},
    {B(S_DEACTIVATE), E_DEACTIVATED, A_NONE, S_UNREGISTER},
    {B(S_DEACTIVATE) | B(S_UNREGISTER), E_REJECTED, A_NONE, NEXT_LEAVING},
    {B(S_DEACTIVATE) | B(S_UNREGISTER), E_NODE_UNKNOWN, A_NONE, NEXT_LEAVING},
    {B(S_DEACTIVATE) | B(S_UNREGISTER) | B(S_DONE), E_STOP, A_NONE, SAME},
    {B(S_UNREGISTER), E_READY, A_SEND_UNREGISTER, S_UNREGISTER},
    {B(S_UNREGISTER), E_UNREGISTERED, A_NONE, S_DONE},
    {B(S_DONE), E_READY, A_FINISH, S_DONE},
};

static const char *const EVENT_NAMES[] = {
    "heartbeat_due", "ready", "not_yet", "registered", "activated", "heartbeat_ok", "no_message", "message",
    "object", "object_not_ready", "last_object", "object_missing", "confirmed", "handler_done", "stale_result",
    "push_accepted", "nothing_to_push", "object_pushed", "last_object_pushed", "deactivated", "unregistered",
    "node_unknown", "run_not_running", "rejected", "stop",
};

static char init_error[160];

static size_t align8(size_t n) { return (n + 7u) & ~(size_t)7u; }

static size_t scratch_size(const fp_limits *l) { return 4096 + 160u * l->max_objects + FP_NPY_HEADER_MAX + 16; }
static size_t children_capacity(const fp_limits *l) { return 2u * l->max_objects + 16; }

size_t fp_arena_required(const fp_limits *l) {
    return align8(sizeof(fp_session)) + align8(l->max_objects * sizeof(fp_tree_node)) +
           align8(l->max_arrays * sizeof(fp_in_array)) + align8(l->max_objects * sizeof(fp_out_object)) +
           align8(children_capacity(l) * sizeof(uint16_t)) + align8(scratch_size(l)) + align8(l->names_bytes) +
           align8(l->model_bytes);
}

const char *fp_init_error(void) { return init_error; }

fp_session *fp_session_init(void *arena, size_t arena_size, const fp_config *config) {
    const fp_limits *l = &config->limits;
    if (config->heartbeat_interval < 10 || config->heartbeat_interval > 1800 || !(config->poll_interval > 0)) {
        snprintf(init_error, sizeof init_error, "heartbeat interval must be within [10, 1800] s and poll interval > 0");
        return NULL;
    }
    if (l->max_objects < 8 || l->max_objects > 4096 || l->max_arrays < 1 || l->names_bytes < 1024) {
        snprintf(init_error, sizeof init_error, "limits: max_objects 8..4096, max_arrays >= 1, names_bytes >= 1024");
        return NULL;
    }
    if (arena == NULL || ((uintptr_t)arena & 7u) != 0 || arena_size < fp_arena_required(l)) {
        snprintf(init_error, sizeof init_error, "the arena must be 8-byte aligned and at least %zu bytes",
                 fp_arena_required(l));
        return NULL;
    }
    uint8_t *p = arena;
    fp_session *s = (fp_session *)(void *)p;
    memset(s, 0, sizeof *s);
    p += align8(sizeof *s);
    s->config = *config;
    s->nodes = (fp_tree_node *)(void *)p, p += align8(l->max_objects * sizeof(fp_tree_node));
    s->arrays = (fp_in_array *)(void *)p, p += align8(l->max_arrays * sizeof(fp_in_array));
    s->out = (fp_out_object *)(void *)p, p += align8(l->max_objects * sizeof(fp_out_object));
    s->out_children = (uint16_t *)(void *)p, s->out_children_capacity = children_capacity(l);
    p += align8(children_capacity(l) * sizeof(uint16_t));
    s->scratch = p, s->scratch_size = scratch_size(l), p += align8(scratch_size(l));
    s->names = p, p += align8(l->names_bytes);
    s->model = p;
    s->fixed_bytes = (size_t)(s->names - (uint8_t *)arena);
    s->arena_end = (uint8_t *)arena + arena_size;
    s->heartbeat_period = (config->heartbeat_interval - HEARTBEAT_CALL_TIMEOUT) * HEARTBEAT_MULTIPLIER;
    s->state = S_REGISTER;
    s->register_delay = REREGISTER_FIRST;
    fp_work_reset(s);
    return s;
}

/* ---- the table ---- */

static void fail(fp_session *s) {
    s->state = S_ERROR;
    s->awaiting = RPC_NONE;
}

static void forget_message(fp_session *s) { fp_work_reset(s); }

static void effect(fp_session *s, fp_action action, double now) {
    switch (action) {
    case A_GIVE_UP: s->outcome = "refused"; break;
    case A_REGISTER_AGAIN:
        if (now - s->activated_at >= REREGISTER_CAP) s->register_delay = REREGISTER_FIRST;
        s->register_at = now + s->register_delay;
        s->register_delay = fmin(s->register_delay * 2, REREGISTER_CAP);
        forget_message(s);
        break;
    case A_DROP_MESSAGE:
        s->poll_at = now + s->config.poll_interval;
        forget_message(s);
        break;
    case A_FINISH_MESSAGE:
        s->stats.handled++;
        snprintf(s->stats.message_type, sizeof s->stats.message_type, "%s", s->work.hashed.metadata.message_type);
        s->stats.received_bytes = s->work.pulled_bytes;
        s->stats.sent_bytes = 0;
        for (unsigned i = 0; i < s->work.out_count; i++) s->stats.sent_bytes += fp_reply_object_size(s, i);
        snprintf(s->stats.error, sizeof s->stats.error, "%s", s->work.error_reason);
        forget_message(s);
        s->poll_at = now;  /* like flwr: look for the next message at once */
        break;
    default: break;
    }
}

static int fire(fp_session *s, fp_event event, double now, fp_action *action) {
    if (s->config.persistent_key && s->state == S_REGISTER && event == E_REJECTED) {
        *action = A_NONE;  /* the key is registered already: activate it */
        s->state = S_ACTIVATE;
        return 0;
    }
    for (size_t i = 0; i < sizeof TRANSITIONS / sizeof TRANSITIONS[0]; i++) {
        if (TRANSITIONS[i].event != event || !(TRANSITIONS[i].states & B(s->state))) continue;
        *action = (fp_action)TRANSITIONS[i].action;
        effect(s, *action, now);
        int next = TRANSITIONS[i].next;
        if (next == NEXT_LEAVING) next = s->state == S_DEACTIVATE ? S_UNREGISTER : S_DONE;
        if (next == S_UNREGISTER && s->config.persistent_key) next = S_DONE;  /* the key stays registered */
        if (next != SAME) s->state = (fp_state)next;
        return 0;
    }
    fp_err_set(&s->error, "%s is not valid in state %s", EVENT_NAMES[event], STATE_NAMES[s->state]);
    fail(s);
    return -1;
}

static double ready_at(const fp_session *s) {
    switch (s->state) {
    case S_REGISTER: return s->register_at;
    case S_IDLE: return s->poll_at;
    case S_PULL_OBJECTS: return s->work.retry_at;
    case S_HANDLING: return s->work.handler_launched || s->handler_running ? INFINITY : 0.0;
    default: return 0.0;
    }
}

static fp_step step_of(fp_step_kind kind) {
    fp_step step;
    memset(&step, 0, sizeof step);
    step.kind = kind;
    return step;
}

static fp_step error_step(void) { return step_of(FP_STEP_ERROR); }

static void request_size(fp_session *s);

static int pick_object_to_pull(fp_session *s) {
    int node = fp_next_pull(s);
    if (node == -2) {
        fail(s);
        return -2;
    }
    return node;
}

fp_step fp_next_step(fp_session *s, double now) {
    if (s->state == S_ERROR) return error_step();
    if (s->awaiting != RPC_NONE) {
        fp_err_set(&s->error, "fp_next_step called while the %s response is due", RPCS[s->awaiting].name);
        fail(s);
        return error_step();
    }
    fp_event event;
    if ((ONLINE & B(s->state)) && now >= s->heartbeat_at) event = E_HEARTBEAT_DUE;
    else if (now >= ready_at(s)) event = E_READY;
    else event = E_NOT_YET;
    fp_action action;
    if (fire(s, event, now, &action) != 0) return error_step();
    fp_step step;
    switch (action) {
    case A_WAIT:
        step = step_of(FP_STEP_WAIT);
        step.until = ready_at(s);
        if ((ONLINE & B(s->state)) && s->heartbeat_at < step.until) step.until = s->heartbeat_at;
        return step;
    case A_FINISH:
        step = step_of(FP_STEP_FINISHED);
        step.outcome = s->outcome ? s->outcome : "stopped";
        return step;
    case A_RUN_HANDLER:
        s->work.handler_launched = true;
        s->work.handler_started = now;
        if (s->work.unsupported[0]) {  /* nothing to run: the reply is the error */
            fp_handler_failed(s, s->work.unsupported, now);
            return s->state == S_ERROR ? error_step() : fp_next_step(s, now);
        }
        s->handler_running = true;
        return step_of(FP_STEP_HANDLE);
    case A_SEND_REGISTER: s->awaiting = RPC_REGISTER; break;
    case A_SEND_ACTIVATE: s->awaiting = RPC_ACTIVATE; break;
    case A_SEND_HEARTBEAT:
        s->heartbeat_at = now + s->heartbeat_period;
        s->awaiting = RPC_HEARTBEAT;
        break;
    case A_SEND_PULL_MESSAGES: s->awaiting = RPC_PULL_MESSAGES; break;
    case A_SEND_PULL_OBJECT: {
        int node = pick_object_to_pull(s);
        if (node == -2) return error_step();
        if (node < 0) {  /* a repeated chunk completed the last array: nothing left to pull */
            fp_err_set(&s->error, "internal: no object left to pull in PULL_OBJECTS");
            fail(s);
            return error_step();
        }
        fp_pull_begin(s, node);
        s->awaiting = RPC_PULL_OBJECT;
        break;
    }
    case A_SEND_CONFIRM: s->awaiting = RPC_CONFIRM; break;
    case A_SEND_PUSH_MESSAGE: s->awaiting = RPC_PUSH_MESSAGES; break;
    case A_SEND_PUSH_OBJECT:
        while (!s->out[s->work.push_cursor].wanted) s->work.push_cursor++;
        s->awaiting = RPC_PUSH_OBJECT;
        break;
    case A_SEND_DEACTIVATE: s->awaiting = RPC_DEACTIVATE; break;
    case A_SEND_UNREGISTER: s->awaiting = RPC_UNREGISTER; break;
    default:
        fp_err_set(&s->error, "internal: action %d on a tick", (int)action);
        fail(s);
        return error_step();
    }
    step = step_of(FP_STEP_SEND);
    step.rpc = RPCS[s->awaiting].name;
    step.path = RPCS[s->awaiting].path;
    request_size(s);
    step.body_length = s->request_length;
    return step;
}

/* ---- requests, encoded by nanopb straight into the caller's window ---- */

static bool encode_public_key(pb_ostream_t *out, const pb_field_t *field, void *const *arg) {
    const fp_config *config = *arg;
    return pb_encode_tag_for_field(out, field) &&
           pb_encode_string(out, (const pb_byte_t *)config->public_key_pem, config->public_key_length);
}

static bool encode_reply_message(pb_ostream_t *out, const pb_field_t *field, void *const *arg) {
    flwr_proto_Message m;
    fp_reply_message(*arg, &m);
    return pb_encode_tag_for_field(out, field) && pb_encode_submessage(out, flwr_proto_Message_fields, &m);
}

static bool encode_reply_tree(pb_ostream_t *out, const pb_field_t *field, void *const *arg) {
    return fp_reply_encode_tree(out, *arg, field);
}

static bool encode_runtime(pb_ostream_t *out, const pb_field_t *field, void *const *arg) {
    const fp_session *s = *arg;
    double seconds = s->work.handler_seconds;
    return pb_encode_tag(out, PB_WT_STRING, field->tag) && pb_encode_varint(out, 8) && pb_encode_fixed64(out, &seconds);
}

static bool encode_object_content(pb_ostream_t *out, const pb_field_t *field, void *const *arg) {
    fp_session *s = *arg;
    return pb_encode_tag_for_field(out, field) && pb_encode_varint(out, fp_reply_object_size(s, s->work.push_cursor)) &&
           fp_reply_write_object(out, s, s->work.push_cursor);
}

static bool encode_request(fp_session *s, pb_ostream_t *out) {
    flwr_proto_Node node = {s->node_id};
    switch (s->awaiting) {
    case RPC_REGISTER: {
        flwr_proto_RegisterNodeFleetRequest r = flwr_proto_RegisterNodeFleetRequest_init_zero;
        r.public_key.funcs.encode = encode_public_key;
        r.public_key.arg = &s->config;
        return pb_encode(out, flwr_proto_RegisterNodeFleetRequest_fields, &r);
    }
    case RPC_ACTIVATE: {
        flwr_proto_ActivateNodeRequest r = flwr_proto_ActivateNodeRequest_init_zero;
        r.public_key.funcs.encode = encode_public_key;
        r.public_key.arg = &s->config;
        r.heartbeat_interval = s->config.heartbeat_interval;
        return pb_encode(out, flwr_proto_ActivateNodeRequest_fields, &r);
    }
    case RPC_HEARTBEAT: {
        flwr_proto_SendNodeHeartbeatRequest r = {true, node, s->config.heartbeat_interval};
        return pb_encode(out, flwr_proto_SendNodeHeartbeatRequest_fields, &r);
    }
    case RPC_PULL_MESSAGES: {
        flwr_proto_PullMessagesRequest r = flwr_proto_PullMessagesRequest_init_zero;
        r.has_node = true, r.node = node;
        return pb_encode(out, flwr_proto_PullMessagesRequest_fields, &r);
    }
    case RPC_PULL_OBJECT: {
        flwr_proto_PullObjectRequest r = flwr_proto_PullObjectRequest_init_zero;
        r.has_node = true, r.node = node, r.run_id = s->work.run_id;
        memcpy(r.object_id, s->nodes[s->work.pulling].id, sizeof r.object_id);
        return pb_encode(out, flwr_proto_PullObjectRequest_fields, &r);
    }
    case RPC_CONFIRM: {
        flwr_proto_ConfirmMessageReceivedRequest r = flwr_proto_ConfirmMessageReceivedRequest_init_zero;
        r.has_node = true, r.node = node, r.run_id = s->work.run_id;
        memcpy(r.message_object_id, s->work.message_id, sizeof r.message_object_id);
        return pb_encode(out, flwr_proto_ConfirmMessageReceivedRequest_fields, &r);
    }
    case RPC_PUSH_MESSAGES: {
        flwr_proto_PushMessagesRequest r = flwr_proto_PushMessagesRequest_init_zero;
        r.has_node = true, r.node = node;
        r.messages_list.funcs.encode = encode_reply_message, r.messages_list.arg = s;
        r.message_object_trees.funcs.encode = encode_reply_tree, r.message_object_trees.arg = s;
        r.clientapp_runtime_list.funcs.encode = encode_runtime, r.clientapp_runtime_list.arg = s;
        return pb_encode(out, flwr_proto_PushMessagesRequest_fields, &r);
    }
    case RPC_PUSH_OBJECT: {
        flwr_proto_PushObjectRequest r = flwr_proto_PushObjectRequest_init_zero;
        r.has_node = true, r.node = node, r.run_id = s->work.run_id;
        memcpy(r.object_id, s->out[s->work.push_cursor].id, sizeof r.object_id);
        memcpy(r.session_id, s->work.session_id, sizeof r.session_id);
        r.object_content.funcs.encode = encode_object_content, r.object_content.arg = s;
        return pb_encode(out, flwr_proto_PushObjectRequest_fields, &r);
    }
    case RPC_DEACTIVATE: {
        flwr_proto_DeactivateNodeRequest r = {s->node_id};
        return pb_encode(out, flwr_proto_DeactivateNodeRequest_fields, &r);
    }
    case RPC_UNREGISTER: {
        flwr_proto_UnregisterNodeFleetRequest r = {s->node_id};
        return pb_encode(out, flwr_proto_UnregisterNodeFleetRequest_fields, &r);
    }
    default: return false;
    }
}

static void request_size(fp_session *s) {
    fp_sink sink = {NULL, 0, 0, 0, NULL, 0};
    pb_ostream_t out = fp_sink_stream(&sink);
    encode_request(s, &out);
    s->request_length = out.bytes_written;
    s->request_position = 0;
}

size_t fp_request_read(fp_session *s, uint8_t *out, size_t capacity) {
    if (s->awaiting == RPC_NONE || s->request_position >= s->request_length) return 0;
    fp_sink sink = {out, s->request_position, capacity, 0, NULL, 0};
    pb_ostream_t stream = fp_sink_stream(&sink);
    encode_request(s, &stream);
    s->request_position += sink.copied;
    return sink.copied;
}

void fp_request_rewind(fp_session *s) { s->request_position = 0; }

/* ---- responses ---- */

int fp_status_is_transient(int status) { return status == 408 || status == 429 || status >= 500; }

/* A PullObject answer that was cut short (and is tried again, or given up): undo what its bytes did. */
static void rollback_pull(fp_session *s) {
    fp_tree_node *node = &s->nodes[s->work.pulling];
    if (node->type == T_ARRAYCHUNK && s->rx.header_done && s->rx.array >= 0) {
        fp_in_array *a = &s->arrays[s->rx.array];
        a->stream_position = node->chunk_offset;
        if (a->stream_position < a->data_start) a->data_start = 0;
    }
    s->work.pulled_bytes -= s->rx.header_length + s->rx.header_done + s->rx.body_received;
    node->type = T_NONE;
}

void fp_response_begin(fp_session *s, int http_status) {
    s->response_status = http_status;
    s->scratch_used = 0;
    if (s->awaiting == RPC_PULL_OBJECT) {
        rollback_pull(s);
        fp_pull_begin(s, s->work.pulling);
    }
}

static int pull_object_frame(fp_session *s, const uint8_t *bytes, size_t length) {
    fp_pull_rx *rx = &s->rx;
    while (length > 0) {
        if (rx->state != F_TAG) {
            size_t take = rx->remaining < length ? (size_t)rx->remaining : length;
            if (rx->state == F_CONTENT && fp_pull_feed(s, bytes, take) != 0) return -1;
            bytes += take, length -= take, rx->remaining -= take;
            if (rx->remaining == 0) rx->state = F_TAG;
            continue;
        }
        /* A tag and its varint or length, read with nanopb from the bytes held so far. */
        rx->pending[rx->pending_length++] = *bytes++;
        length--;
        pb_istream_t in = pb_istream_from_buffer(rx->pending, rx->pending_length);
        pb_wire_type_t wire;
        uint32_t tag;
        bool eof;
        uint64_t value;
        bool complete = pb_decode_tag(&in, &wire, &tag, &eof) && (wire == PB_WT_64BIT || wire == PB_WT_32BIT ||
                                                                   pb_decode_varint(&in, &value));
        if (!complete) {
            if (rx->pending_length == sizeof rx->pending) {
                fp_err_set(&s->error, "PullObject: the response is not a PullObjectResponse");
                return -1;
            }
            continue;
        }
        rx->pending_length = 0;
        if (wire == PB_WT_VARINT) {
            if (tag == flwr_proto_PullObjectResponse_object_found_tag) rx->found = value != 0;
            if (tag == flwr_proto_PullObjectResponse_object_available_tag) rx->available = value != 0;
        } else if (wire == PB_WT_STRING) {
            bool content = tag == flwr_proto_PullObjectResponse_object_content_tag;
            if (content && rx->content_seen) {
                fp_err_set(&s->error, "PullObject: object_content twice in one response");
                return -1;
            }
            rx->content_seen |= content;
            rx->state = content ? F_CONTENT : F_SKIP;
            rx->remaining = value;
            if (value == 0) rx->state = F_TAG;
        } else {
            rx->state = F_SKIP;
            rx->remaining = wire == PB_WT_64BIT ? 8 : 4;
        }
        if (s->work.pulled_bytes + rx->remaining > MAX_MESSAGE_LENGTH) {
            fp_err_set(&s->error, "message: its objects exceed the %llu-byte message limit", MAX_MESSAGE_LENGTH);
            return -1;
        }
    }
    return 0;
}

void fp_response_feed(fp_session *s, const uint8_t *bytes, size_t length) {
    if (s->state == S_ERROR || s->response_status != 200) return;
    if (s->awaiting == RPC_PULL_OBJECT) {
        if (pull_object_frame(s, bytes, length) != 0) fail(s);
        return;
    }
    if (length > s->scratch_size - s->scratch_used) {
        fp_err_set(&s->error, "%s: the response is larger than this node's %zu-byte buffer", RPCS[s->awaiting].name,
                   s->scratch_size);
        fail(s);
        return;
    }
    memcpy(s->scratch + s->scratch_used, bytes, length);
    s->scratch_used += length;
}

typedef struct {
    fp_session *s;
    unsigned count;
} list_context;

static bool decode_pulled_message(pb_istream_t *stream, const pb_field_t *field, void **arg) {
    (void)field;
    list_context *c = *arg;
    if (c->count++ > 0) return false;  /* more than one: refused below */
    return pb_decode(stream, flwr_proto_Message_fields, &c->s->work.delivered);
}

static bool decode_tree_root(pb_istream_t *stream, const pb_field_t *field, void **arg) {
    list_context *c = *arg;
    if (c->count++ > 0) return false;
    struct { fp_session *s; int16_t parent; uint8_t depth; } root = {c->s, -1, 0};
    void *root_arg = &root;
    return fp_tree_decode(stream, field, &root_arg);
}

static int on_pull_messages(fp_session *s, double now, fp_event *event) {
    fp_work_reset(s);
    flwr_proto_PullMessagesResponse r = flwr_proto_PullMessagesResponse_init_zero;
    list_context messages = {s, 0}, trees = {s, 0};
    r.messages_list.funcs.decode = decode_pulled_message, r.messages_list.arg = &messages;
    r.message_object_trees.funcs.decode = decode_tree_root, r.message_object_trees.arg = &trees;
    pb_istream_t in = pb_istream_from_buffer(s->scratch, s->scratch_used);
    bool ok = pb_decode(&in, flwr_proto_PullMessagesResponse_fields, &r);
    if (messages.count > 1 || trees.count > 1) {
        fp_err_set(&s->error, "PullMessages: more than one message in one response, expected at most 1");
        return -1;
    }
    if (!ok) {
        if (s->work.tree_error) return fp_tree_check(s);
        fp_err_set(&s->error, "PullMessages: the response is not a valid PullMessagesResponse (%s)", PB_GET_ERROR(&in));
        return -1;
    }
    if (messages.count != trees.count) {
        fp_err_set(&s->error, "PullMessages: %u messages but %u object trees", messages.count, trees.count);
        return -1;
    }
    if (messages.count == 0) {
        s->poll_at = now + s->config.poll_interval;
        *event = E_NO_MESSAGE;
        return 0;
    }
    const flwr_proto_Metadata *m = &s->work.delivered.metadata;
    if (strcmp(s->nodes[0].id, m->message_id) != 0) {
        fp_err_set(&s->error, "PullMessages: the object tree's root is not the message");
        return -1;
    }
    if (m->dst_node_id != s->node_id) {
        fp_err_set(&s->error, "PullMessages: message for node %llu, we are %llu", (unsigned long long)m->dst_node_id,
                   (unsigned long long)s->node_id);
        return -1;
    }
    if (fp_tree_check(s) != 0) return -1;
    memcpy(s->work.message_id, m->message_id, sizeof s->work.message_id);
    s->work.run_id = m->run_id;
    s->work.pull_started = now;
    s->work.retry_delay = OBJECT_RETRY_FIRST;
    s->has_work = true;
    *event = E_MESSAGE;
    return 0;
}

static int on_pull_object(fp_session *s, double now, fp_event *event) {
    fp_pull_rx *rx = &s->rx;
    if (rx->state != F_TAG || rx->pending_length != 0) {
        fp_err_set(&s->error, "PullObject: the response is cut short");
        return -1;
    }
    if (rx->content_seen && !(rx->found && rx->available)) {
        fp_err_set(&s->error, "PullObject: content for an object not found or not available");
        return -1;
    }
    if (!rx->found) {
        *event = E_OBJECT_MISSING;
        return 0;
    }
    if (!rx->available) {  /* the ServerApp is still uploading it */
        if (now - s->work.pull_started >= OBJECT_WAIT_LIMIT) {
            *event = E_OBJECT_MISSING;
            return 0;
        }
        s->work.retry_at = now + s->work.retry_delay;
        s->work.retry_delay = fmin(s->work.retry_delay * 2, OBJECT_RETRY_CAP);
        *event = E_OBJECT_NOT_READY;
        return 0;
    }
    if (fp_pull_end(s) != 0) return -1;
    s->work.retry_at = 0, s->work.retry_delay = OBJECT_RETRY_FIRST;
    int next = fp_next_pull(s);
    if (next == -2) return -1;
    if (next >= 0) {
        *event = E_OBJECT;
        return 0;
    }
    if (fp_message_finish(s) != 0) return -1;
    *event = E_LAST_OBJECT;
    return 0;
}

static bool decode_object_to_push(pb_istream_t *stream, const pb_field_t *field, void **arg) {
    (void)field;
    list_context *c = *arg;
    fp_session *s = c->s;
    char id[65] = {0};
    if (stream->bytes_left != 64 || !pb_read(stream, (pb_byte_t *)id, 64)) {
        c->count = UINT32_MAX;
        return pb_read(stream, NULL, stream->bytes_left) && false;
    }
    for (unsigned i = 0; i < s->work.out_count; i++) {
        if (strcmp(s->out[i].id, id) == 0) {
            s->work.to_push += !s->out[i].wanted;
            s->out[i].wanted = true;
            return true;
        }
    }
    c->count = UINT32_MAX;  /* an id we do not have */
    return false;
}

static int on_push_messages(fp_session *s, fp_event *event) {
    flwr_proto_PushMessagesResponse r = flwr_proto_PushMessagesResponse_init_zero;
    list_context wanted = {s, 0};
    r.objects_to_push.funcs.decode = decode_object_to_push, r.objects_to_push.arg = &wanted;
    for (unsigned i = 0; i < s->work.out_count; i++) s->out[i].wanted = false;
    s->work.to_push = 0;
    pb_istream_t in = pb_istream_from_buffer(s->scratch, s->scratch_used);
    if (!pb_decode(&in, flwr_proto_PushMessagesResponse_fields, &r)) {
        fp_err_set(&s->error, wanted.count == UINT32_MAX ? "PushMessages: asked for an object we do not have"
                                                         : "PushMessages: the response is not a valid PushMessagesResponse");
        return -1;
    }
    memcpy(s->work.session_id, r.session_id, sizeof s->work.session_id);
    s->work.push_cursor = 0;
    s->work.pushed = 0;
    *event = s->work.to_push ? E_PUSH_ACCEPTED : E_NOTHING_TO_PUSH;
    return 0;
}

static bool decode_empty(fp_session *s, const pb_msgdesc_t *fields, void *message) {
    pb_istream_t in = pb_istream_from_buffer(s->scratch, s->scratch_used);
    return pb_decode(&in, fields, message);
}

void fp_response_end(fp_session *s, double now) {
    if (s->state == S_ERROR) return;
    fp_rpc rpc = s->awaiting;
    fp_event event = E_REJECTED;
    if (rpc == RPC_NONE) {
        fp_err_set(&s->error, "a response was reported but no request is outstanding");
        fail(s);
        return;
    }
    s->awaiting = RPC_NONE;
    fp_action action;
    if (s->response_status != 200) {
        if (fp_status_is_transient(s->response_status)) {
            fp_err_set(&s->error, "internal: the transport passed on HTTP %d, which it must retry", s->response_status);
            fail(s);
            return;
        }
        event = s->response_status == 401 ? E_NODE_UNKNOWN : s->response_status == 403 ? E_RUN_NOT_RUNNING : E_REJECTED;
        fire(s, event, now, &action);
        return;
    }
    int rc = 0;
    switch (rpc) {
    case RPC_REGISTER: {
        flwr_proto_RegisterNodeFleetResponse r;
        rc = decode_empty(s, flwr_proto_RegisterNodeFleetResponse_fields, &r) ? 0 : -1;
        event = E_REGISTERED;
        break;
    }
    case RPC_ACTIVATE: {
        flwr_proto_ActivateNodeResponse r = {0};
        rc = decode_empty(s, flwr_proto_ActivateNodeResponse_fields, &r) ? 0 : -1;
        if (rc == 0 && r.node_id == 0) {
            fp_err_set(&s->error, "ActivateNode: the response has no node_id");
            fail(s);
            return;
        }
        s->node_id = r.node_id;
        s->activated_at = now;
        s->heartbeat_at = s->poll_at = now;  /* first heartbeat right away, then poll */
        event = E_ACTIVATED;
        break;
    }
    case RPC_HEARTBEAT: {
        flwr_proto_SendNodeHeartbeatResponse r = {0};
        rc = decode_empty(s, flwr_proto_SendNodeHeartbeatResponse_fields, &r) ? 0 : -1;
        event = r.success ? E_HEARTBEAT_OK : E_NODE_UNKNOWN;
        break;
    }
    case RPC_PULL_MESSAGES:
        if (on_pull_messages(s, now, &event) != 0) {
            fail(s);
            return;
        }
        break;
    case RPC_PULL_OBJECT:
        if (on_pull_object(s, now, &event) != 0) {
            fail(s);
            return;
        }
        break;
    case RPC_CONFIRM: {
        flwr_proto_ConfirmMessageReceivedResponse r;
        rc = decode_empty(s, flwr_proto_ConfirmMessageReceivedResponse_fields, &r) ? 0 : -1;
        event = E_CONFIRMED;
        break;
    }
    case RPC_PUSH_MESSAGES:
        if (on_push_messages(s, &event) != 0) {
            fail(s);
            return;
        }
        break;
    case RPC_PUSH_OBJECT: {
        flwr_proto_PushObjectResponse r;
        rc = decode_empty(s, flwr_proto_PushObjectResponse_fields, &r) ? 0 : -1;
        s->work.pushed++;
        s->work.push_cursor++;
        event = s->work.pushed < s->work.to_push ? E_OBJECT_PUSHED : E_LAST_OBJECT_PUSHED;
        break;
    }
    case RPC_DEACTIVATE: {
        flwr_proto_DeactivateNodeResponse r;
        rc = decode_empty(s, flwr_proto_DeactivateNodeResponse_fields, &r) ? 0 : -1;
        event = E_DEACTIVATED;
        break;
    }
    default: {
        flwr_proto_UnregisterNodeFleetResponse r;
        rc = decode_empty(s, flwr_proto_UnregisterNodeFleetResponse_fields, &r) ? 0 : -1;
        event = E_UNREGISTERED;
        break;
    }
    }
    if (rc != 0) {
        fp_err_set(&s->error, "%s: the response is not a valid %s response", RPCS[rpc].name, RPCS[rpc].name);
        fail(s);
        return;
    }
    fire(s, event, now, &action);
}

void fp_abandon(fp_session *s) {
    if (s->awaiting == RPC_PULL_OBJECT) rollback_pull(s);  /* the object starts again from its first byte */
    s->awaiting = RPC_NONE;
}

void fp_stop(fp_session *s, double now) {
    if (s->state == S_ERROR || s->awaiting != RPC_NONE) return;
    if (!s->outcome) s->outcome = "stopped";
    fp_action action;
    fire(s, E_STOP, now, &action);
}

const char *fp_error_text(const fp_session *s) { return s->error.text; }

/* ---- the handler ---- */

const fp_call *fp_current_call(const fp_session *s) {
    return s->state == S_HANDLING && s->handler_running && s->work.handler_launched ? &s->work.call : NULL;
}

static void handler_finished(fp_session *s, const fp_result *result, const char *error, double now) {
    fp_action action;
    bool current = s->state == S_HANDLING && s->work.handler_launched && !s->work.reply_built;
    s->handler_running = false;
    if (!current) {
        fire(s, E_STALE_RESULT, now, &action);  /* its message was dropped: the reply is not sent */
        return;
    }
    s->work.handler_seconds = now - s->work.handler_started;
    if (fp_reply_build(s, result, error, now) != 0) {
        fail(s);
        return;
    }
    fire(s, E_HANDLER_DONE, now, &action);
}

void fp_handler_done(fp_session *s, const fp_result *result, double now) { handler_finished(s, result, NULL, now); }

void fp_handler_failed(fp_session *s, const char *reason, double now) { handler_finished(s, NULL, reason, now); }

const fp_stats *fp_session_stats(const fp_session *s) { return &s->stats; }
uint64_t fp_node_id(const fp_session *s) { return s->node_id; }
size_t fp_arena_peak(const fp_session *s) { return s->fixed_bytes + s->names_peak + s->model_peak; }
