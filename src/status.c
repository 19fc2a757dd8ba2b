/* status.c — messages and names from the one X-macro list in status.h. */
#include "resbridge/status.h"

#define RB_STATUS_MSG_(name, msg) msg,
static const char *const status_messages[] = {RB_STATUS_LIST(RB_STATUS_MSG_)};
#undef RB_STATUS_MSG_
#define RB_STATUS_NAME_(name, msg) #name,
static const char *const status_names[] = {RB_STATUS_LIST(RB_STATUS_NAME_)};
#undef RB_STATUS_NAME_

_Static_assert(sizeof status_messages / sizeof *status_messages == RB_STATUS_COUNT,
               "one message per status");
_Static_assert(sizeof status_names / sizeof *status_names == RB_STATUS_COUNT, "one name per status");

const char *rb_strerror(rb_status status)
{
    if ((unsigned)status >= RB_STATUS_COUNT) return "unknown status";
    return status_messages[status];
}

const char *rb_status_name(rb_status status)
{
    if ((unsigned)status >= RB_STATUS_COUNT) return "RB_UNKNOWN";
    return status_names[status];
}
