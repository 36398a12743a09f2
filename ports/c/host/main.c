/* fedproto-node-c: the C Fleet node on a POSIX host, one thread, the way a device runs it.
 *
 *   fedproto-node-c --superlink HOST:PORT [--heartbeat-interval S] [--poll-interval S]
 *                   [--node-key FILE] [--curve p256|p384] [--root-certificates PEM]
 *                   [--handler arithmetic|linreg] [--client N] [--fail-fit-round R] [--fit-seconds S]
 *                   [--model-bytes N] [--max-objects N]
 *
 * The loop: ask the session for the next step and do it. While a handler runs, each WAIT is one
 * training step instead of a sleep, so the heartbeats the session hands out go between steps.
 * --node-key FILE keeps the key across restarts (generated and written there if missing): the
 * blob a device keeps in flash. SIGINT/SIGTERM: deactivate, unregister, exit 0; a second signal
 * gives up a call in progress. Exit codes as the Python node: 0 done, 1 protocol error, 2 usage,
 * 3 unreachable, 5 refused. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers.h"
#include "transport.h"

#define EXIT_PROTOCOL_ERROR 1
#define EXIT_USAGE 2
#define EXIT_UNREACHABLE 3
#define EXIT_REFUSED 5

static volatile sig_atomic_t stop_signals = 0;

static void on_signal(int signal_number) {
    (void)signal_number;
    if (stop_signals < 2) stop_signals++;
}

static int usage(const char *why) {
    fprintf(stderr, "fedproto-node-c: %s\nusage: fedproto-node-c --superlink HOST:PORT [--heartbeat-interval S] "
                    "[--poll-interval S] [--node-key FILE] [--curve p256|p384] [--root-certificates PEM] "
                    "[--handler arithmetic|linreg] [--client N] [--fail-fit-round R] [--fit-seconds S] "
                    "[--model-bytes N] [--max-objects N]\n", why);
    return EXIT_USAGE;
}

static fp_key *load_or_create_key(const char *path, fp_curve curve) {
    char why[128], pem[4096];
    if (path == NULL) {
        fp_key *key = fp_key_generate(curve, why);
        if (key == NULL) fprintf(stderr, "fedproto-node-c: %s\n", why);
        return key;
    }
    FILE *file = fopen(path, "rb");
    if (file != NULL) {
        size_t length = fread(pem, 1, sizeof pem - 1, file);
        fclose(file);
        fp_key *key = fp_key_from_pem(pem, length, why);
        if (key == NULL) fprintf(stderr, "fedproto-node-c: --node-key %s: %s\n", path, why);
        return key;
    }
    fp_key *key = fp_key_generate(curve, why);
    if (key == NULL || fp_key_private_pem(key, pem, sizeof pem) != 0 || (file = fopen(path, "wx")) == NULL ||
        fputs(pem, file) < 0 || fclose(file) != 0) {
        fprintf(stderr, "fedproto-node-c: --node-key %s: cannot write a new key (%s)\n", path, strerror(errno));
        fp_key_free(key);
        return NULL;
    }
    return key;
}

static void sleep_until(double until) {
    double left = until - fp_wall_clock();
    if (left > 0.2) left = 0.2;  /* wake up for signals */
    if (left <= 0) return;
    struct timespec pause = {0, (long)(left * 1e9)};
    nanosleep(&pause, NULL);
}

int main(int argc, char **argv) {
    const char *superlink = NULL, *key_path = NULL, *ca_file = NULL, *handler_name = "arithmetic";
    double heartbeat_interval = FP_DEFAULT_HEARTBEAT_INTERVAL, poll_interval = FP_DEFAULT_POLL_INTERVAL;
    fp_curve curve = FP_CURVE_P256;
    arithmetic_handler arithmetic = {0};
    linreg_handler linreg = {0};
    fp_limits limits = {16u * 1024 * 1024, 16, 96, 16384};
    const char *client = getenv("FLEET_CLIENT");
    arithmetic.client = linreg.client = client ? atoi(client) : 0;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (value == NULL) return usage("a flag without its value");
        i++;
        if (strcmp(flag, "--superlink") == 0) superlink = value;
        else if (strcmp(flag, "--heartbeat-interval") == 0) heartbeat_interval = atof(value);
        else if (strcmp(flag, "--poll-interval") == 0) poll_interval = atof(value);
        else if (strcmp(flag, "--node-key") == 0) key_path = value;
        else if (strcmp(flag, "--root-certificates") == 0) ca_file = value;
        else if (strcmp(flag, "--curve") == 0 && (strcmp(value, "p256") == 0 || strcmp(value, "p384") == 0))
            curve = strcmp(value, "p384") == 0 ? FP_CURVE_P384 : FP_CURVE_P256;
        else if (strcmp(flag, "--handler") == 0) handler_name = value;
        else if (strcmp(flag, "--client") == 0) arithmetic.client = linreg.client = atoi(value);
        else if (strcmp(flag, "--fail-fit-round") == 0) arithmetic.fail_fit_round = atoi(value);
        else if (strcmp(flag, "--fit-seconds") == 0) arithmetic.fit_seconds = atof(value);
        else if (strcmp(flag, "--model-bytes") == 0) limits.model_bytes = (size_t)strtoull(value, NULL, 10);
        else if (strcmp(flag, "--max-objects") == 0) limits.max_objects = (unsigned)atoi(value);
        else return usage("unknown flag or value");
    }
    bool use_linreg = strcmp(handler_name, "linreg") == 0;
    if (superlink == NULL || (!use_linreg && strcmp(handler_name, "arithmetic") != 0))
        return usage("--superlink HOST:PORT is required; --handler is arithmetic or linreg");

    fp_key *key = load_or_create_key(key_path, curve);
    if (key == NULL) return EXIT_USAGE;
    char public_pem[1024];
    if (fp_key_public_pem(key, public_pem, sizeof public_pem) != 0) return EXIT_USAGE;
    fp_config config = {public_pem, strlen(public_pem), heartbeat_interval, poll_interval, limits, key_path != NULL};
    size_t arena_size = fp_arena_required(&limits);
    void *arena = NULL;  /* a device: a static buffer */
    if (posix_memalign(&arena, 8, arena_size) != 0) arena = NULL;
    fp_session *s = arena ? fp_session_init(arena, arena_size, &config) : NULL;
    if (s == NULL) return usage(arena ? fp_init_error() : "out of memory for the arena");

    char base[300];
    snprintf(base, sizeof base, "%s://%s", ca_file ? "https" : "http", superlink);
    fp_transport *transport = fp_transport_open(base, ca_file, key, public_pem);
    if (transport == NULL) return usage("cannot start libcurl");
    struct sigaction action = {0};
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    fprintf(stderr, "fedproto-node-c: Fleet node for %s, arena %zu bytes (model buffer %zu), handler %s\n", base,
            arena_size, limits.model_bytes, handler_name);

    bool handler_active = false, stop_sent = false;
    unsigned handled = 0;
    int exit_code = 0;
    char why[256];
    for (;;) {
        double now = fp_wall_clock();
        if (stop_signals && !stop_sent) {
            fp_stop(s, now);
            stop_sent = true;
        }
        if (handler_active && fp_current_call(s) == NULL) {  /* its message was dropped */
            fp_handler_failed(s, "dropped", now);
            handler_active = false;
        }
        fp_step step = fp_next_step(s, now);
        if (step.kind == FP_STEP_SEND) {
            if (fp_transport_call(transport, s, &step, &stop_signals) != 0) {
                fp_abandon(s);
                if (stop_signals) break;  /* leaving, and the SuperLink is gone: nothing more to do */
                fprintf(stderr, "fedproto-node-c: the SuperLink at %s is unreachable; giving up\n", base);
                exit_code = EXIT_UNREACHABLE;
                break;
            }
            const fp_stats *stats = fp_session_stats(s);
            if (stats->handled != handled) {
                handled = stats->handled;
                fprintf(stderr, "fedproto-node-c: answered %s (%llu bytes in, %llu out)%s%s\n", stats->message_type,
                        (unsigned long long)stats->received_bytes, (unsigned long long)stats->sent_bytes,
                        stats->error[0] ? ": error " : "", stats->error);
            }
        } else if (step.kind == FP_STEP_HANDLE) {
            const fp_call *call = fp_current_call(s);
            int rc = use_linreg ? linreg_start(&linreg, s, call, why, sizeof why)
                                : arithmetic_start(&arithmetic, s, call, now, why, sizeof why);
            if (rc != 0) fp_handler_failed(s, why, fp_wall_clock());
            handler_active = rc == 0;
        } else if (step.kind == FP_STEP_WAIT) {
            if (!handler_active) {
                sleep_until(step.until);
                continue;
            }
            fp_result result;
            const fp_call *call = fp_current_call(s);
            int rc = use_linreg ? linreg_step(&linreg, call, &result, why, sizeof why)
                                : arithmetic_step(&arithmetic, call, now, &result, why, sizeof why);
            if (rc == 1 && arithmetic.fit_seconds > 0) sleep_until(now + 0.05);
            if (rc == 0) fp_handler_done(s, &result, fp_wall_clock());
            if (rc < 0) fp_handler_failed(s, why, fp_wall_clock());
            handler_active = rc == 1;
        } else if (step.kind == FP_STEP_FINISHED) {
            exit_code = strcmp(step.outcome, "refused") == 0 ? EXIT_REFUSED : 0;
            fprintf(stderr, "fedproto-node-c: finished (%s); arena peak %zu bytes\n", step.outcome, fp_arena_peak(s));
            break;
        } else {
            fprintf(stderr, "fedproto-node-c: protocol error: %s\n", fp_error_text(s));
            exit_code = EXIT_PROTOCOL_ERROR;
            break;
        }
    }
    fp_transport_close(transport);
    fp_key_free(key);
    free(arena);
    return exit_code;
}
