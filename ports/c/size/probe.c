/* Link probe: what a firmware using the core, nanopb and the mbedTLS adapter pulls in. */
#include <string.h>
#include "fedproto_node.h"
#include "fp_crypto.h"
#include "fp_sign.h"
int mbedtls_hardware_poll(void *data, unsigned char *output, size_t len, size_t *olen);
int mbedtls_hardware_poll(void *data, unsigned char *output, size_t len, size_t *olen) {
    (void)data; memset(output, 0x5a, len); *olen = len; return 0;  /* a device: its TRNG */
}
static unsigned char arena[65536] __attribute__((aligned(8)));
int main(void) {
    fp_config config = {"pem", 3, 30.0, 3.0, {16384, 4, 32, 4096}, 0};
    fp_session *s = fp_session_init(arena, sizeof arena, &config);
    unsigned char buffer[512];
    fp_step step = fp_next_step(s, 0);
    (void)step;
    fp_request_read(s, buffer, sizeof buffer);
    fp_response_begin(s, 200);
    fp_response_feed(s, buffer, 10);
    fp_response_end(s, 1);
#ifdef WITH_CRYPTO
    char why[128], pem[1024];
    fp_key *key = fp_key_from_pem((const char *)buffer, 100, why);
    fp_key_public_pem(key, pem, sizeof pem);
    fp_signed_headers headers;
    fp_sign_headers(key, pem, 1.0, &headers);
#endif
    return (int)fp_node_id(s);
}
