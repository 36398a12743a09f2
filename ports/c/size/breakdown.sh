#!/bin/sh
# Code size for a Cortex-M4 (arm-none-eabi-gcc -Os, newlib-nano, --gc-sections) of a firmware that
# links the port's core, nanopb's runtime and the mbedTLS adapter (size/probe.c calls each), split
# by origin from the link map. Needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, and the sources of
# nanopb 0.4.7 and mbedTLS 2.28.3:  size/breakdown.sh NANOPB_DIR MBEDTLS_DIR   (run in ports/c)
set -eu
NANOPB=$1 MBEDTLS=$2 OUT=build/size
rm -rf $OUT && mkdir -p $OUT/o $OUT/mbedtls
CPU="-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16"
FLAGS="-std=c99 -Os $CPU -ffunction-sections -fdata-sections -Iinclude -Isrc -Ibuild/gen -I$NANOPB -I$MBEDTLS/include"
MBEDTLS_CONFIG="-DMBEDTLS_CONFIG_FILE=\"$PWD/size/mbedtls_config.h\""
for f in $MBEDTLS/library/*.c; do
  arm-none-eabi-gcc $FLAGS "$MBEDTLS_CONFIG" -c "$f" -o $OUT/mbedtls/$(basename "$f" .c).o
done
arm-none-eabi-ar rcs $OUT/libmbedcrypto.a $OUT/mbedtls/*.o
for f in src/fp_session.c src/fp_objects.c src/fp_reply.c src/fp_npy.c src/fp_wire.c src/fp_crypto_mbedtls.c \
         src/fp_sign.c build/gen/flwr/proto/*.pb.c $NANOPB/pb_common.c $NANOPB/pb_encode.c $NANOPB/pb_decode.c size/probe.c; do
  arm-none-eabi-gcc $FLAGS "$MBEDTLS_CONFIG" -DWITH_CRYPTO -c "$f" -o $OUT/o/$(basename "$f" .c).o
done
arm-none-eabi-gcc $CPU -specs=nosys.specs -specs=nano.specs -Wl,--gc-sections -Wl,-Map=$OUT/probe.map \
  -o $OUT/probe.elf $OUT/o/*.o $OUT/libmbedcrypto.a -lm 2>/dev/null
arm-none-eabi-size $OUT/probe.elf
python3 - $OUT/probe.map <<'PY'
import collections, re, sys
memory_map = open(sys.argv[1]).read().split("Linker script and memory map")[1]
sizes, pending = collections.Counter(), False
for line in memory_map.splitlines():
    whole = re.match(r"^ (\.text|\.rodata)\S*\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+(\S+)", line)
    if whole is None and re.match(r"^ (\.text|\.rodata)\S*\s*$", line):
        pending = True
        continue
    part = re.match(r"^\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+(\S+)", line) if pending and whole is None else None
    pending = False
    found = whole.groups()[1:] if whole else part.groups() if part else None
    if found is None:
        continue
    size, origin = int(found[0], 16), found[1]
    groups = [("libmbedcrypto", "mbedTLS"), ("/pb_common.o", "nanopb runtime"), ("/pb_encode.o", "nanopb runtime"),
              ("/pb_decode.o", "nanopb runtime"), (".pb.o", "generated descriptors"),
              ("fp_crypto_mbedtls.o", "crypto adapter + signing"), ("fp_sign.o", "crypto adapter + signing"),
              ("/fp_", "port core"), ("probe.o", "probe")]
    sizes[next((name for key, name in groups if key in origin), "newlib-nano, libgcc")] += size
for name, size in sizes.most_common():
    print(f"{name:28s} {size:7d} bytes")
PY
