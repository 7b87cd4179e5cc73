/* MemoryStreamer from C: publish ten records on a shm ring (five with
 * offer, five with zero-copy claim -> write -> commit) and read them back
 * with a poll callback.
 *
 *   cc -std=c11 -I capi/include capi/examples/pubsub.c \
 *      target/release/libmemstreamer.a -lpthread -ldl -lm -o pubsub
 *   ./pubsub [RING_DIR]       (default: shm-ring's own directory)
 */
#include <stdio.h>
#include <string.h>

#include "memstreamer.h"

#define STREAM 1
#define PARTITION 0
#define RECORDS 10

/* Runs inside poll: payload points into the ring, valid until we return. */
static void on_record(void *clientd, const uint8_t *payload, size_t len,
                      const ms_record_header_t *header) {
  int *received = clientd;
  printf("record at offset %llu: %.*s\n", (unsigned long long)header->offset, (int)len,
         (const char *)payload);
  (*received)++;
}

/* Prints the failed call and the library's message. */
static int fail(const char *what, int rc) {
  fprintf(stderr, "%s: %s: %s\n", what, ms_result_name(rc), ms_errmsg());
  return 1;
}

int main(int argc, char **argv) {
  ms_context_t *ctx = NULL;
  int rc = ms_context_new(&ctx);
  if (rc != MS_OK) return fail("ms_context_new", rc);
  if (argc > 1 && (rc = ms_context_set_dir(ctx, argv[1])) != MS_OK) return fail("set_dir", rc);
  ms_context_set_capacity_bytes(ctx, 1 << 16);

  ms_publisher_t *pub = NULL;
  ms_subscriber_t *sub = NULL;
  if ((rc = ms_publisher_open(ctx, STREAM, PARTITION, &pub)) != MS_OK) return fail("publisher", rc);
  if ((rc = ms_subscriber_open(ctx, STREAM, PARTITION, &sub)) != MS_OK) return fail("subscriber", rc);

  for (int i = 0; i < RECORDS; i++) {
    char text[32];
    int len = snprintf(text, sizeof text, "hello %d", i);
    if (i % 2 == 0) {
      /* one copy: the library copies text into the ring */
      rc = ms_publisher_offer(pub, (const uint8_t *)text, (size_t)len, NULL);
    } else {
      /* zero copy: write straight into the ring slot, then commit */
      uint8_t *slot = NULL;
      rc = ms_publisher_claim(pub, (size_t)len, &slot);
      if (rc == MS_OK) {
        memcpy(slot, text, (size_t)len);
        rc = ms_publisher_commit(pub, NULL);
      }
    }
    if (rc == MS_ERR_BACK_PRESSURED) { i--; continue; } /* a subscriber is behind: retry */
    if (rc != MS_OK) return fail("publish", rc);
  }

  /* Poll with a fragment limit until everything arrived (bounded). */
  ms_idle_strategy_t *idle = NULL;
  ms_idle_strategy_new(MS_IDLE_BACKOFF, &idle);
  int received = 0;
  for (int spins = 0; received < RECORDS && spins < 1000000; spins++) {
    int n = ms_subscriber_poll(sub, on_record, &received, 4);
    if (n < 0) return fail("poll", n);
    ms_subscriber_idle(sub, idle, n);
  }
  printf("received %d of %d\n", received, RECORDS);

  /* Close everything: each close sets the pointer to NULL. */
  ms_idle_strategy_close(&idle);
  ms_subscriber_close(&sub);
  ms_publisher_close(&pub);
  ms_context_remove_ring(ctx, STREAM, PARTITION);
  ms_context_close(&ctx);
  return received == RECORDS ? 0 : 1;
}
