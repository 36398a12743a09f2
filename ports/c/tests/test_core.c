/* A scripted driver of the core, for tests/test_ports_c.py: the session runs here, the SuperLink
 * and the clock are played by the test over stdin/stdout, so every byte the core sends and every
 * byte it is fed is the test's to choose (hostile ones included).
 *
 *   out: SEND <rpc> <length>\n<request>     in: <status> <now> <length>\n<response>   (status 0: abandon)
 *   out: WAIT <until>\n                      in: <now>\n  or  STOP <now>\n
 *   out: HANDLE <fit|evaluate> <n> [<name>:<dtype>:<count> ...]\n   (then the handler runs at `now`)
 *   out: FINISHED <outcome> <arena peak>\n   or  ERROR <text>\n
 *
 * Options: --feed N (response bytes per fp_response_feed), --read N (request bytes per
 * fp_request_read), --deltas D1,D2,... (fit adds Di to array i), --fail REASON (the handler fails),
 * --metric KEY=VALUE (a double metric), --examples N, --loss X, --model-bytes N, --max-objects N,
 * --persistent-key 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedproto_node.h"

static size_t feed_piece = 65536, read_piece = 65536;

static int read_line(char *line, size_t size) {
    if (fgets(line, (int)size, stdin) == NULL) return -1;
    line[strcspn(line, "\n")] = 0;
    return 0;
}

int main(int argc, char **argv) {
    double deltas[16] = {0}, loss = 0, metric_value = 0;
    unsigned delta_count = 0;
    const char *fail = NULL;
    char metric_key[64] = "";
    unsigned long long examples = 1;
    int persistent_key = 0;
    fp_limits limits = {32u * 1024 * 1024, 16, 96, 16384};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1];
        if (strcmp(flag, "--feed") == 0) feed_piece = (size_t)atol(value);
        else if (strcmp(flag, "--read") == 0) read_piece = (size_t)atol(value);
        else if (strcmp(flag, "--fail") == 0) fail = value;
        else if (strcmp(flag, "--examples") == 0) examples = strtoull(value, NULL, 10);
        else if (strcmp(flag, "--loss") == 0) loss = atof(value);
        else if (strcmp(flag, "--persistent-key") == 0) persistent_key = atoi(value);
        else if (strcmp(flag, "--model-bytes") == 0) limits.model_bytes = (size_t)atol(value);
        else if (strcmp(flag, "--max-objects") == 0) limits.max_objects = (unsigned)atoi(value);
        else if (strcmp(flag, "--metric") == 0) {
            const char *equals = strchr(value, '=');
            if (equals == NULL || equals - value >= (long)sizeof metric_key) return 2;
            memcpy(metric_key, value, (size_t)(equals - value));
            metric_value = atof(equals + 1);
        } else if (strcmp(flag, "--deltas") == 0) {
            for (char *p = (char *)value; *p && delta_count < 16;) {
                deltas[delta_count++] = strtod(p, &p);
                if (*p == ',') p++;
            }
        } else return 2;
    }
    static const char pem[] = "-----BEGIN PUBLIC KEY-----\ntest\n-----END PUBLIC KEY-----\n";
    fp_config config = {pem, sizeof pem - 1, 30.0, 3.0, limits, persistent_key};
    size_t size = fp_arena_required(&limits);
    void *arena = malloc(size);  /* malloc returns memory aligned for any type */
    fp_session *s = arena ? fp_session_init(arena, size, &config) : NULL;
    if (s == NULL) {
        printf("ERROR %s\n", fp_init_error());
        return 1;
    }
    uint8_t *buffer = malloc(feed_piece > read_piece ? feed_piece : read_piece);
    double now = 0;
    char line[256];
    for (;;) {
        fp_step step = fp_next_step(s, now);
        if (step.kind == FP_STEP_SEND) {
            printf("SEND %s %zu\n", step.rpc, step.body_length);
            size_t n, total = 0;
            while ((n = fp_request_read(s, buffer, read_piece)) > 0) fwrite(buffer, 1, n, stdout), total += n;
            fflush(stdout);
            if (total != step.body_length) {
                fprintf(stderr, "request: %zu bytes read, %zu announced\n", total, step.body_length);
                return 3;
            }
            int status;
            size_t length;
            if (read_line(line, sizeof line) != 0 || sscanf(line, "%d %lf %zu", &status, &now, &length) != 3) return 4;
            if (status == 0) {
                fp_abandon(s);
                continue;
            }
            fp_response_begin(s, status);
            while (length > 0) {
                size_t take = length < feed_piece ? length : feed_piece;
                if (fread(buffer, 1, take, stdin) != take) return 4;
                fp_response_feed(s, buffer, take);
                length -= take;
            }
            fp_response_end(s, now);
        } else if (step.kind == FP_STEP_WAIT) {
            printf("WAIT %.6f\n", step.until);
            fflush(stdout);
            if (read_line(line, sizeof line) != 0) return 4;
            if (strncmp(line, "STOP ", 5) == 0) {
                now = atof(line + 5);
                fp_stop(s, now);
            } else {
                now = atof(line);
            }
        } else if (step.kind == FP_STEP_HANDLE) {
            const fp_call *call = fp_current_call(s);
            printf("HANDLE %s %u", call->method == FP_CALL_FIT ? "fit" : "evaluate", call->array_count);
            for (unsigned a = 0; a < call->array_count; a++)
                printf(" %s:%s:%zu", call->arrays[a].name, call->arrays[a].dtype == FP_DTYPE_F4 ? "f4" : "f8",
                       call->arrays[a].count);
            printf("\n");
            fflush(stdout);
            if (fail != NULL) {
                fp_handler_failed(s, fail, now);
                continue;
            }
            for (unsigned a = 0; a < call->array_count && call->method == FP_CALL_FIT; a++) {
                const fp_array *array = &call->arrays[a];
                double delta = a < delta_count ? deltas[a] : 0;
                for (size_t i = 0; i < array->count; i++) {
                    if (array->dtype == FP_DTYPE_F4) ((float *)array->data)[i] += (float)delta;
                    else ((double *)array->data)[i] += delta;
                }
            }
            fp_metric metric = {metric_key, 1, 0, metric_value};
            fp_result result = {examples, loss, metric_key[0] ? 1u : 0u, &metric};
            fp_handler_done(s, &result, now);
        } else if (step.kind == FP_STEP_FINISHED) {
            printf("FINISHED %s %zu\n", step.outcome, fp_arena_peak(s));
            fflush(stdout);
            break;
        } else {
            printf("ERROR %s\n", fp_error_text(s));
            fflush(stdout);
            free(buffer);
            free(arena);
            return 1;
        }
    }
    free(buffer);
    free(arena);
    return 0;
}
