/* One process publishes, another subscribes, on one shm ring.
 * Usage: two_process pub RING_DIR COUNT   creates the ring, prints "ready",
 *                                         waits for a line on stdin, then
 *                                         offers COUNT records (retrying on
 *                                         back-pressure)
 *        two_process sub RING_DIR COUNT   maps the ring, prints "attached",
 *                                         then reads COUNT records in order
 * The driver (tests/c_api.rs) starts pub, then sub, and releases pub once
 * sub is attached, so the reliable ring back-pressures pub from the first
 * record. Exit 0 on success; every loop is bounded. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define STREAM 31
#define TIMEOUT_NS 30000000000ull

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct {
  uint64_t seen;
  int in_order;
} state_t;

static void on_record(void *clientd, const uint8_t *payload, size_t len,
                      const ms_record_header_t *header) {
  (void)header;
  state_t *s = clientd;
  uint64_t value = 0;
  if (len != 64) {
    s->in_order = 0;
    return;
  }
  memcpy(&value, payload, 8);
  if (value != s->seen) s->in_order = 0;
  s->seen++;
}

int main(int argc, char **argv) {
  CHECK(argc == 4);
  uint64_t count = strtoull(argv[3], NULL, 10);
  ms_context_t *ctx = NULL;
  OK(ms_context_new(&ctx));
  OK(ms_context_set_dir(ctx, argv[2]));
  OK(ms_context_set_capacity_bytes(ctx, 1 << 16));
  OK(ms_context_set_mode(ctx, MS_MODE_RELIABLE));
  OK(ms_context_set_start_at(ctx, MS_START_EARLIEST));
  /* A loaded CI machine may stall the subscriber for a while: it is not
   * evicted (and the publisher stays back-pressured) for 10 s. */
  OK(ms_context_set_liveness_timeout_ns(ctx, 10000000000ull));
  uint64_t deadline = now_ns() + TIMEOUT_NS;

  if (strcmp(argv[1], "pub") == 0) {
    ms_publisher_t *pub = NULL;
    OK(ms_publisher_open(ctx, STREAM, 0, &pub));
    puts("ready");
    fflush(stdout);
    char go[16];
    CHECK(fgets(go, sizeof go, stdin) != NULL);
    ms_idle_strategy_t *idle = NULL;
    OK(ms_idle_strategy_new(MS_IDLE_YIELD, &idle));
    uint8_t msg[64] = {0};
    uint64_t sent = 0;
    while (sent < count && now_ns() < deadline) {
      memcpy(msg, &sent, 8);
      int rc = ms_publisher_offer(pub, msg, sizeof msg, NULL);
      if (rc == MS_OK) {
        sent++;
      } else {
        CHECK(rc == MS_ERR_BACK_PRESSURED);
        OK(ms_idle_strategy_idle(idle, 0));
      }
    }
    CHECK(sent == count);
    printf("pub sent %llu\n", (unsigned long long)sent);
    OK(ms_idle_strategy_close(&idle));
    OK(ms_publisher_close(&pub));
  } else {
    CHECK(strcmp(argv[1], "sub") == 0);
    ms_subscriber_t *sub = NULL;
    OK(ms_subscriber_open(ctx, STREAM, 0, &sub));
    ms_idle_strategy_t *idle = NULL;
    OK(ms_idle_strategy_new(MS_IDLE_BACKOFF, &idle));
    state_t st = {0, 1};
    while (ms_subscriber_is_attached(sub) != 1 && now_ns() < deadline) {
      CHECK(ms_subscriber_poll(sub, on_record, &st, 64) >= 0);
      OK(ms_idle_strategy_idle(idle, 0));
    }
    CHECK(ms_subscriber_is_attached(sub) == 1);
    puts("attached");
    fflush(stdout);
    while (st.seen < count && now_ns() < deadline) {
      int n = ms_subscriber_poll(sub, on_record, &st, 64);
      CHECK(n >= 0);
      OK(ms_subscriber_idle(sub, idle, n));
    }
    CHECK(st.in_order);
    CHECK(st.seen == count);
    printf("sub received %llu\n", (unsigned long long)st.seen);
    OK(ms_idle_strategy_close(&idle));
    OK(ms_subscriber_close(&sub));
  }
  OK(ms_context_close(&ctx));
  return 0;
}
