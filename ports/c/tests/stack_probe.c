/* Stack high-water of the core: runs fuzz_core.c's session on one input (a whole message, from
 * RegisterNode to UnregisterNode) on a thread whose stack is painted first, then finds the deepest
 * byte written, minus what a thread doing nothing uses (glibc keeps its thread block and TLS at the
 * top of a caller-supplied stack). The figure includes that harness's own frame (about 0.7 KiB). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define STACK_BYTES (256 * 1024)
static unsigned char stack[STACK_BYTES] __attribute__((aligned(64)));
static unsigned char input[1 << 20];
static size_t input_size;

static int baseline;

static void *run(void *unused) {
    (void)unused;
    if (!baseline) LLVMFuzzerTestOneInput(input, input_size);
    return NULL;
}

/* Bytes of the painted stack a thread running run() wrote. */
static size_t high_water(void) {
    memset(stack, 0xa5, sizeof stack);
    pthread_attr_t attributes;
    pthread_t thread;
    pthread_attr_init(&attributes);
    pthread_attr_setstack(&attributes, stack, sizeof stack);
    if (pthread_create(&thread, &attributes, run, NULL) != 0) exit(3);
    pthread_join(thread, NULL);
    size_t untouched = 0;
    while (untouched < sizeof stack && stack[untouched] == 0xa5) untouched++;
    return sizeof stack - untouched;
}

int main(int argc, char **argv) {
    FILE *file = argc == 2 ? fopen(argv[1], "rb") : NULL;
    if (file == NULL) return 2;
    input_size = fread(input, 1, sizeof input, file);
    fclose(file);
    baseline = 1;
    size_t idle = high_water();
    baseline = 0;
    printf("stack high-water %zu bytes\n", high_water() - idle);
    return 0;
}
