/* offer -> poll round trip on one ring, in order, with the fragment limit
 * respected, record headers filled, and the idle strategies usable.
 * Usage: shm_roundtrip RING_DIR */
#include <stdint.h>
#include <string.h>

#include "check.h"

#define RECORDS 100

typedef struct {
  int seen;
  uint64_t last_offset;
  int in_order;
} state_t;

static void on_record(void *clientd, const uint8_t *payload, size_t len,
                      const ms_record_header_t *header) {
  state_t *s = clientd;
  uint32_t value = 0;
  if (len != 12 || memcmp(payload + 4, "payload!", 8) != 0) {
    s->in_order = 0;
    return;
  }
  memcpy(&value, payload, 4);
  if (value != (uint32_t)s->seen || (s->seen > 0 && header->offset <= s->last_offset) ||
      header->timestamp_ns == 0 || header->type_id != (s->seen % 2 ? 7 : 0)) {
    s->in_order = 0;
  }
  s->last_offset = header->offset;
  s->seen++;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  CHECK(strlen(ms_version()) > 0);
  char name[MS_RING_NAME_BYTES_MAX];
  CHECK(ms_ring_name(7, 3, name, sizeof name) == (int)strlen("stream-7-3"));
  CHECK(strcmp(name, "stream-7-3") == 0);

  ms_context_t *ctx = NULL;
  OK(ms_context_new(&ctx));
  OK(ms_context_set_dir(ctx, argv[1]));
  OK(ms_context_set_capacity_bytes(ctx, 1 << 16));
  OK(ms_context_set_publisher_kind(ctx, MS_PUBLISHER_EXCLUSIVE));

  /* The subscriber may exist before the ring: polls return 0. */
  ms_subscriber_t *sub = NULL;
  OK(ms_subscriber_open(ctx, 7, 3, &sub));
  state_t st = {0, 0, 1};
  CHECK(ms_subscriber_poll(sub, on_record, &st, 16) == 0);
  CHECK(ms_subscriber_is_attached(sub) == 0);

  ms_publisher_t *pub = NULL;
  OK(ms_publisher_open(ctx, 7, 3, &pub));
  size_t max = 0;
  OK(ms_publisher_max_payload_len(pub, &max));
  CHECK(max > 12 && max < (1 << 16));

  uint64_t prev = 0;
  for (uint32_t i = 0; i < RECORDS; i++) {
    uint8_t msg[12];
    memcpy(msg, &i, 4);
    memcpy(msg + 4, "payload!", 8);
    uint64_t offset = 0;
    if (i % 2) {
      OK(ms_publisher_offer_typed(pub, 7, msg, sizeof msg, &offset));
    } else {
      OK(ms_publisher_offer(pub, msg, sizeof msg, &offset));
    }
    CHECK(i == 0 || offset > prev);
    prev = offset;
  }

  /* Force the first attach (the subscriber retries opening at most every
   * millisecond), then read with a limit of 16 per poll. */
  ms_idle_strategy_t *idle = NULL;
  OK(ms_idle_strategy_new(MS_IDLE_BACKOFF, &idle));
  int polls = 0;
  for (int spins = 0; st.seen < RECORDS && spins < 1000000; spins++) {
    int n = ms_subscriber_poll(sub, on_record, &st, 16);
    CHECK(n >= 0 && n <= 16);
    if (n > 0) polls++;
    OK(ms_subscriber_idle(sub, idle, n));
  }
  CHECK(st.seen == RECORDS);
  CHECK(st.in_order);
  CHECK(polls >= RECORDS / 16);
  CHECK(ms_subscriber_is_attached(sub) == 1);
  uint64_t lost = 1;
  OK(ms_subscriber_lost_records(sub, &lost));
  CHECK(lost == 0);

  /* A subscriber that starts at the tail sees only records published after
   * it attached. */
  OK(ms_context_set_start_at(ctx, MS_START_TAIL));
  ms_subscriber_t *tail = NULL;
  OK(ms_subscriber_open(ctx, 7, 3, &tail));
  state_t tail_st = {0, 0, 1};
  CHECK(ms_subscriber_poll(tail, on_record, &tail_st, 16) == 0);
  CHECK(ms_subscriber_is_attached(tail) == 1);
  uint8_t first[12];
  uint32_t zero = 0;
  memcpy(first, &zero, 4);
  memcpy(first + 4, "payload!", 8);
  OK(ms_publisher_offer(pub, first, sizeof first, NULL));
  for (int spins = 0; tail_st.seen < 1 && spins < 1000000; spins++) {
    CHECK(ms_subscriber_poll(tail, on_record, &tail_st, 16) >= 0);
  }
  CHECK(tail_st.seen == 1 && tail_st.in_order);
  CHECK(ms_subscriber_poll(tail, on_record, &tail_st, 16) == 0);
  OK(ms_subscriber_close(&tail));

  /* Every idle strategy can be made, stepped and reset. */
  int kinds[] = {MS_IDLE_BUSY_SPIN, MS_IDLE_YIELD, MS_IDLE_BACKOFF, MS_IDLE_ADAPTIVE};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    ms_idle_strategy_t *s = NULL;
    OK(ms_idle_strategy_new(kinds[k], &s));
    OK(ms_idle_strategy_idle(s, 0));
    OK(ms_idle_strategy_idle(s, 1));
    OK(ms_idle_strategy_reset(s));
    OK(ms_idle_strategy_close(&s));
    CHECK(s == NULL);
  }
  ms_idle_strategy_t *custom = NULL;
  OK(ms_idle_strategy_new_backoff(1, 1, 1000, 2000, &custom));
  for (int i = 0; i < 6; i++) OK(ms_idle_strategy_idle(custom, 0));
  OK(ms_idle_strategy_close(&custom));
  OK(ms_idle_strategy_new_adaptive(1000, 2000, 1000, 2000, &custom));
  OK(ms_idle_strategy_idle(custom, 0));
  OK(ms_idle_strategy_close(&custom));

  OK(ms_idle_strategy_close(&idle));
  OK(ms_publisher_close(&pub));
  OK(ms_subscriber_close(&sub));
  OK(ms_context_remove_ring(ctx, 7, 3));
  OK(ms_context_close(&ctx));
  CHECK(pub == NULL && sub == NULL && ctx == NULL);
  puts("shm_roundtrip ok");
  return 0;
}
