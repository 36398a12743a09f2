/* The node's transport: one signed HTTP/1.1 POST per Fleet request. This is the interface a device
 * implements (lwIP + mbedTLS, ESP-IDF's esp_http_client, Zephyr's http_client): docs/ports-c.md. */
#ifndef FP_TRANSPORT_H
#define FP_TRANSPORT_H

#include <signal.h>

#include "fedproto_node.h"
#include "fp_crypto.h"

typedef struct fp_transport fp_transport;

/* base: "http://HOST:PORT" or "https://HOST:PORT"; ca_file: PEM roots for https (NULL: none). */
fp_transport *fp_transport_open(const char *base, const char *ca_file, fp_key *key, const char *public_key_pem);
void fp_transport_close(fp_transport *t);

/* Send the step's request and feed the answer to the session (a refusal included). Transient
 * failures are retried here, 0.5 s doubling to 30 s, 8 attempts. Returns 0 when the session got an
 * answer, -1 when the call was given up (unreachable, or `stop` reached 2): the caller abandons. */
int fp_transport_call(fp_transport *t, fp_session *s, const fp_step *step, volatile sig_atomic_t *stop);

double fp_wall_clock(void);

#endif
