/* Request signing (docs/PROTOCOL.md §14): what every Fleet request carries, as HTTP headers. */
#ifndef FP_SIGN_H
#define FP_SIGN_H

#include "fp_crypto.h"

typedef struct {
    char public_key[1024];   /* flwr-public-key: base64 of the PEM */
    char timestamp[40];      /* flwr-timestamp: 2026-11-26T00:39:24.871202+00:00 */
    char signature[160];     /* flwr-signature: base64 of the DER ECDSA-SHA256 signature */
} fp_signed_headers;

/* Sign `now` (seconds since the epoch, UTC) for one attempt; 0, or -1 if signing failed. */
int fp_sign_headers(fp_key *key, const char *public_key_pem, double now, fp_signed_headers *out);

#endif
