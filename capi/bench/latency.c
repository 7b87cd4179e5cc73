/* One-way latency of 64-byte messages through the C API, for
 * `ms-bench bindings` (benches/src/bindings/c.rs runs the same loop with the
 * Rust SDK). One reliable ring with an exclusive publisher; a publisher
 * thread pinned to core 0 offers one message every PACE_NS (paced, so this
 * measures latency, not queueing); a subscriber thread pinned to core 1
 * busy-polls 16 records at a time and records ms_clock_now_ns() minus the
 * record's timestamp (taken by the ring at claim). The first WARMUP
 * messages are not recorded. p50/p99 are read from the sorted values.
 *
 * Usage: latency RING_DIR MSGS WARMUP PACE_NS RING_CAPACITY_BYTES
 * Prints one JSON line: {"c_p50_ns":..,"c_p99_ns":..,"msgs_per_s":..}
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "memstreamer.h"

#define MSG_BYTES 64
#define POLL_LIMIT 16
#define CORE_PUB 0
#define CORE_SUB 1
#define STREAM 77
#define TIMEOUT_NS 60000000000ull

/* The publisher's arguments and the subscriber's state each on cache lines
 * of their own (two lines: adjacent-line prefetch), so the subscriber's
 * writes never bounce a line the publisher reads. */
typedef struct {
  _Alignas(128) ms_publisher_t *pub;
  uint64_t msgs;
  uint64_t pace_ns;
  volatile int failed;
} pub_args_t;

typedef struct {
  _Alignas(128) uint64_t *latencies;
  uint64_t seen;
  uint64_t warmup;
  uint64_t first_ns;
} sub_state_t;

typedef struct {
  _Alignas(128) ms_subscriber_t *sub;
  sub_state_t *st;
  uint64_t msgs;
  const volatile int *failed;
  uint64_t elapsed_ns;
  int rc;
} sub_args_t;

/* The spin-loop hint Rust's std::hint::spin_loop() gives (the Rust side
 * spins with it too): without it a spinning publisher takes execution
 * resources from a subscriber on a sibling hyperthread. */
static inline void spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static void pin(int core) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(core, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
    fprintf(stderr, "note: could not pin to core %d; running unpinned\n", core);
  }
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *publish(void *arg) {
  pub_args_t *a = arg;
  ms_publisher_t *pub = a->pub;
  const uint64_t msgs = a->msgs, pace_ns = a->pace_ns;
  pin(CORE_PUB);
  uint8_t payload[MSG_BYTES];
  memset(payload, 0x5a, sizeof payload);
  uint64_t deadline = mono_ns() + TIMEOUT_NS;
  uint64_t next = ms_clock_now_ns();
  for (uint64_t i = 0; i < msgs; i++) {
    while (ms_clock_now_ns() < next) {
      spin_pause();
    }
    for (;;) {
      int rc = ms_publisher_offer(pub, payload, sizeof payload, NULL);
      if (rc == MS_OK) break;
      if (rc != MS_ERR_BACK_PRESSURED || mono_ns() > deadline) {
        fprintf(stderr, "offer: %s: %s\n", ms_result_name(rc), ms_errmsg());
        a->failed = 1;
        return NULL;
      }
      spin_pause();
    }
    next += pace_ns;
  }
  return NULL;
}

static void on_record(void *clientd, const uint8_t *payload, size_t len,
                      const ms_record_header_t *header) {
  (void)payload, (void)len;
  sub_state_t *s = clientd;
  uint64_t now = ms_clock_now_ns();
  if (s->seen >= s->warmup) {
    s->latencies[s->seen - s->warmup] = now > header->timestamp_ns ? now - header->timestamp_ns : 0;
  }
  if (s->seen == 0) s->first_ns = mono_ns();
  s->seen++;
}

static void *subscribe(void *arg) {
  sub_args_t *a = arg;
  pin(CORE_SUB);
  uint64_t deadline = mono_ns() + TIMEOUT_NS;
  while (a->st->seen < a->msgs && !*a->failed && mono_ns() < deadline) {
    int rc = ms_subscriber_poll(a->sub, on_record, a->st, POLL_LIMIT);
    if (rc < 0) {
      fprintf(stderr, "poll: %s: %s\n", ms_result_name(rc), ms_errmsg());
      a->rc = rc;
      return NULL;
    }
  }
  a->elapsed_ns = mono_ns() - a->st->first_ns;
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Index len * q, as benches/src/bindings/c.rs reads its sorted values. */
static double at(const uint64_t *v, uint64_t n, double q) {
  if (n == 0) return 0.0;
  uint64_t i = (uint64_t)((double)n * q);
  if (i >= n) i = n - 1;
  return (double)v[i];
}

static int fail(const char *what, int rc) {
  fprintf(stderr, "%s: %s: %s\n", what, ms_result_name(rc), ms_errmsg());
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s RING_DIR MSGS WARMUP PACE_NS RING_CAPACITY_BYTES\n", argv[0]);
    return 2;
  }
  uint64_t msgs = strtoull(argv[2], NULL, 10);
  uint64_t warmup = strtoull(argv[3], NULL, 10);
  uint64_t pace_ns = strtoull(argv[4], NULL, 10);
  uint64_t capacity = strtoull(argv[5], NULL, 10);
  if (warmup >= msgs) {
    fprintf(stderr, "WARMUP must be below MSGS\n");
    return 2;
  }
  ms_context_t *ctx = NULL;
  int rc;
  if ((rc = ms_context_new(&ctx)) != MS_OK) return fail("context", rc);
  if ((rc = ms_context_set_dir(ctx, argv[1])) != MS_OK) return fail("dir", rc);
  if ((rc = ms_context_set_capacity_bytes(ctx, capacity)) != MS_OK) return fail("capacity", rc);
  if ((rc = ms_context_set_mode(ctx, MS_MODE_RELIABLE)) != MS_OK) return fail("mode", rc);
  if ((rc = ms_context_set_publisher_kind(ctx, MS_PUBLISHER_EXCLUSIVE)) != MS_OK) return fail("kind", rc);

  pub_args_t args = {NULL, msgs, pace_ns, 0};
  if ((rc = ms_publisher_open(ctx, STREAM, 0, &args.pub)) != MS_OK) return fail("publisher", rc);
  ms_subscriber_t *sub = NULL;
  if ((rc = ms_subscriber_open(ctx, STREAM, 0, &sub)) != MS_OK) return fail("subscriber", rc);
  sub_state_t st = {calloc(msgs - warmup, sizeof(uint64_t)), 0, warmup, 0};
  if (st.latencies == NULL) return 1;
  /* The first poll maps the ring (it exists: the publisher created it). */
  if ((rc = ms_subscriber_poll(sub, on_record, &st, POLL_LIMIT)) < 0) return fail("poll", rc);
  if (ms_subscriber_is_attached(sub) != 1) return fail("attach", ms_errcode());

  /* Both sides on threads of their own, as in the Rust loop of c.rs. */
  sub_args_t sargs = {sub, &st, msgs, &args.failed, 0, 0};
  pthread_t publisher, subscriber;
  if (pthread_create(&publisher, NULL, publish, &args) != 0) return 1;
  if (pthread_create(&subscriber, NULL, subscribe, &sargs) != 0) return 1;
  pthread_join(subscriber, NULL);
  pthread_join(publisher, NULL);
  if (sargs.rc < 0) return 1;
  uint64_t elapsed = sargs.elapsed_ns;
  if (st.seen < msgs) {
    fprintf(stderr, "received %llu of %llu messages\n", (unsigned long long)st.seen,
            (unsigned long long)msgs);
    return 1;
  }
  uint64_t n = msgs - warmup;
  qsort(st.latencies, n, sizeof(uint64_t), cmp_u64);
  printf("{\"c_p50_ns\":%.0f,\"c_p99_ns\":%.0f,\"msgs_per_s\":%.0f}\n", at(st.latencies, n, 0.50),
         at(st.latencies, n, 0.99), (double)msgs * 1e9 / (double)(elapsed ? elapsed : 1));
  free(st.latencies);
  ms_subscriber_close(&sub);
  ms_publisher_close(&args.pub);
  ms_context_remove_ring(ctx, STREAM, 0);
  ms_context_close(&ctx);
  return 0;
}
