/* The three signing headers of client/fleet.py NodeKey.http_headers, in C. The SuperLink accepts a
 * timestamp from 5 s ahead to 305 s behind its clock: a device needs SNTP before its first call. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fp_sign.h"

int fp_sign_headers(fp_key *key, const char *public_key_pem, double now, fp_signed_headers *out) {
    time_t seconds = (time_t)floor(now);
    long micros = (long)((now - floor(now)) * 1e6);
    struct tm utc;
    if (micros > 999999) micros = 999999;
    if (gmtime_r(&seconds, &utc) == NULL) return -1;
    /* datetime.now(timezone.utc).isoformat(): microseconds and the +00:00 offset */
    size_t n = strftime(out->timestamp, sizeof out->timestamp, "%Y-%m-%dT%H:%M:%S", &utc);
    snprintf(out->timestamp + n, sizeof out->timestamp - n, ".%06ld+00:00", micros);
    uint8_t der[160];
    int length = fp_key_sign(key, out->timestamp, strlen(out->timestamp), der, sizeof der);
    if (length < 0) return -1;
    if (fp_base64(der, (size_t)length, out->signature, sizeof out->signature) < 0) return -1;
    if (fp_base64((const uint8_t *)public_key_pem, strlen(public_key_pem), out->public_key, sizeof out->public_key) < 0)
        return -1;
    return 0;
}
