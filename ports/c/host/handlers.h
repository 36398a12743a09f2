/* Example handlers that train in steps, so a single-threaded device can send heartbeats between
 * steps: start(), then step() until it returns 0 (done: the result is filled) or -1 (failed). */
#ifndef FP_HANDLERS_H
#define FP_HANDLERS_H

#include "fedproto_node.h"

typedef struct {
    int client;             /* which synthetic data set / arithmetic pattern */
    int fail_fit_round;     /* arithmetic: fit raises in this round (0: never) */
    double fit_seconds;     /* arithmetic: fit takes this long, in steps (heartbeats flow meanwhile) */
    /* progress of one call */
    fp_method method;
    int64_t server_round;
    unsigned next_array;
    double started;
    unsigned step;
    fp_metric metrics[2];
    double loss;
} arithmetic_handler;

/* examples/superlink_app/superlink_app/arithmetic.py ArithmeticClient, in C: fit adds fit_delta
 * to every tensor; evaluate's loss is the sum of |parameters| plus the client index. */
int arithmetic_start(arithmetic_handler *h, const fp_session *s, const fp_call *call, double now, char *why, size_t cap);
int arithmetic_step(arithmetic_handler *h, const fp_call *call, double now, fp_result *result, char *why, size_t cap);

typedef struct {
    int client;
    unsigned epochs, batches_per_epoch, batch;
    double learning_rate;
    fp_method method;
    unsigned steps_done, steps_total;
    double loss_sum;
    uint64_t seen;
    uint32_t rng;
    fp_metric metrics[1];
} linreg_handler;

/* Linear regression by minibatch SGD in float32 on synthetic data: the model's elements, all
 * arrays end to end, are the weights, the last one the bias; y = <w*, x> + b* + noise, where w*,
 * b* are the same for every client and x differs per client. */
int linreg_start(linreg_handler *h, const fp_session *s, const fp_call *call, char *why, size_t cap);
int linreg_step(linreg_handler *h, const fp_call *call, fp_result *result, char *why, size_t cap);

#endif
