/* Assertions for the C tests: a failed check prints the expression, the
 * result code's name and ms_errmsg(), then exits 1. */
#ifndef MS_TEST_CHECK_H
#define MS_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "memstreamer.h"

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "%s:%d: check failed: %s (last error %s: %s)\n",         \
              __FILE__, __LINE__, #cond, ms_result_name(ms_errcode()),          \
              ms_errmsg());                                                     \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

/* A call that must return MS_OK. */
#define OK(call) CHECK((call) == MS_OK)

/* A call that must return the error `code`, with a non-empty message. */
#define FAILS_WITH(code, call)                                                  \
  do {                                                                          \
    int rc_ = (call);                                                           \
    if (rc_ != (code)) {                                                        \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__,    \
              __LINE__, #call, ms_result_name(rc_), ms_result_name(code),       \
              ms_errmsg());                                                     \
      exit(1);                                                                  \
    }                                                                           \
    CHECK(ms_errcode() == (code));                                              \
    CHECK(ms_errmsg()[0] != '\0');                                              \
  } while (0)

#endif
