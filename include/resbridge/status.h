/* status.h — error codes for every public resbridge function.
 *
 * Every public function returns an rb_status. RB_OK is zero; anything else is an
 * error whose generic meaning is rb_strerror(status) and whose specific story
 * (which argument, what was wrong) is rb_context_message(ctx).
 *
 *     rb_status st = rb_tensor_alloc(ctx, &t, (rb_shape){1, 1, 1, 64, 64});
 *     if (st != RB_OK)
 *         fprintf(stderr, "%s: %s\n", rb_strerror(st), rb_context_message(ctx));
 *
 * Codes and messages come from one X-macro list, so they cannot drift apart.
 */
#ifndef RESBRIDGE_STATUS_H
#define RESBRIDGE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#define RB_STATUS_LIST(X)                                                    \
    X(RB_OK,           "success")                                            \
    X(RB_EINVAL,       "invalid argument")                                   \
    X(RB_ENULL,        "required pointer argument is NULL")                  \
    X(RB_ESHAPE,       "tensor shapes do not match")                         \
    X(RB_ENOMEM,       "out of memory")                                      \
    X(RB_EIO,          "input/output error")                                 \
    X(RB_EFORMAT,      "file is corrupt or not in the expected format")      \
    X(RB_EDIVERGED,    "iteration diverged")                                 \
    X(RB_EMAXITER,     "iteration limit reached before the tolerance")       \
    X(RB_ELAPACK,      "LAPACK reported a failure")                          \
    X(RB_ESUNDIALS,    "SUNDIALS reported a failure")                        \
    X(RB_EUNSUPPORTED, "operation not supported by this operator")          \
    X(RB_ENOTFOUND,    "file or data set not found")                         \
    X(RB_ECALLBACK,    "a user callback reported a failure")

#define RB_STATUS_ENUM_(name, msg) name,
typedef enum rb_status { RB_STATUS_LIST(RB_STATUS_ENUM_) RB_STATUS_COUNT } rb_status;
#undef RB_STATUS_ENUM_

/* Generic message for a status; never NULL ("unknown status" for out-of-range values). */
const char *rb_strerror(rb_status status);

/* Name of the code as written in C ("RB_ESHAPE"); never NULL. */
const char *rb_status_name(rb_status status);

#ifdef __cplusplus
}
#endif
#endif
