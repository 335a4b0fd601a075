/* The C ABI from C, on the mock backend: what a C framework does, and every bad input
 * the ABI promises to survive. Built and run by capi/tests/c_program.rs. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gpuhal.h"

static int failures = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            const char *why = gpuhal_last_error_message();                           \
            fprintf(stderr, "%s:%d: CHECK(%s) failed (last error: %s)\n", __FILE__,  \
                    __LINE__, #cond, why ? why : "none");                            \
            failures++;                                                              \
        }                                                                            \
    } while (0)

#define OK(call) CHECK((call) == GPUHAL_STATUS_OK)

/* `call` fails with `status`, and the message mentions `needle`. */
#define FAILS(call, status, needle)                                                  \
    do {                                                                             \
        GpuhalStatus got_ = (call);                                                  \
        const char *msg_ = gpuhal_last_error_message();                              \
        if (got_ != (status) || msg_ == NULL || strstr(msg_, (needle)) == NULL) {    \
            fprintf(stderr, "%s:%d: %s returned %s (wanted %s), message: %s\n",      \
                    __FILE__, __LINE__, #call, gpuhal_status_name(got_),             \
                    gpuhal_status_name(status), msg_ ? msg_ : "none");               \
            failures++;                                                              \
        }                                                                            \
    } while (0)

static void memory(GpuhalDevice dev, GpuhalStream stream) {
    GpuhalMemoryStats before, after;
    OK(gpuhal_memory_stats(dev, &before));
    void *a = NULL;
    OK(gpuhal_malloc(dev, 1 << 20, GPUHAL_MEMORY_DEVICE, stream, &a));
    CHECK(a != NULL && ((uintptr_t)a % 256) == 0);
    unsigned char data[4096], back[4096];
    for (int i = 0; i < 4096; i++) data[i] = (unsigned char)(i * 7 + 1);
    OK(gpuhal_stream_write(stream, a, data, sizeof data));
    /* An interior pointer addresses bytes inside the allocation. */
    OK(gpuhal_stream_fill(stream, (char *)a + 100, 10, 0xEE));
    OK(gpuhal_stream_read(stream, a, back, sizeof back));
    CHECK(memcmp(back, data, 100) == 0 && back[100] == 0xEE && back[109] == 0xEE && back[110] == data[110]);
    OK(gpuhal_memory_stats(dev, &after));
    CHECK(after.live_bytes == before.live_bytes + (1 << 20));
    /* The report names the live 1 MiB allocation, as JSON the caller frees. */
    char *report = NULL;
    size_t report_len = 0;
    OK(gpuhal_memory_report_json(dev, &report, &report_len));
    CHECK(report != NULL && strlen(report) == report_len);
    CHECK(strstr(report, "\"allocations\"") != NULL && strstr(report, "\"state\":\"live\"") != NULL);
    CHECK(strstr(report, "\"size\":1048576") != NULL);
    gpuhal_string_free(report);
    FAILS(gpuhal_memory_report_json(dev, NULL, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "out is null");
    OK(gpuhal_free(dev, a));
    /* The same size again is a cache hit, with no native allocation. */
    void *b = NULL;
    OK(gpuhal_memory_stats(dev, &before));
    OK(gpuhal_malloc(dev, 1 << 20, GPUHAL_MEMORY_DEVICE, stream, &b));
    OK(gpuhal_memory_stats(dev, &after));
    CHECK(after.cache_hits == before.cache_hits + 1 && after.native_allocations == before.native_allocations);
    OK(gpuhal_free(dev, b));
    /* Zero bytes: NULL, and freeing NULL is a no-op. */
    void *z = (void *)1;
    OK(gpuhal_malloc(dev, 0, GPUHAL_MEMORY_DEVICE, stream, &z));
    CHECK(z == NULL);
    OK(gpuhal_free(dev, NULL));
    /* Every memory kind, with the managed policy readable and settable. */
    void *m = NULL, *p = NULL;
    OK(gpuhal_malloc(dev, 65536, GPUHAL_MEMORY_MANAGED, stream, &m));
    OK(gpuhal_malloc(dev, 65536, GPUHAL_MEMORY_HOST_PINNED, stream, &p));
    OK(gpuhal_free(dev, m));
    OK(gpuhal_free(dev, p));
    GpuhalManagedPolicy policy;
    OK(gpuhal_managed_policy(dev, &policy));
    policy.advice = GPUHAL_ADVICE_PREFER_DEVICE | GPUHAL_ADVICE_ACCESSED_BY_HOST;
    policy.prefetch_below = 1 << 20;
    OK(gpuhal_set_managed_policy(dev, &policy));
    GpuhalManagedPolicy read_back;
    OK(gpuhal_managed_policy(dev, &read_back));
    CHECK(read_back.advice == policy.advice && read_back.prefetch_below == (1 << 20));
    /* Limits and trim. */
    uint64_t released = 0;
    OK(gpuhal_trim(dev, &released));
    CHECK(released > 0);
    OK(gpuhal_set_memory_limit(dev, 1 << 20));
    void *big = NULL;
    FAILS(gpuhal_malloc(dev, 2 << 20, GPUHAL_MEMORY_DEVICE, stream, &big), GPUHAL_STATUS_OUT_OF_MEMORY, "out of memory");
    OK(gpuhal_set_memory_limit(dev, 0));
    OK(gpuhal_set_cache_limit(dev, UINT64_MAX));
    OK(gpuhal_set_reserve_slack(dev, 0.5));
}

static void events_and_fences(GpuhalDevice dev, GpuhalStream s1, GpuhalStream s2) {
    void *x = NULL, *y = NULL;
    OK(gpuhal_malloc(dev, 4096, GPUHAL_MEMORY_DEVICE, s1, &x));
    OK(gpuhal_malloc(dev, 4096, GPUHAL_MEMORY_DEVICE, s2, &y));
    GpuhalEvent start, end, ready;
    OK(gpuhal_event_acquire(dev, true, &start));
    OK(gpuhal_event_acquire(dev, true, &end));
    OK(gpuhal_event_acquire(dev, false, &ready));
    OK(gpuhal_event_record(start, s1));
    OK(gpuhal_stream_fill(s1, x, 4096, 0x42));
    OK(gpuhal_event_record(ready, s1));
    OK(gpuhal_event_record(end, s1));
    /* s2 reads x after s1's fill, ordered by the event; x is then declared used on s2. */
    OK(gpuhal_stream_wait_event(s2, ready));
    OK(gpuhal_stream_copy(s2, y, x, 4096));
    OK(gpuhal_record_use(dev, x, s2));
    unsigned char back[4096];
    OK(gpuhal_stream_read(s2, y, back, sizeof back));
    CHECK(back[0] == 0x42 && back[4095] == 0x42);
    OK(gpuhal_event_synchronize(end));
    bool complete = false;
    OK(gpuhal_event_query(end, &complete));
    CHECK(complete);
    double ms = -1;
    OK(gpuhal_event_elapsed(start, end, &ms));
    CHECK(ms >= 0);
    FAILS(gpuhal_event_elapsed(start, ready, &ms), GPUHAL_STATUS_INVALID_ARGUMENT, "timing");
    OK(gpuhal_event_release(start));
    OK(gpuhal_event_release(end));
    OK(gpuhal_event_release(ready));
    GpuhalEventStats events;
    OK(gpuhal_event_stats(dev, &events));
    CHECK(events.native_created >= 3 && events.idle >= 3);
    OK(gpuhal_free(dev, x));
    OK(gpuhal_free(dev, y));

    GpuhalFence fence;
    OK(gpuhal_fence_create(dev, 0, &fence));
    OK(gpuhal_stream_signal_fence(s1, fence, 5));
    OK(gpuhal_fence_wait(fence, 5, 5000000000ull));
    uint64_t value = 0;
    OK(gpuhal_fence_value(fence, &value));
    CHECK(value == 5);
    OK(gpuhal_fence_signal(fence, 7));
    FAILS(gpuhal_fence_signal(fence, 6), GPUHAL_STATUS_FENCE_REGRESSED, "6");
    FAILS(gpuhal_fence_wait(fence, 100, 1000000ull), GPUHAL_STATUS_TIMEOUT, "100");
    OK(gpuhal_stream_wait_fence(s2, fence, 7));
    OK(gpuhal_stream_synchronize(s2));
    OK(gpuhal_fence_destroy(fence));
}

static void graphs(GpuhalDevice dev, GpuhalStream stream) {
    GpuhalGraphPool pool;
    OK(gpuhal_graph_pool_create(dev, &pool));
    GpuhalGraph graphs[3];
    void *outputs[3];
    const uint64_t sizes[3] = {1 << 16, 1 << 18, 1 << 20};
    for (int i = 0; i < 3; i++) {
        OK(gpuhal_stream_begin_capture(stream, pool));
        OK(gpuhal_malloc(dev, sizes[i], GPUHAL_MEMORY_DEVICE, stream, &outputs[i]));
        OK(gpuhal_stream_fill(stream, outputs[i], sizes[i], (uint8_t)(i + 1)));
        OK(gpuhal_stream_end_capture(stream, &graphs[i]));
        uint64_t nodes = 0;
        OK(gpuhal_graph_node_count(graphs[i], &nodes));
        CHECK(nodes >= 1);
    }
    GpuhalMemoryStats pool_stats;
    OK(gpuhal_graph_pool_stats(pool, &pool_stats));
    CHECK(pool_stats.live_bytes == sizes[0] + sizes[1] + sizes[2]);
    for (int i = 0; i < 3; i++) {
        GpuhalGraphExec exec;
        OK(gpuhal_graph_instantiate(graphs[i], &exec));
        OK(gpuhal_graph_exec_launch(exec, stream));
        unsigned char first = 0;
        OK(gpuhal_stream_read(stream, outputs[i], &first, 1));
        CHECK(first == i + 1);
        /* A capture of another shape does not update it. */
        if (i > 0) FAILS(gpuhal_graph_exec_update(exec, graphs[0]), GPUHAL_STATUS_CAPTURE, "update");
        OK(gpuhal_graph_exec_destroy(exec));
    }
    for (int i = 0; i < 3; i++) {
        OK(gpuhal_graph_destroy(graphs[i]));
        OK(gpuhal_free(dev, outputs[i]));
    }
    /* A host read during capture invalidates it and leaves the stream usable. */
    OK(gpuhal_stream_begin_capture(stream, pool));
    void *tmp = NULL;
    OK(gpuhal_malloc(dev, 256, GPUHAL_MEMORY_DEVICE, stream, &tmp));
    unsigned char byte;
    FAILS(gpuhal_stream_read(stream, tmp, &byte, 1), GPUHAL_STATUS_CAPTURE, "capture");
    OK(gpuhal_free(dev, tmp));
    OK(gpuhal_stream_synchronize(stream));
    OK(gpuhal_graph_pool_destroy(pool));
}

static void host_import(GpuhalDevice dev, GpuhalStream stream) {
    static unsigned char file[1 << 16];
    for (size_t i = 0; i < sizeof file; i++) file[i] = (unsigned char)i;
    GpuhalImportResult result;
    /* The coherent mock reads pageable memory directly: no copy. */
    OK(gpuhal_import_host(dev, file, sizeof file, NULL, stream, &result));
    CHECK(result.path == GPUHAL_IMPORT_COHERENT && result.device_address != 0);
    OK(gpuhal_import_release(result.import));
    FAILS(gpuhal_import_release(result.import), GPUHAL_STATUS_INVALID_HANDLE, "import");
    GpuhalImportStats stats;
    OK(gpuhal_import_stats(dev, &stats));
    CHECK(stats.coherent == 1 && stats.copied == 0);
}

static void trace_recording(GpuhalDevice dev, GpuhalStream stream) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/gpuhal-capi-trace-%ld.jsonl", (long)getpid());
    OK(gpuhal_trace_start(dev, path));
    void *a = NULL, *b = NULL;
    OK(gpuhal_malloc(dev, 4096, GPUHAL_MEMORY_DEVICE, stream, &a));
    OK(gpuhal_malloc(dev, 8192, GPUHAL_MEMORY_DEVICE, stream, &b));
    OK(gpuhal_free(dev, a));
    OK(gpuhal_free(dev, b));
    uint64_t events = 0;
    OK(gpuhal_trace_stop(dev, &events));
    CHECK(events == 4);
    FAILS(gpuhal_trace_stop(dev, &events), GPUHAL_STATUS_INVALID_ARGUMENT, "not recording");
    /* The file is the trace format: a header line, then one line per event. */
    FILE *file = fopen(path, "r");
    CHECK(file != NULL);
    if (file) {
        int lines = 0;
        char line[512];
        while (fgets(line, sizeof line, file)) lines++;
        fclose(file);
        CHECK(lines == 5);
    }
    remove(path);
    FAILS(gpuhal_trace_start(dev, "/nonexistent-dir/trace.jsonl"), GPUHAL_STATUS_INVALID_ARGUMENT, "nonexistent-dir");
}

static void bad_input(GpuhalDevice dev, GpuhalDevice other, GpuhalStream stream) {
    GpuhalDevice nothing = {0};
    GpuhalStream no_stream = {0};
    void *p = NULL;
    GpuhalMemoryStats before, after;
    OK(gpuhal_memory_stats(dev, &before));
    FAILS(gpuhal_device_open("opencl", 0, &nothing), GPUHAL_STATUS_INVALID_ARGUMENT, "opencl");
    FAILS(gpuhal_device_open(NULL, 0, &nothing), GPUHAL_STATUS_INVALID_ARGUMENT, "backend is null");
    FAILS(gpuhal_device_open("mock", 0, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "out is null");
    FAILS(gpuhal_malloc(nothing, 64, GPUHAL_MEMORY_DEVICE, stream, &p), GPUHAL_STATUS_INVALID_HANDLE, "null");
    FAILS(gpuhal_malloc(dev, 64, GPUHAL_MEMORY_DEVICE, no_stream, &p), GPUHAL_STATUS_INVALID_HANDLE, "stream");
    FAILS(gpuhal_malloc(dev, 64, 99, stream, &p), GPUHAL_STATUS_INVALID_ARGUMENT, "memory kind 99");
    FAILS(gpuhal_malloc(dev, UINT64_MAX, GPUHAL_MEMORY_DEVICE, stream, &p), GPUHAL_STATUS_INVALID_ARGUMENT,
          "largest request");
    FAILS(gpuhal_malloc(dev, 64, GPUHAL_MEMORY_DEVICE, stream, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "out is null");
    /* A stream of another device. */
    GpuhalStream other_stream;
    OK(gpuhal_stream_create(other, &other_stream));
    FAILS(gpuhal_malloc(dev, 64, GPUHAL_MEMORY_DEVICE, other_stream, &p), GPUHAL_STATUS_FOREIGN, "belongs to device");
    /* A pointer gpuhal never gave out, inside one of its allocations, of another device,
     * freed twice. */
    int on_the_stack = 0;
    FAILS(gpuhal_free(dev, &on_the_stack), GPUHAL_STATUS_UNKNOWN_POINTER, "not handed out");
    void *mine = NULL, *theirs = NULL;
    OK(gpuhal_malloc(dev, 4096, GPUHAL_MEMORY_DEVICE, stream, &mine));
    OK(gpuhal_malloc(other, 4096, GPUHAL_MEMORY_DEVICE, other_stream, &theirs));
    FAILS(gpuhal_free(dev, (char *)mine + 16), GPUHAL_STATUS_UNKNOWN_POINTER, "16 bytes into");
    FAILS(gpuhal_free(dev, theirs), GPUHAL_STATUS_FOREIGN, "belongs to device handle");
    FAILS(gpuhal_stream_fill(stream, theirs, 16, 0), GPUHAL_STATUS_FOREIGN, "belongs to device handle");
    FAILS(gpuhal_stream_fill(stream, mine, 8192, 0), GPUHAL_STATUS_INVALID_ARGUMENT, "past the end");
    FAILS(gpuhal_stream_write(stream, mine, NULL, 16), GPUHAL_STATUS_INVALID_ARGUMENT, "host is null");
    OK(gpuhal_free(dev, mine));
    FAILS(gpuhal_free(dev, mine), GPUHAL_STATUS_UNKNOWN_POINTER, "double free");
    FAILS(gpuhal_record_use(dev, mine, stream), GPUHAL_STATUS_UNKNOWN_POINTER, "freed already");
    OK(gpuhal_free(other, theirs));
    OK(gpuhal_stream_destroy(other_stream));
    FAILS(gpuhal_stream_destroy(other_stream), GPUHAL_STATUS_INVALID_HANDLE, "not open");
    /* Closed handles, and a handle of another kind. */
    GpuhalDevice closed;
    OK(gpuhal_device_open("mock", 0, &closed));
    OK(gpuhal_device_close(closed));
    FAILS(gpuhal_memory_stats(closed, &after), GPUHAL_STATUS_INVALID_HANDLE, "not open");
    FAILS(gpuhal_device_close(closed), GPUHAL_STATUS_INVALID_HANDLE, "not open");
    GpuhalDevice stream_as_device = {stream.id};
    FAILS(gpuhal_memory_stats(stream_as_device, &after), GPUHAL_STATUS_INVALID_HANDLE, "another kind");
    FAILS(gpuhal_memory_stats(dev, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "out is null");
    FAILS(gpuhal_set_reserve_slack(dev, -1.0), GPUHAL_STATUS_INVALID_ARGUMENT, "slack");
    CHECK(strcmp(gpuhal_status_name(GPUHAL_STATUS_FOREIGN), "GPUHAL_STATUS_FOREIGN") == 0);
    CHECK(strcmp(gpuhal_status_name(1000), "GPUHAL_STATUS_UNKNOWN") == 0);
    /* Nothing leaked or corrupted: the allocator still serves, and the counts add up. */
    OK(gpuhal_memory_stats(dev, &after));
    CHECK(after.live_bytes == before.live_bytes && after.live_count == before.live_count);
    OK(gpuhal_malloc(dev, 4096, GPUHAL_MEMORY_DEVICE, stream, &p));
    CHECK(p != NULL);
    OK(gpuhal_free(dev, p));
}

/* Sleep keeps what is named (a pointer inside an allocation keeps all of it), poisons the
 * rest (the mock writes GPUHAL_MOCK_DISCARDED, 0xA5), and needs growable segments. */
static void sleep_and_wake(GpuhalDevice native_dev, GpuhalStream native_stream) {
    GpuhalOpenOptions options = {GPUHAL_SEGMENTS_GROWABLE, false};
    GpuhalDevice dev;
    GpuhalStream stream;
    OK(gpuhal_device_open_with("mock", 0, &options, &dev));
    OK(gpuhal_stream_create(dev, &stream));
    void *kept = NULL, *discarded = NULL;
    OK(gpuhal_malloc(dev, 3 << 20, GPUHAL_MEMORY_DEVICE, stream, &kept));
    OK(gpuhal_malloc(dev, 1 << 20, GPUHAL_MEMORY_DEVICE, stream, &discarded));
    static unsigned char data[3 << 20], back[3 << 20];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i % 251);
    OK(gpuhal_stream_write(stream, kept, data, sizeof data));
    OK(gpuhal_stream_fill(stream, discarded, 1 << 20, 0x11));
    OK(gpuhal_stream_synchronize(stream));
    /* An interior pointer and a NULL entry: the first keeps the whole allocation, the
     * second keeps nothing. */
    const void *keep[2] = {(const char *)kept + 4096, NULL};
    GpuhalSleepReport slept;
    OK(gpuhal_sleep(dev, keep, 2, &slept));
    CHECK(slept.kept_bytes == (3 << 20) && slept.discarded_bytes >= (1 << 20));
    GpuhalMemoryStats stats;
    OK(gpuhal_memory_stats(dev, &stats));
    CHECK(stats.asleep_bytes >= (4 << 20));
    GpuhalWakeReport woken;
    OK(gpuhal_wake(dev, &woken));
    CHECK(woken.restored_bytes == (3 << 20));
    OK(gpuhal_memory_stats(dev, &stats));
    CHECK(stats.asleep_bytes == 0);
    OK(gpuhal_stream_read(stream, kept, back, sizeof back));
    CHECK(memcmp(back, data, sizeof data) == 0);
    OK(gpuhal_stream_read(stream, discarded, back, 1 << 20));
    CHECK(back[0] == 0xA5 && back[(1 << 20) - 1] == 0xA5);
    /* Reports are optional. */
    OK(gpuhal_sleep(dev, NULL, 0, NULL));
    OK(gpuhal_wake(dev, NULL));
    /* Bad inputs change nothing: a pointer gpuhal never gave out, another device's, a
     * NULL array with a count, a device opened with native segments, a closed handle. */
    int on_the_stack = 0;
    const void *stranger[1] = {&on_the_stack};
    FAILS(gpuhal_sleep(dev, stranger, 1, &slept), GPUHAL_STATUS_UNKNOWN_POINTER, "not handed out");
    void *theirs = NULL;
    OK(gpuhal_malloc(native_dev, 4096, GPUHAL_MEMORY_DEVICE, native_stream, &theirs));
    const void *foreign[1] = {theirs};
    FAILS(gpuhal_sleep(dev, foreign, 1, NULL), GPUHAL_STATUS_FOREIGN, "belongs to device handle");
    FAILS(gpuhal_sleep(dev, NULL, 3, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "keep is null");
    FAILS(gpuhal_sleep(native_dev, foreign, 1, NULL), GPUHAL_STATUS_UNSUPPORTED, "sleep");
    OK(gpuhal_memory_stats(dev, &stats));
    CHECK(stats.asleep_bytes == 0);
    OK(gpuhal_free(native_dev, theirs));
    options.segments = 7;
    GpuhalDevice refused;
    FAILS(gpuhal_device_open_with("mock", 0, &options, &refused), GPUHAL_STATUS_INVALID_ARGUMENT, "segments 7");
    OK(gpuhal_free(dev, kept));
    OK(gpuhal_free(dev, discarded));
    OK(gpuhal_stream_destroy(stream));
    OK(gpuhal_device_close(dev));
    FAILS(gpuhal_wake(dev, NULL), GPUHAL_STATUS_INVALID_HANDLE, "not open");
}

/* Export, the handle across a Unix socket, import and interprocess events, on one mock
 * device opened with sharing (the mock opens its handles in-process; CUDA's two-process
 * case is the GPU bundle's), then peer access and bad inputs. */
static void sharing(GpuhalDevice plain) {
    GpuhalOpenOptions options = {GPUHAL_SEGMENTS_NATIVE, true};
    GpuhalDevice dev;
    GpuhalStream exporter, importer;
    OK(gpuhal_device_open_with("mock", 0, &options, &dev));
    GpuhalDeviceInfo info;
    OK(gpuhal_device_info(dev, &info));
    CHECK(info.capabilities & GPUHAL_CAP_IPC);
    OK(gpuhal_stream_create(dev, &exporter));
    OK(gpuhal_stream_create(dev, &importer));
    void *buffer = NULL;
    OK(gpuhal_malloc(dev, 4096, GPUHAL_MEMORY_DEVICE, exporter, &buffer));
    OK(gpuhal_stream_fill(exporter, buffer, 4096, 0x11));
    GpuhalSharedMemory handle;
    OK(gpuhal_export(dev, buffer, &handle));
    CHECK(handle.len == 4096 && handle.fd == -1 && strcmp(handle.backend, "mock") == 0);
    GpuhalEvent ready;
    GpuhalSharedEvent ready_handle;
    OK(gpuhal_shared_event_create(dev, &ready, &ready_handle));
    OK(gpuhal_event_record(ready, exporter));

    /* The handle and the event cross a socket, as to another process. */
    int sockets[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sockets) == 0);
    OK(gpuhal_send_shared(sockets[0], &handle, &ready_handle));
    GpuhalSharedMemory received;
    GpuhalSharedEvent received_event;
    bool has_event = false;
    OK(gpuhal_receive_shared(sockets[1], &received, &received_event, &has_event));
    CHECK(has_event && received.len == 4096 && received.offset == handle.offset);
    CHECK(memcmp(received.allocation, handle.allocation, GPUHAL_EXPORT_DATA_LEN) == 0);

    void *imported = NULL;
    OK(gpuhal_import_shared(dev, &received, &imported));
    CHECK(imported != NULL);
    GpuhalEvent ready_there, answered;
    OK(gpuhal_shared_event_open(dev, &received_event, &ready_there));
    /* Before waiting on the exporter's event the importer's read races its fill. */
    unsigned char back[4096];
    FAILS(gpuhal_stream_read(importer, imported, back, 16), GPUHAL_STATUS_MISUSE, "unsynchronised");
    OK(gpuhal_stream_wait_event(importer, ready_there));
    /* An interior pointer of the import works as one of an allocation. */
    OK(gpuhal_stream_read(importer, (char *)imported + 2048, back, 16));
    CHECK(back[0] == 0x11 && back[15] == 0x11);
    OK(gpuhal_stream_fill(importer, (char *)imported + 2048, 2048, 0x22));
    FAILS(gpuhal_stream_fill(importer, (char *)imported + 2048, 4096, 0), GPUHAL_STATUS_INVALID_ARGUMENT,
          "past the end");
    OK(gpuhal_shared_event_open(dev, &received_event, &answered));
    OK(gpuhal_event_record(answered, importer));
    OK(gpuhal_stream_wait_event(exporter, ready));
    OK(gpuhal_stream_read(exporter, buffer, back, sizeof back));
    CHECK(back[0] == 0x11 && back[2047] == 0x11 && back[2048] == 0x22 && back[4095] == 0x22);

    /* Bad inputs: an interior pointer or a made-up one to export, a device opened without
     * sharing, handles naming another backend, no backend, too many bytes, the same
     * handle imported twice, a releasing pointer that is no import. */
    FAILS(gpuhal_export(dev, (char *)buffer + 16, &handle), GPUHAL_STATUS_UNKNOWN_POINTER, "16 bytes into");
    int on_the_stack = 0;
    FAILS(gpuhal_export(dev, &on_the_stack, &handle), GPUHAL_STATUS_UNKNOWN_POINTER, "not handed out");
    FAILS(gpuhal_export(dev, buffer, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "out is null");
    void *plain_buffer = NULL;
    GpuhalStream plain_stream;
    OK(gpuhal_stream_create(plain, &plain_stream));
    OK(gpuhal_malloc(plain, 4096, GPUHAL_MEMORY_DEVICE, plain_stream, &plain_buffer));
    FAILS(gpuhal_export(plain, plain_buffer, &handle), GPUHAL_STATUS_INVALID_ARGUMENT, "sharing enabled");
    GpuhalSharedMemory forged = received;
    strcpy(forged.backend, "cuda");
    void *never = NULL;
    FAILS(gpuhal_import_shared(dev, &forged, &never), GPUHAL_STATUS_FOREIGN, "cuda");
    strcpy(forged.backend, "opencl");
    FAILS(gpuhal_import_shared(dev, &forged, &never), GPUHAL_STATUS_INVALID_ARGUMENT, "opencl");
    forged = received;
    forged.len = 1 << 30;
    CHECK(gpuhal_import_shared(dev, &forged, &never) != GPUHAL_STATUS_OK && never == NULL);
    forged = received;
    forged.fd = -5;
    FAILS(gpuhal_import_shared(dev, &forged, &never), GPUHAL_STATUS_INVALID_ARGUMENT, "fd -5");
    FAILS(gpuhal_import_shared(dev, &received, &never), GPUHAL_STATUS_INVALID_ARGUMENT, "imported twice");
    FAILS(gpuhal_import_shared(dev, NULL, &never), GPUHAL_STATUS_INVALID_ARGUMENT, "handle is null");
    FAILS(gpuhal_shared_import_release(dev, (char *)imported + 8), GPUHAL_STATUS_UNKNOWN_POINTER, "inside an import");
    GpuhalSharedEvent bad_event = received_event;
    strcpy(bad_event.backend, "vulkan");
    GpuhalEvent never_event;
    FAILS(gpuhal_shared_event_open(dev, &bad_event, &never_event), GPUHAL_STATUS_FOREIGN, "vulkan");
    FAILS(gpuhal_shared_event_create(plain, &never_event, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "handle is null");
    /* Sockets: not a descriptor, and bytes that are no handle. */
    FAILS(gpuhal_send_shared(-1, &received, NULL), GPUHAL_STATUS_INVALID_ARGUMENT, "not a file descriptor");
    CHECK(write(sockets[0], "not a handle", 12) == 12);
    FAILS(gpuhal_receive_shared(sockets[1], &received, NULL, NULL), GPUHAL_STATUS_INVALID_ARGUMENT,
          "not a gpuhal shared memory handle");
    /* Peer access: devices opened apart are not peers, nor is a device its own. */
    bool can = true;
    OK(gpuhal_can_access_peer(dev, plain, &can));
    CHECK(!can);
    OK(gpuhal_can_access_peer(dev, dev, &can));
    CHECK(!can);
    FAILS(gpuhal_enable_peer_access(dev, plain), GPUHAL_STATUS_UNSUPPORTED, "enable_peer_access");
    GpuhalDevice closed = {0};
    FAILS(gpuhal_can_access_peer(dev, closed, &can), GPUHAL_STATUS_INVALID_HANDLE, "null");

    /* The importer releases first; then the exporter may free. */
    OK(gpuhal_stream_synchronize(importer));
    OK(gpuhal_shared_import_release(dev, imported));
    FAILS(gpuhal_shared_import_release(dev, imported), GPUHAL_STATUS_UNKNOWN_POINTER, "released already");
    OK(gpuhal_event_release(answered));
    OK(gpuhal_event_release(ready_there));
    OK(gpuhal_event_release(ready));
    OK(gpuhal_free(dev, buffer));
    OK(gpuhal_free(plain, plain_buffer));
    close(sockets[0]);
    close(sockets[1]);
    OK(gpuhal_stream_destroy(plain_stream));
    OK(gpuhal_stream_destroy(exporter));
    OK(gpuhal_stream_destroy(importer));
    OK(gpuhal_device_close(dev));
}

int main(void) {
    GpuhalDevice dev, other;
    OK(gpuhal_device_open("mock:coherent", 0, &dev));
    OK(gpuhal_device_open("mock:discrete", 1, &other));
    GpuhalDeviceInfo info;
    OK(gpuhal_device_info(dev, &info));
    CHECK(strcmp(info.backend, "mock") == 0 && (info.capabilities & GPUHAL_CAP_PAGEABLE_ACCESS));
    GpuhalStream s1, s2;
    OK(gpuhal_stream_create(dev, &s1));
    OK(gpuhal_stream_create(dev, &s2));
    void *raw_stream = NULL;
    GpuhalStream adopted;
    FAILS(gpuhal_stream_adopt(dev, raw_stream, &adopted), GPUHAL_STATUS_INVALID_ARGUMENT, "only the CUDA backend");

    memory(dev, s1);
    events_and_fences(dev, s1, s2);
    graphs(dev, s1);
    host_import(dev, s1);
    trace_recording(dev, s1);
    bad_input(dev, other, s1);
    sleep_and_wake(dev, s1);
    sharing(other);

    OK(gpuhal_stream_destroy(s1));
    OK(gpuhal_stream_destroy(s2));
    OK(gpuhal_device_close(dev));
    OK(gpuhal_device_close(other));
    if (failures) {
        fprintf(stderr, "capi_test: %d check(s) failed\n", failures);
        return 1;
    }
    printf("capi_test: every check passed\n");
    return 0;
}
