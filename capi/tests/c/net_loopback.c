/* A network publisher -> network subscriber over 127.0.0.1: SETUP is
 * acknowledged, records arrive once each and in order, offers before the
 * session is acknowledged say NOT_CONNECTED, a record larger than a frame
 * is TOO_LARGE, and close drains and ends the session. Every loop is bounded. */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define RECORDS 200
#define STREAM 21
#define SESSION 5

typedef struct {
  int seen;
  int in_order;
} state_t;

static void on_record(void *clientd, const uint8_t *payload, size_t len,
                      const ms_net_record_header_t *header) {
  state_t *s = clientd;
  uint32_t value = 0;
  if (len != 32 || header->stream_id != STREAM || header->session_id != SESSION ||
      header->record_type != 3) {
    s->in_order = 0;
    return;
  }
  memcpy(&value, payload, 4);
  if (value != (uint32_t)s->seen) s->in_order = 0;
  s->seen++;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(void) {
  ms_net_subscriber_t *sub = NULL;
  OK(ms_net_subscriber_open("127.0.0.1:0", &sub));
  char addr[MS_ADDR_BYTES_MAX];
  CHECK(ms_net_subscriber_local_addr(sub, addr, sizeof addr) > 0);
  CHECK(strncmp(addr, "127.0.0.1:", 10) == 0);

  ms_net_publisher_t *pub = NULL;
  OK(ms_net_publisher_open("127.0.0.1:0", addr, STREAM, 0, SESSION, "c-test", &pub));
  uint8_t msg[32] = {0};
  FAILS_WITH(MS_ERR_NOT_CONNECTED, ms_net_publisher_offer(pub, 3, msg, sizeof msg, NULL));
  CHECK(ms_net_publisher_is_connected(pub) == 0);

  state_t st = {0, 1};
  uint64_t deadline = now_ns() + 10000000000ull;
  while (ms_net_publisher_is_connected(pub) != 1 && now_ns() < deadline) {
    CHECK(ms_net_publisher_do_work(pub) >= 0);
    CHECK(ms_net_subscriber_poll(sub, on_record, &st, 16) >= 0);
  }
  CHECK(ms_net_publisher_is_connected(pub) == 1);
  OK(ms_net_publisher_wait_connected(pub, 1000000000ull));

  static uint8_t huge[65536];
  FAILS_WITH(MS_ERR_TOO_LARGE, ms_net_publisher_offer(pub, 3, huge, sizeof huge, NULL));

  uint32_t sent = 0;
  uint64_t prev = 0;
  while ((st.seen < RECORDS || sent < RECORDS) && now_ns() < deadline) {
    if (sent < RECORDS) {
      memcpy(msg, &sent, 4);
      uint64_t offset = 0;
      int rc = ms_net_publisher_offer(pub, 3, msg, sizeof msg, &offset);
      if (rc == MS_OK) {
        CHECK(sent == 0 || offset > prev);
        prev = offset;
        sent++;
      } else {
        CHECK(rc == MS_ERR_BACK_PRESSURED);
      }
    }
    CHECK(ms_net_publisher_do_work(pub) >= 0);
    CHECK(ms_net_subscriber_poll(sub, on_record, &st, 16) >= 0);
  }
  CHECK(sent == RECORDS);
  CHECK(st.seen == RECORDS);
  CHECK(st.in_order);

  /* Let the subscriber acknowledge everything (it sends STATUS every few
   * milliseconds while polled), then close: it sends END_OF_SESSION. */
  uint64_t settle = now_ns() + 200000000ull;
  while (now_ns() < settle) {
    CHECK(ms_net_publisher_do_work(pub) >= 0);
    CHECK(ms_net_subscriber_poll(sub, on_record, &st, 16) >= 0);
  }
  OK(ms_net_publisher_close(&pub, 2000000000ull));
  CHECK(pub == NULL);
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_net_publisher_offer(pub, 3, msg, sizeof msg, NULL));
  OK(ms_net_publisher_close(&pub, 0));
  CHECK(st.seen == RECORDS);
  OK(ms_net_subscriber_close(&sub));
  puts("net_loopback ok");
  return 0;
}
