/* fp_transport on libcurl (POSIX hosts). One deadline per call: a floor plus the request's bytes at
 * a minimum rate, and a stall limit for the answer; a body is whole (curl checks Content-Length and
 * chunked framing) or the attempt is a failure and is retried. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "fp_internal.h"
#include "fp_sign.h"
#include "transport.h"

#define ATTEMPTS 8
#define FIRST_DELAY 0.5
#define DELAY_CAP 30.0
#define CALL_FLOOR 60.0           /* seconds any call may take before its bytes are counted */
#define MIN_TRANSFER_RATE 8192.0  /* bytes/s */

struct fp_transport {
    CURL *curl;
    char base[256];
    char ca_file[512];
    fp_key *key;
    const char *public_key_pem;
};

typedef struct {
    fp_session *session;
    CURL *curl;
    long status;
    bool begun;
    char refusal[200];
    size_t refusal_length;
} call_state;

double fp_wall_clock(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static void sleep_seconds(double seconds, volatile sig_atomic_t *stop, sig_atomic_t stop_level) {
    while (seconds > 0 && *stop < stop_level) {
        double slice = seconds < 0.1 ? seconds : 0.1;
        struct timespec pause = {(time_t)slice, (long)((slice - (double)(time_t)slice) * 1e9)};
        nanosleep(&pause, NULL);
        seconds -= slice;
    }
}

fp_transport *fp_transport_open(const char *base, const char *ca_file, fp_key *key, const char *public_key_pem) {
    fp_transport *t = calloc(1, sizeof *t);
    if (t == NULL || curl_global_init(CURL_GLOBAL_DEFAULT) != 0 || (t->curl = curl_easy_init()) == NULL) {
        free(t);
        return NULL;
    }
    snprintf(t->base, sizeof t->base, "%s", base);
    snprintf(t->ca_file, sizeof t->ca_file, "%s", ca_file ? ca_file : "");
    t->key = key;
    t->public_key_pem = public_key_pem;
    return t;
}

void fp_transport_close(fp_transport *t) {
    if (t == NULL) return;
    curl_easy_cleanup(t->curl);
    curl_global_cleanup();
    free(t);
}

static size_t read_body(char *buffer, size_t size, size_t count, void *user) {
    return fp_request_read(((call_state *)user)->session, (uint8_t *)buffer, size * count);
}

static size_t write_body(char *buffer, size_t size, size_t count, void *user) {
    call_state *call = user;
    size_t length = size * count;
    if (!call->begun) {
        curl_easy_getinfo(call->curl, CURLINFO_RESPONSE_CODE, &call->status);
        if (call->status == 200) {
            fp_response_begin(call->session, 200);
            call->begun = true;
        }
    }
    if (call->begun) {
        fp_response_feed(call->session, (const uint8_t *)buffer, length);
    } else {  /* a refusal's text, for the log: the first bytes only */
        size_t room = sizeof call->refusal - 1 - call->refusal_length;
        size_t take = length < room ? length : room;
        memcpy(call->refusal + call->refusal_length, buffer, take);
        call->refusal_length += take;
    }
    return length;
}

static int progress(void *user, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
    (void)a, (void)b, (void)c, (void)d;
    return *(volatile sig_atomic_t *)user >= 2;  /* a second signal gives the call up */
}

int fp_transport_call(fp_transport *t, fp_session *s, const fp_step *step, volatile sig_atomic_t *stop) {
    char url[384];
    snprintf(url, sizeof url, "%s%s", t->base, step->path);
    double delay = FIRST_DELAY;
    for (int attempt = 1; attempt <= ATTEMPTS; attempt++) {
        fp_signed_headers signed_headers;
        if (fp_sign_headers(t->key, t->public_key_pem, fp_wall_clock(), &signed_headers) != 0) {
            fprintf(stderr, "fedproto-node-c: signing the request failed\n");
            return -1;
        }
        char line[1100];
        struct curl_slist *headers = NULL;
        headers = curl_slist_append(headers, "Content-Type: application/protobuf");
        headers = curl_slist_append(headers, "Accept: application/protobuf");
        headers = curl_slist_append(headers, "Expect:");
        snprintf(line, sizeof line, "flwr-public-key: %s", signed_headers.public_key);
        headers = curl_slist_append(headers, line);
        snprintf(line, sizeof line, "flwr-timestamp: %s", signed_headers.timestamp);
        headers = curl_slist_append(headers, line);
        snprintf(line, sizeof line, "flwr-signature: %s", signed_headers.signature);
        headers = curl_slist_append(headers, line);

        call_state call = {s, t->curl, 0, false, {0}, 0};
        fp_request_rewind(s);
        CURL *curl = t->curl;
        curl_easy_reset(curl);
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_POST, 1L);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_READFUNCTION, read_body);
        curl_easy_setopt(curl, CURLOPT_READDATA, &call);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)step->body_length);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &call);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)((CALL_FLOOR + (double)step->body_length / MIN_TRANSFER_RATE) * 1000));
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);   /* an answer that stalls 30 s is no answer */
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 30L);
        curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, progress);
        curl_easy_setopt(curl, CURLOPT_XFERINFODATA, (void *)stop);
        if (t->ca_file[0]) curl_easy_setopt(curl, CURLOPT_CAINFO, t->ca_file);
        CURLcode rc = curl_easy_perform(curl);
        curl_slist_free_all(headers);
        if (rc == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &call.status);
        if (rc == CURLE_OK && call.status == 200) {
            if (!call.begun) fp_response_begin(s, 200);  /* an empty body */
            fp_response_end(s, fp_wall_clock());
            return 0;
        }
        if (rc == CURLE_OK && !fp_status_is_transient((int)call.status)) {
            char shown[220];
            fp_bound_text(shown, sizeof shown, (const uint8_t *)call.refusal, call.refusal_length, 160);
            fprintf(stderr, "fedproto-node-c: %s refused: HTTP %ld %s\n", step->rpc, call.status, shown);
            fp_response_begin(s, (int)call.status);
            fp_response_end(s, fp_wall_clock());
            return 0;
        }
        if (rc == CURLE_ABORTED_BY_CALLBACK) return -1;
        fprintf(stderr, "fedproto-node-c: %s attempt %d failed (%s); retrying in %.1f s\n", step->rpc, attempt,
                rc == CURLE_OK ? "server error" : curl_easy_strerror(rc), delay);
        if (attempt == ATTEMPTS) break;
        sleep_seconds(delay, stop, 2);
        if (*stop >= 2) return -1;
        delay = delay * 2 < DELAY_CAP ? delay * 2 : DELAY_CAP;
    }
    return -1;
}
