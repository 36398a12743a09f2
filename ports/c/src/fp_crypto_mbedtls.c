/* fp_crypto.h on mbedTLS 2.28 (Debian libmbedtls-dev) and 3.x (ESP-IDF, Zephyr): 3.x dropped the
 * *_ret suffixes, and mbedtls_pk_parse_key / mbedtls_pk_sign take an RNG (and a signature
 * capacity); those few calls differ, the rest is the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/base64.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <mbedtls/version.h>

#include "fp_crypto.h"

#if MBEDTLS_VERSION_MAJOR >= 3
#define mbedtls_sha256_starts_ret mbedtls_sha256_starts
#define mbedtls_sha256_update_ret mbedtls_sha256_update
#define mbedtls_sha256_finish_ret mbedtls_sha256_finish
#define mbedtls_sha256_ret mbedtls_sha256
#endif

typedef char fp_sha256_fits[sizeof(mbedtls_sha256_context) <= sizeof(fp_sha256) ? 1 : -1];

void fp_sha256_start(fp_sha256 *h) {
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)(void *)h->state.bytes;
    mbedtls_sha256_init(c);
    mbedtls_sha256_starts_ret(c, 0);
}

void fp_sha256_update(fp_sha256 *h, const void *bytes, size_t length) {
    mbedtls_sha256_update_ret((mbedtls_sha256_context *)(void *)h->state.bytes, bytes, length);
}

void fp_sha256_finish(fp_sha256 *h, uint8_t digest[32]) {
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)(void *)h->state.bytes;
    mbedtls_sha256_finish_ret(c, digest);
    mbedtls_sha256_free(c);
}

struct fp_key {
    mbedtls_pk_context pk;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
};

static void reason(char *why, const char *what, int code) {
    char text[100];
    mbedtls_strerror(code, text, sizeof text);
    snprintf(why, 128, "%s: %s", what, text);
}

static fp_key *key_new(char *why) {
    static const char personal[] = "fedproto-node-c";
    fp_key *key = calloc(1, sizeof *key);  /* host side: the core never sees the key */
    if (key == NULL) {
        snprintf(why, 128, "out of memory");
        return NULL;
    }
    mbedtls_pk_init(&key->pk);
    mbedtls_entropy_init(&key->entropy);
    mbedtls_ctr_drbg_init(&key->drbg);
    int rc = mbedtls_ctr_drbg_seed(&key->drbg, mbedtls_entropy_func, &key->entropy,
                                   (const unsigned char *)personal, sizeof personal - 1);
    if (rc != 0) {
        reason(why, "seeding the RNG", rc);
        fp_key_free(key);
        return NULL;
    }
    return key;
}

fp_key *fp_key_generate(fp_curve curve, char *why) {
    fp_key *key = key_new(why);
    if (key == NULL) return NULL;
    mbedtls_ecp_group_id group = curve == FP_CURVE_P384 ? MBEDTLS_ECP_DP_SECP384R1 : MBEDTLS_ECP_DP_SECP256R1;
    int rc = mbedtls_pk_setup(&key->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (rc == 0) rc = mbedtls_ecp_gen_key(group, mbedtls_pk_ec(key->pk), mbedtls_ctr_drbg_random, &key->drbg);
    if (rc != 0) {
        reason(why, "generating the key", rc);
        fp_key_free(key);
        return NULL;
    }
    return key;
}

fp_key *fp_key_from_pem(const char *pem, size_t length, char *why) {
    fp_key *key = key_new(why);
    if (key == NULL) return NULL;
    /* mbedtls_pk_parse_key wants the PEM with its terminating NUL counted. */
    unsigned char *copy = malloc(length + 1);
    if (copy == NULL) {
        snprintf(why, 128, "out of memory");
        fp_key_free(key);
        return NULL;
    }
    memcpy(copy, pem, length);
    copy[length] = 0;
#if MBEDTLS_VERSION_MAJOR >= 3
    int rc = mbedtls_pk_parse_key(&key->pk, copy, length + 1, NULL, 0, mbedtls_ctr_drbg_random, &key->drbg);
#else
    int rc = mbedtls_pk_parse_key(&key->pk, copy, length + 1, NULL, 0);
#endif
    free(copy);
    if (rc == 0 && mbedtls_pk_get_type(&key->pk) != MBEDTLS_PK_ECKEY) rc = MBEDTLS_ERR_PK_TYPE_MISMATCH;
    if (rc != 0) {
        reason(why, "reading the EC private key", rc);
        fp_key_free(key);
        return NULL;
    }
    return key;
}

int fp_key_private_pem(fp_key *key, char *out, size_t capacity) {
    return mbedtls_pk_write_key_pem(&key->pk, (unsigned char *)out, capacity) == 0 ? 0 : -1;
}

int fp_key_public_pem(fp_key *key, char *out, size_t capacity) {
    return mbedtls_pk_write_pubkey_pem(&key->pk, (unsigned char *)out, capacity) == 0 ? 0 : -1;
}

int fp_key_sign(fp_key *key, const void *message, size_t length, uint8_t *der, size_t capacity) {
    uint8_t digest[32];
    if (mbedtls_sha256_ret(message, length, digest, 0) != 0) return -1;
    if (capacity < MBEDTLS_ECDSA_MAX_LEN) return -1;
    size_t written = 0;
#if MBEDTLS_VERSION_MAJOR >= 3
    int rc = mbedtls_pk_sign(&key->pk, MBEDTLS_MD_SHA256, digest, sizeof digest, der, capacity, &written,
                             mbedtls_ctr_drbg_random, &key->drbg);
#else
    int rc = mbedtls_pk_sign(&key->pk, MBEDTLS_MD_SHA256, digest, sizeof digest, der, &written,
                             mbedtls_ctr_drbg_random, &key->drbg);
#endif
    return rc == 0 ? (int)written : -1;
}

void fp_key_free(fp_key *key) {
    if (key == NULL) return;
    mbedtls_pk_free(&key->pk);
    mbedtls_ctr_drbg_free(&key->drbg);
    mbedtls_entropy_free(&key->entropy);
    free(key);
}

int fp_base64(const uint8_t *bytes, size_t length, char *out, size_t capacity) {
    size_t written = 0;
    if (mbedtls_base64_encode((unsigned char *)out, capacity, &written, bytes, length) != 0) return -1;
    return (int)written;
}
