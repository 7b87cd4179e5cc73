/* Zero-copy claim -> write -> commit, claim -> abort (subscribers skip it),
 * one claim at a time, commit/abort without a claim, close with a claim
 * outstanding. Usage: claim RING_DIR */
#include <stdint.h>
#include <string.h>

#include "check.h"

typedef struct {
  int seen;
  char got[4][16];
} state_t;

static void on_record(void *clientd, const uint8_t *payload, size_t len,
                      const ms_record_header_t *header) {
  (void)header;
  state_t *s = clientd;
  if (s->seen < 4 && len < 16) {
    memcpy(s->got[s->seen], payload, len);
    s->got[s->seen][len] = '\0';
  }
  s->seen++;
}

static int drain(ms_subscriber_t *sub, state_t *st, int want) {
  for (int spins = 0; st->seen < want && spins < 1000000; spins++) {
    int n = ms_subscriber_poll(sub, on_record, st, 8);
    CHECK(n >= 0);
  }
  return st->seen;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  ms_context_t *ctx = NULL;
  OK(ms_context_new(&ctx));
  OK(ms_context_set_dir(ctx, argv[1]));
  OK(ms_context_set_capacity_bytes(ctx, 1 << 16));
  ms_publisher_t *pub = NULL;
  OK(ms_publisher_open(ctx, 9, 0, &pub));
  ms_subscriber_t *sub = NULL;
  OK(ms_subscriber_open(ctx, 9, 0, &sub));

  uint8_t *buf = NULL;
  uint64_t offset = 0;
  /* commit / abort with no claim outstanding */
  FAILS_WITH(MS_ERR_STATE, ms_publisher_commit(pub, &offset));
  FAILS_WITH(MS_ERR_STATE, ms_publisher_abort(pub));

  /* claim, write in place, commit */
  OK(ms_publisher_claim(pub, 5, &buf));
  CHECK(buf != NULL);
  memcpy(buf, "first", 5);
  /* one claim at a time; offer waits for the claim too */
  uint8_t *again = NULL;
  FAILS_WITH(MS_ERR_STATE, ms_publisher_claim(pub, 5, &again));
  CHECK(again == NULL);
  FAILS_WITH(MS_ERR_STATE, ms_publisher_offer(pub, (const uint8_t *)"x", 1, NULL));
  OK(ms_publisher_commit(pub, &offset));

  /* claim then abort: the slot is skipped */
  OK(ms_publisher_claim(pub, 7, &buf));
  memcpy(buf, "aborted", 7);
  OK(ms_publisher_abort(pub));

  OK(ms_publisher_claim(pub, 6, &buf));
  memcpy(buf, "second", 6);
  OK(ms_publisher_commit(pub, NULL));

  /* a zero-length claim is a valid, empty record */
  OK(ms_publisher_claim(pub, 0, &buf));
  OK(ms_publisher_commit(pub, NULL));

  state_t st = {0};
  CHECK(drain(sub, &st, 3) == 3);
  CHECK(strcmp(st.got[0], "first") == 0);
  CHECK(strcmp(st.got[1], "second") == 0);
  CHECK(strcmp(st.got[2], "") == 0);

  /* closing with a claim outstanding aborts it; the subscriber skips it */
  OK(ms_publisher_claim(pub, 4, &buf));
  memcpy(buf, "lost", 4);
  OK(ms_publisher_close(&pub));
  CHECK(pub == NULL);
  OK(ms_publisher_open(ctx, 9, 0, &pub));
  OK(ms_publisher_offer(pub, (const uint8_t *)"third", 5, NULL));
  CHECK(drain(sub, &st, 4) == 4);
  CHECK(strcmp(st.got[3], "third") == 0);

  OK(ms_publisher_close(&pub));
  OK(ms_subscriber_close(&sub));
  OK(ms_context_close(&ctx));
  puts("claim ok");
  return 0;
}
