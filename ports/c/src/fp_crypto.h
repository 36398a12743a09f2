/* The crypto the node needs, behind one small interface: SHA-256 (object ids), ECDSA P-256/P-384
 * signing with SHA-256 (request signatures, DER), PEM keys, base64. fp_crypto_mbedtls.c implements
 * it with mbedTLS 2.28; an mbedTLS 3.x or hardware adapter implements the same functions. */
#ifndef FP_CRYPTO_H
#define FP_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

/* Opaque room for the library's SHA-256 context (checked at compile time by the adapter). */
typedef struct { union { uint64_t align; unsigned char bytes[256]; } state; } fp_sha256;
void fp_sha256_start(fp_sha256 *h);
void fp_sha256_update(fp_sha256 *h, const void *bytes, size_t length);
void fp_sha256_finish(fp_sha256 *h, uint8_t digest[32]);

typedef struct fp_key fp_key;  /* the adapter's private key object */
typedef enum { FP_CURVE_P256, FP_CURVE_P384 } fp_curve;
/* Each returns 0 on success, -1 with a short reason in `why` (at least 128 bytes). */
fp_key *fp_key_generate(fp_curve curve, char *why);
fp_key *fp_key_from_pem(const char *pem, size_t length, char *why);  /* PEM, SEC1 or PKCS#8 */
int fp_key_private_pem(fp_key *key, char *out, size_t capacity);     /* to store across reboots */
int fp_key_public_pem(fp_key *key, char *out, size_t capacity);      /* SubjectPublicKeyInfo */
/* ECDSA over SHA-256(message), DER SEQUENCE{r, s}; returns the length or -1. */
int fp_key_sign(fp_key *key, const void *message, size_t length, uint8_t *der, size_t capacity);
void fp_key_free(fp_key *key);
/* Standard alphabet with padding; returns the length written (NUL-terminated) or -1. */
int fp_base64(const uint8_t *bytes, size_t length, char *out, size_t capacity);

#endif
