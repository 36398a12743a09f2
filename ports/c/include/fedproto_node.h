/* fedproto_node.h: a Flower Fleet API node (what flwr calls a SuperNode) in C99, sans-IO.
 *
 * The core does no I/O and calls no malloc: the application hands it one arena
 * (fp_arena_required() says how big for a model), asks it what to do (fp_next_step), does it,
 * and reports back. It is docs/PROTOCOL.md Part II as a state machine, the same table as
 * fedproto/node.py:
 *
 *   REGISTER -> ACTIVATE -> IDLE (PullMessages) -> PULL_OBJECTS -> CONFIRM -> HANDLING
 *            -> PUSH_MESSAGE -> PUSH_OBJECTS -> IDLE ... -> DEACTIVATE -> UNREGISTER -> DONE
 *
 * with a heartbeat whenever one is due in every online state (also while the handler runs).
 *
 * A step is one of
 *   FP_STEP_SEND     POST fp_request_read()'s bytes (step.body_length of them) to step.path;
 *                    feed the answer: fp_response_begin(status), fp_response_feed(...) as the
 *                    body arrives, fp_response_end(). A call the transport gives up: fp_abandon().
 *   FP_STEP_HANDLE   start the handler on fp_current_call(); run it in steps, calling
 *                    fp_next_step() between steps (it hands out heartbeats, or FP_STEP_WAIT
 *                    meaning "carry on"); finish with fp_handler_done() or fp_handler_failed().
 *   FP_STEP_WAIT     nothing to do before step.until (seconds, the same clock as `now`).
 *   FP_STEP_FINISHED the node has left (step.outcome: "stopped" or "refused").
 *   FP_STEP_ERROR    the SuperLink broke the protocol; fp_error_text() says how.
 *
 * `now` is the wall clock in seconds since the Unix epoch (UTC): it stamps replies, and the
 * SuperLink compares them with its own clock. One request at a time (invariant 1 of node.py).
 * Array data is stored in the host's byte order: the core supports little-endian targets only.
 */
#ifndef FEDPROTO_NODE_H
#define FEDPROTO_NODE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fp_session fp_session;

/* What a node is configured with; fp_arena_required(&limits) gives the arena for it. */
typedef struct {
    size_t model_bytes;     /* the largest model (array element bytes, all arrays) accepted */
    unsigned max_arrays;    /* arrays per message */
    unsigned max_objects;   /* objects in one message's tree (pulled or pushed) */
    size_t names_bytes;     /* record/array names and config records of one message */
} fp_limits;

typedef struct {
    const char *public_key_pem;   /* PEM SubjectPublicKeyInfo of the signing key */
    size_t public_key_length;
    double heartbeat_interval;    /* announced; the SuperLink accepts 10..1800 s */
    double poll_interval;         /* PullMessages while idle (flwr: 3 s) */
    fp_limits limits;
    /* The key is kept across restarts (a blob in flash): flwr 1.42 never registers a key twice
     * (412 "Public key already in use", even after UnregisterNode), so such a node takes that
     * refusal of RegisterNode as "registered already" and activates, and it leaves with
     * DeactivateNode only, as flwr's SuperNode does with a persistent key. */
    int persistent_key;
} fp_config;

#define FP_DEFAULT_HEARTBEAT_INTERVAL 30.0
#define FP_DEFAULT_POLL_INTERVAL 3.0

size_t fp_arena_required(const fp_limits *limits);
/* NULL if the arena is too small or the configuration invalid (why: fp_init_error()). */
fp_session *fp_session_init(void *arena, size_t arena_size, const fp_config *config);
const char *fp_init_error(void);

typedef enum { FP_STEP_SEND, FP_STEP_HANDLE, FP_STEP_WAIT, FP_STEP_FINISHED, FP_STEP_ERROR } fp_step_kind;

typedef struct {
    fp_step_kind kind;
    const char *rpc;        /* FP_STEP_SEND: e.g. "PullMessages" */
    const char *path;       /* FP_STEP_SEND: e.g. "/v1/fleet/pull-messages" */
    size_t body_length;     /* FP_STEP_SEND: bytes fp_request_read() will produce */
    double until;           /* FP_STEP_WAIT */
    const char *outcome;    /* FP_STEP_FINISHED */
} fp_step;

fp_step fp_next_step(fp_session *s, double now);
/* The next bytes of the request body, at most `capacity`; 0 once all are read. May be called
 * again after fp_request_rewind() to send the same request again (a retried attempt). */
size_t fp_request_read(fp_session *s, uint8_t *out, size_t capacity);
void fp_request_rewind(fp_session *s);

/* Refusals: 401 node unknown, 403 run not running, other 4xx rejected. 408/429/5xx are the
 * transport's to retry; they never reach the session (fp_status_is_transient). */
int fp_status_is_transient(int http_status);
void fp_response_begin(fp_session *s, int http_status);
void fp_response_feed(fp_session *s, const uint8_t *bytes, size_t length);
void fp_response_end(fp_session *s, double now);
void fp_abandon(fp_session *s);
void fp_stop(fp_session *s, double now);         /* leave: deactivate, unregister */
const char *fp_error_text(const fp_session *s);  /* bounded, printable */

/* ---- the handler's view of an instruction ---- */
typedef enum { FP_DTYPE_F4, FP_DTYPE_F8 } fp_dtype;

typedef struct {
    const char *name;        /* the array's key in its ArrayRecord */
    fp_dtype dtype;
    unsigned ndim;
    uint32_t shape[8];
    size_t count;            /* elements */
    void *data;              /* count elements in the host's byte order; the handler may change them */
} fp_array;

typedef enum { FP_CALL_FIT, FP_CALL_EVALUATE } fp_method;

typedef struct {
    fp_method method;
    unsigned array_count;
    fp_array *arrays;
} fp_call;

const fp_call *fp_current_call(const fp_session *s);
/* Config values of the instruction (ConfigRecord). 0 if present and of that kind, -1 if not. */
int fp_config_int(const fp_session *s, const char *key, int64_t *value);
int fp_config_double(const fp_session *s, const char *key, double *value);

typedef struct {
    const char *key;
    int is_double;
    int64_t int_value;
    double double_value;
} fp_metric;

typedef struct {
    uint64_t num_examples;
    double loss;                 /* evaluate */
    unsigned metric_count;
    const fp_metric *metrics;    /* copied by fp_handler_done */
} fp_result;

/* fit: the arrays of fp_current_call() (changed in place) are the reply's arrays. */
void fp_handler_done(fp_session *s, const fp_result *result, double now);
void fp_handler_failed(fp_session *s, const char *reason, double now);

/* For logs: what the last answered message was. */
typedef struct {
    unsigned handled;
    char message_type[65];
    uint64_t received_bytes, sent_bytes;
    char error[257];
} fp_stats;
const fp_stats *fp_session_stats(const fp_session *s);
uint64_t fp_node_id(const fp_session *s);
size_t fp_arena_peak(const fp_session *s);  /* bytes of the arena used at most so far */

#ifdef __cplusplus
}
#endif
#endif
