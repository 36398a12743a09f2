#include <math.h>
#include <stdio.h>
#include <string.h>

#include "handlers.h"

/* ---- arithmetic (the interop tests' expected model is computed from this) ---- */

int arithmetic_start(arithmetic_handler *h, const fp_session *s, const fp_call *call, double now, char *why, size_t cap) {
    h->method = call->method;
    h->next_array = 0;
    h->step = 0;
    h->started = now;
    h->loss = 0;
    if (call->method == FP_CALL_FIT) {
        if (fp_config_int(s, "server-round", &h->server_round) != 0) {
            snprintf(why, cap, "fit raised KeyError: 'server-round'");
            return -1;
        }
        if (h->server_round == h->fail_fit_round) {
            snprintf(why, cap, "fit raised RuntimeError: client %d refuses round %lld", h->client,
                     (long long)h->server_round);
            return -1;
        }
    }
    return 0;
}

/* One tensor per step; with fit_seconds, fit also waits between steps (a long local training). */
int arithmetic_step(arithmetic_handler *h, const fp_call *call, double now, fp_result *result, char *why, size_t cap) {
    (void)why, (void)cap;
    if (h->method == FP_CALL_FIT && now - h->started < h->fit_seconds * (h->next_array + 1.0) / (call->array_count + 1.0))
        return 1;
    if (h->next_array < call->array_count) {
        const fp_array *a = &call->arrays[h->next_array++];
        double scale = (h->client + 1) * (double)h->server_round / 16;
        for (size_t i = 0; i < a->count; i++) {
            double delta = ((double)(i % 7) - 3) * scale;
            if (h->method == FP_CALL_FIT) {
                if (a->dtype == FP_DTYPE_F4) ((float *)a->data)[i] += (float)delta;
                else ((double *)a->data)[i] += delta;
            } else {
                h->loss += fabs(a->dtype == FP_DTYPE_F4 ? (double)((float *)a->data)[i] : ((double *)a->data)[i]);
            }
        }
        return 1;
    }
    if (h->method == FP_CALL_FIT && now - h->started < h->fit_seconds) return 1;
    memset(result, 0, sizeof *result);
    h->metrics[0] = (fp_metric){"client", 0, h->client, 0};
    h->metrics[1] = (fp_metric){"round", 0, h->server_round, 0};
    result->metrics = h->metrics;
    if (h->method == FP_CALL_FIT) {
        result->num_examples = 10u * (unsigned)((h->client + 1) * (h->client + 1));
        result->metric_count = 2;
    } else {
        result->num_examples = 5u + (unsigned)h->client;
        result->loss = h->loss + h->client;
        result->metric_count = 1;
    }
    return 0;
}

/* ---- linear regression ---- */

static uint32_t next_random(uint32_t *state) {  /* xorshift32: the same data on every platform */
    uint32_t x = *state;
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    return *state = x;
}

static float uniform(uint32_t *state) { return (float)(next_random(state) >> 8) / 16777216.0f * 2.0f - 1.0f; }

static size_t model_size(const fp_call *call) {
    size_t n = 0;
    for (unsigned a = 0; a < call->array_count; a++) n += call->arrays[a].count;
    return n;
}

static float *element(const fp_call *call, size_t index, double **wide) {
    for (unsigned a = 0; a < call->array_count; a++) {
        if (index < call->arrays[a].count) {
            *wide = call->arrays[a].dtype == FP_DTYPE_F8 ? (double *)call->arrays[a].data + index : NULL;
            return call->arrays[a].dtype == FP_DTYPE_F4 ? (float *)call->arrays[a].data + index : NULL;
        }
        index -= call->arrays[a].count;
    }
    return NULL;
}

static float get(const fp_call *call, size_t i) {
    double *wide;
    float *narrow = element(call, i, &wide);
    return narrow ? *narrow : (float)*wide;
}

static void add(const fp_call *call, size_t i, float delta) {
    double *wide;
    float *narrow = element(call, i, &wide);
    if (narrow) *narrow += delta;
    else *wide += delta;
}

/* The true model: w*_i = sin(i + 1), b* = 0.5. */
static float sample(uint32_t *rng, size_t features, float *x) {
    float y = 0.5f;
    for (size_t i = 0; i < features; i++) {
        x[i] = uniform(rng);
        y += (float)sin((double)i + 1.0) * x[i];
    }
    return y + 0.01f * uniform(rng);
}

int linreg_start(linreg_handler *h, const fp_session *s, const fp_call *call, char *why, size_t cap) {
    size_t n = model_size(call);
    if (n < 1 || n > 256) {
        snprintf(why, cap, "%s raised ValueError: linear regression needs 1 to 256 parameters, got %zu",
                 call->method == FP_CALL_FIT ? "fit" : "evaluate", n);
        return -1;
    }
    int64_t round = 0;
    fp_config_int(s, "server-round", &round);
    h->method = call->method;
    h->steps_done = 0;
    h->batch = 32;
    h->batches_per_epoch = 8;
    h->learning_rate = 0.1;
    h->steps_total = call->method == FP_CALL_FIT ? (h->epochs ? h->epochs : 1) * h->batches_per_epoch : 4;
    h->loss_sum = 0;
    h->seen = 0;
    /* Training data differs per client and round; evaluation data is held out per client. */
    h->rng = 2463534242u ^ (uint32_t)(h->client * 7919 + (call->method == FP_CALL_FIT ? round * 104729 : 999983));
    if (h->rng == 0) h->rng = 1;
    return 0;
}

int linreg_step(linreg_handler *h, const fp_call *call, fp_result *result, char *why, size_t cap) {
    (void)why, (void)cap;
    size_t n = model_size(call), features = n - 1;
    float x[256], gradient[256] = {0};
    for (unsigned k = 0; k < h->batch; k++) {
        float y = sample(&h->rng, features, x);
        float prediction = get(call, features);
        for (size_t i = 0; i < features; i++) prediction += get(call, i) * x[i];
        float error = prediction - y;
        h->loss_sum += (double)error * error;
        for (size_t i = 0; i < features; i++) gradient[i] += error * x[i];
        gradient[features] += error;
    }
    h->seen += h->batch;
    if (h->method == FP_CALL_FIT)
        for (size_t i = 0; i < n; i++) add(call, i, -(float)h->learning_rate * 2.0f * gradient[i] / (float)h->batch);
    if (++h->steps_done < h->steps_total) return 1;
    memset(result, 0, sizeof *result);
    result->num_examples = h->seen;
    result->loss = h->loss_sum / (double)h->seen;
    h->metrics[0] = (fp_metric){"mse", 1, 0, result->loss};
    result->metrics = h->metrics;
    result->metric_count = 1;
    return 0;
}
