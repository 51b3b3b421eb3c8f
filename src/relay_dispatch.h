/*-------------------------------------------------------------------------
 *
 * relay_dispatch.h
 *	  Deliveries through asynchronous sinks (relay_dispatch.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_RELAY_DISPATCH_H
#define EO_RELAY_DISPATCH_H

#include "postgres.h"

#include "nodes/pg_list.h"

extern int	eo_dispatch_step(List *dests, int window_size, bool look_all,
							 int64 *delivered);
extern void eo_dispatch_step_done(bool committed);
extern bool eo_dispatch_step_wanted(void);
extern bool eo_dispatch_busy(void);
extern TimestampTz eo_dispatch_next_due(void);
extern int	eo_dispatch_wait(long timeout_ms, bool *latch_set);

#endif							/* EO_RELAY_DISPATCH_H */
