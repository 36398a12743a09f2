/* libFuzzer target: every parser of SuperLink bytes in the core, through the session.
 *
 * The input is the SuperLink's side of one node's life: a sequence of responses, each
 * [u8 kind][u32 little-endian length][bytes] (kind % 8: 5 -> 412, 6 -> 403, 7 -> 401, else 200),
 * fed in pieces of (kind / 8 + 1) bytes. RegisterNode, ActivateNode and SendNodeHeartbeat are
 * answered well here, so the input's responses go to PullMessages, PullObject, ConfirmMessageReceived,
 * PushMessages and PushObject: PullMessagesResponse (messages, object trees), PullObjectResponse
 * framing, object headers, JSON bodies, .npy headers and data, Message/ConfigRecord protos,
 * PushMessagesResponse. Whatever the bytes, the session ends in a step, never a crash or a hang. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <pb_encode.h>

#include "flwr/proto/fleet.pb.h"
#include "flwr/proto/heartbeat.pb.h"
#include "fedproto_node.h"

static uint8_t arena[1 << 20] __attribute__((aligned(8)));

static size_t encoded(const pb_msgdesc_t *fields, const void *message, uint8_t *out, size_t capacity) {
    pb_ostream_t stream = pb_ostream_from_buffer(out, capacity);
    return pb_encode(&stream, fields, message) ? stream.bytes_written : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char pem[] = "-----BEGIN PUBLIC KEY-----\nfuzz\n-----END PUBLIC KEY-----\n";
    fp_limits limits = {256 * 1024, 8, 32, 4096};
    fp_config config = {pem, sizeof pem - 1, 30.0, 3.0, limits, 0};
    if (fp_arena_required(&limits) > sizeof arena) abort();
    fp_session *s = fp_session_init(arena, sizeof arena, &config);
    if (s == NULL) abort();
    double now = 1767225600.0;
    size_t at = 0;
    bool stopped = false;
    uint8_t request[512], made[64];
    for (int steps = 0; steps < 10000; steps++) {
        fp_step step = fp_next_step(s, now);
        if (step.kind == FP_STEP_FINISHED || step.kind == FP_STEP_ERROR) return 0;
        if (step.kind == FP_STEP_WAIT) {
            if (at >= size && !stopped) {
                fp_stop(s, now);
                stopped = true;
            }
            now = step.until > now + 3600 ? now + 3600 : step.until;
            continue;
        }
        if (step.kind == FP_STEP_HANDLE) {
            const fp_call *call = fp_current_call(s);
            for (unsigned a = 0; a < call->array_count; a++)  /* touch every element the core handed out */
                memset(call->arrays[a].data, 0, call->arrays[a].count * (call->arrays[a].dtype == FP_DTYPE_F4 ? 4 : 8));
            fp_metric metric = {"m", 0, 1, 0};
            fp_result result = {1, 0.5, 1, &metric};
            fp_handler_done(s, &result, now);
            continue;
        }
        while (fp_request_read(s, request, sizeof request) > 0) {}
        now += 0.01;
        if (strcmp(step.rpc, "RegisterNode") == 0 || strcmp(step.rpc, "ActivateNode") == 0 ||
            strcmp(step.rpc, "SendNodeHeartbeat") == 0 || at >= size) {
            size_t length = 0;
            if (strcmp(step.rpc, "ActivateNode") == 0) {
                flwr_proto_ActivateNodeResponse r = {17446744073709551615ull};
                length = encoded(flwr_proto_ActivateNodeResponse_fields, &r, made, sizeof made);
            } else if (strcmp(step.rpc, "SendNodeHeartbeat") == 0) {
                flwr_proto_SendNodeHeartbeatResponse r = {true};
                length = encoded(flwr_proto_SendNodeHeartbeatResponse_fields, &r, made, sizeof made);
            }
            fp_response_begin(s, 200);
            fp_response_feed(s, made, length);
            fp_response_end(s, now);
            continue;
        }
        if (size - at < 5) {
            at = size;
            fp_abandon(s);
            continue;
        }
        uint8_t kind = data[at];
        size_t length = (size_t)data[at + 1] | (size_t)data[at + 2] << 8 | (size_t)data[at + 3] << 16 |
                        (size_t)data[at + 4] << 24;
        at += 5;
        if (length > size - at) length = size - at;
        int status = kind % 8 == 5 ? 412 : kind % 8 == 6 ? 403 : kind % 8 == 7 ? 401 : 200;
        size_t piece = (size_t)(kind / 8) + 1;
        fp_response_begin(s, status);
        for (size_t off = 0; off < length; off += piece)
            fp_response_feed(s, data + at + off, length - off < piece ? length - off : piece);
        fp_response_end(s, now);
        at += length;
    }
    abort();  /* 10000 steps: the session loops */
}
