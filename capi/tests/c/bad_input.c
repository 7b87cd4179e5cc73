/* Bad input gets an error code and a message, never a crash: NULL handles
 * and pointers, wrong lengths, out-of-range values, a record larger than
 * the ring takes, use after close, double close, and calls on a subscriber
 * from inside its own poll callback. Usage: bad_input RING_DIR */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static void ignore(void *clientd, const uint8_t *payload, size_t len,
                   const ms_record_header_t *header) {
  (void)clientd, (void)payload, (void)len, (void)header;
}

static void ignore_net(void *clientd, const uint8_t *payload, size_t len,
                       const ms_net_record_header_t *header) {
  (void)clientd, (void)payload, (void)len, (void)header;
}

typedef struct {
  ms_subscriber_t *sub;
  int poll_rc;
  int close_rc;
  int calls;
} reentry_t;

/* Calls back into the subscriber that is delivering: both are refused. */
static void reenter(void *clientd, const uint8_t *payload, size_t len,
                    const ms_record_header_t *header) {
  (void)payload, (void)len, (void)header;
  reentry_t *r = clientd;
  r->poll_rc = ms_subscriber_poll(r->sub, ignore, NULL, 1);
  r->close_rc = ms_subscriber_close(&r->sub);
  r->calls++;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  uint8_t byte = 1;
  uint64_t offset = 0;
  uint8_t *buf = NULL;

  /* NULL handles: every function, an error code, no crash. */
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_context_set_dir(NULL, "/tmp"));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_context_set_capacity_bytes(NULL, 1 << 16));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_open(NULL, 1, 0, &(ms_publisher_t *){NULL}));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_subscriber_open(NULL, 1, 0, &(ms_subscriber_t *){NULL}));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_offer(NULL, &byte, 1, &offset));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_claim(NULL, 1, &buf));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_commit(NULL, &offset));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_abort(NULL));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_subscriber_poll(NULL, ignore, NULL, 1));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_subscriber_is_attached(NULL));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_idle_strategy_idle(NULL, 0));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_net_publisher_do_work(NULL));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_net_publisher_offer(NULL, 0, &byte, 1, NULL));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_net_subscriber_poll(NULL, ignore_net, NULL, 1));
  /* close(NULL) is an argument error; close(&NULL) is a no-op. */
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_publisher_close(NULL));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_close(NULL));
  ms_publisher_t *none = NULL;
  OK(ms_publisher_close(&none));
  /* NULL out-pointers */
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_new(NULL));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_idle_strategy_new(MS_IDLE_YIELD, NULL));

  ms_context_t *ctx = NULL;
  OK(ms_context_new(&ctx));
  /* out-of-range settings */
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_set_dir(ctx, NULL));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_set_dir(ctx, ""));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_set_capacity_bytes(ctx, 3000));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_set_mode(ctx, 42));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_set_publisher_kind(ctx, -1));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_set_start_at(ctx, 9));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_context_set_subscribers_max(ctx, 0));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_idle_strategy_new(17, &(ms_idle_strategy_t *){NULL}));
  char small[4];
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_ring_name(7, 0, small, sizeof small));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_ring_name(7, 0, NULL, 64));
  CHECK(strcmp(ms_result_name(12345), "MS_UNKNOWN") == 0);

  OK(ms_context_set_dir(ctx, argv[1]));
  OK(ms_context_set_capacity_bytes(ctx, 1 << 16));
  OK(ms_context_set_mode(ctx, MS_MODE_RELIABLE));
  OK(ms_context_set_start_at(ctx, MS_START_EARLIEST));
  ms_publisher_t *pub = NULL;
  OK(ms_publisher_open(ctx, 11, 0, &pub));
  ms_subscriber_t *sub = NULL;
  OK(ms_subscriber_open(ctx, 11, 0, &sub));

  /* wrong lengths and pointers */
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_publisher_offer(pub, NULL, 8, &offset));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_publisher_offer(pub, &byte, SIZE_MAX, &offset));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_publisher_claim(pub, 8, NULL));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_publisher_max_payload_len(pub, NULL));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_subscriber_poll(sub, NULL, NULL, 1));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_subscriber_poll(sub, ignore, NULL, 0));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT,
             ms_subscriber_poll(sub, ignore, NULL, (size_t)MS_FRAGMENT_LIMIT_MAX + 1));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_subscriber_lost_records(sub, NULL));

  /* a record larger than the ring takes: offer and claim */
  size_t max = 0;
  OK(ms_publisher_max_payload_len(pub, &max));
  uint8_t *big = calloc(max + 1, 1);
  CHECK(big != NULL);
  FAILS_WITH(MS_ERR_TOO_LARGE, ms_publisher_offer(pub, big, max + 1, &offset));
  CHECK(strstr(ms_errmsg(), "max_payload_len") != NULL);
  FAILS_WITH(MS_ERR_TOO_LARGE, ms_publisher_claim(pub, max + 1, &buf));
  FAILS_WITH(MS_ERR_TOO_LARGE, ms_publisher_claim(pub, SIZE_MAX, &buf));
  /* the largest record that fits is taken */
  OK(ms_publisher_offer(pub, big, max, &offset));
  free(big);
  /* the publisher is still usable after the errors */
  OK(ms_publisher_offer(pub, &byte, 1, &offset));

  /* calls on the subscriber from inside its callback are refused */
  reentry_t r = {sub, 0, 0, 0};
  int n = 0;
  for (int spins = 0; n == 0 && spins < 1000000; spins++) {
    n = ms_subscriber_poll(sub, reenter, &r, 1);
    CHECK(n >= 0);
  }
  CHECK(n == 1 && r.calls == 1);
  CHECK(r.poll_rc == MS_ERR_STATE);
  CHECK(r.close_rc == MS_ERR_STATE);
  CHECK(r.sub == sub); /* the refused close did not clear the pointer */

  /* an exclusive ring takes one publisher at a time */
  ms_context_t *xctx = NULL;
  OK(ms_context_new(&xctx));
  OK(ms_context_set_dir(xctx, argv[1]));
  OK(ms_context_set_capacity_bytes(xctx, 1 << 16));
  OK(ms_context_set_publisher_kind(xctx, MS_PUBLISHER_EXCLUSIVE));
  ms_publisher_t *owner = NULL, *second = NULL;
  OK(ms_publisher_open(xctx, 12, 0, &owner));
  FAILS_WITH(MS_ERR_IO, ms_publisher_open(xctx, 12, 0, &second));
  CHECK(second == NULL);
  CHECK(strstr(ms_errmsg(), "exclusive") != NULL);
  OK(ms_publisher_close(&owner));
  OK(ms_context_remove_ring(xctx, 12, 0));
  OK(ms_context_close(&xctx));

  /* use after close: the handle pointer is NULL, every call says so */
  OK(ms_publisher_close(&pub));
  CHECK(pub == NULL);
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_offer(pub, &byte, 1, &offset));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_claim(pub, 1, &buf));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_commit(pub, NULL));
  OK(ms_publisher_close(&pub)); /* idempotent */
  OK(ms_subscriber_close(&sub));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_subscriber_poll(sub, ignore, NULL, 1));
  OK(ms_subscriber_close(&sub));
  OK(ms_context_remove_ring(ctx, 11, 0));
  OK(ms_context_close(&ctx));
  FAILS_WITH(MS_ERR_NULL_HANDLE, ms_publisher_open(ctx, 11, 0, &pub));
  OK(ms_context_close(&ctx));

  /* network: bad addresses and principals */
  ms_net_publisher_t *np = NULL;
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT,
             ms_net_publisher_open("not an address", "127.0.0.1:9", 1, 0, 1, "p", &np));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT,
             ms_net_publisher_open("127.0.0.1:0", NULL, 1, 0, 1, "p", &np));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT,
             ms_net_publisher_open("127.0.0.1:0", "127.0.0.1:9", 1, 0, 1, "", &np));
  CHECK(np == NULL);
  ms_net_subscriber_t *ns = NULL;
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_net_subscriber_open("127.0.0.1", &ns));
  OK(ms_net_subscriber_open("127.0.0.1:0", &ns));
  char addr[4];
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_net_subscriber_local_addr(ns, addr, sizeof addr));
  FAILS_WITH(MS_ERR_INVALID_ARGUMENT, ms_net_subscriber_poll(ns, NULL, NULL, 1));
  OK(ms_net_subscriber_close(&ns));
  OK(ms_net_subscriber_close(&ns));
  puts("bad_input ok");
  return 0;
}
