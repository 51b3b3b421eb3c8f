/*-------------------------------------------------------------------------
 *
 * delivery.h
 *	  What the relay records about deliveries: the exceptional ones
 *	  (eo.delivery: held behind their key, retrying, in flight as a retry,
 *	  dead), the attempt log, and per destination its statistics and its
 *	  cursor in the message log (eo.destination_stats).  A delivery that
 *	  succeeds at its first attempt leaves no row of its own: it only
 *	  moves its destination's cursor.  See delivery.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_DELIVERY_H
#define EO_DELIVERY_H

#include "postgres.h"

#include "utils/array.h"
#include "utils/hsearch.h"
#include "utils/uuid.h"

#include "destination.h"
#include "outbox.h"
#include "sink.h"

/* The states of a row of eo.delivery (its text in SQL). */
typedef enum DeliveryState
{
	DELIVERY_PENDING,			/* waits behind an earlier message of its key,
								 * or for its destination */
	DELIVERY_IN_FLIGHT,			/* a retry on the wire (asynchronous sinks) */
	DELIVERY_RETRYING,			/* failed; next attempt at next_attempt_at */
	DELIVERY_DEAD				/* given up; eo.redrive() sends it again */
} DeliveryState;

extern const char *const eo_delivery_state_names[];

#define EO_INTERRUPTED_ERROR \
	"interrupted: the relay stopped before the outcome was recorded; the receiver may have got the message"

/*
 * The one retry decision: after attempt number "attempt" ended with
 * "outcome", the delivery is delivered (returns false) or goes to
 * *state at *next_at (returns true).
 */
extern bool eo_delivery_next(const DestinationConfig *dest, int attempt,
							 const SinkOutcome *outcome, TimestampTz now,
							 DeliveryState *state, TimestampTz *next_at);

/*
 * What one relay transaction writes, gathered in memory and written with
 * one statement per table by eo_delivery_write().
 */
typedef struct DeliveryWrites
{
	/* new rows of eo.delivery */
	ArrayBuildState *p_dest, *p_msg, *p_key, *p_state, *p_attempts, *p_next,
			   *p_error;
	int			nparked;
	/* rows of eo.delivery (retries) that succeeded: deleted */
	ArrayBuildState *d_dest, *d_msg;
	int			ndone;
	/* rows of eo.delivery (retries) that failed again: updated */
	ArrayBuildState *f_dest, *f_msg, *f_state, *f_next, *f_error;
	int			nfailed;
	/* eo.http_attempt rows */
	ArrayBuildState *a_time, *a_dest, *a_msg, *a_attempt, *a_status, *a_error,
			   *a_latency, *a_body;
	int			nattempts;
	/* destinations to disable, with the reason */
	ArrayBuildState *g_dest, *g_reason;
	int			ngone;
	/* per destination: statistics and cursor (see eo_delivery_count) */
	HTAB	   *stats;
	int64		delivered_total;
} DeliveryWrites;

extern void eo_delivery_writes_init(DeliveryWrites *w);
extern void eo_delivery_park(DeliveryWrites *w, int32 dest_id, const pg_uuid_t *msg_id,
							 const char *key, DeliveryState state, int attempts,
							 TimestampTz next_at, const char *error);
extern void eo_delivery_outcome(DeliveryWrites *w, const DestinationConfig *dest,
								const pg_uuid_t *msg_id, const char *key, int attempt,
								bool parked, TimestampTz started_at,
								const SinkOutcome *outcome, TimestampTz now,
								DeliveryState *state);
extern void eo_delivery_count(DeliveryWrites *w, int32 dest_id, int64 delivered,
							  const char *error);
extern void eo_delivery_cursor(DeliveryWrites *w, int32 dest_id, int64 delivered_seq,
							   int64 sending_seq);
extern int64 eo_delivery_write(DeliveryWrites *w);

/* Keys that hold later messages back, per destination. */
extern HTAB *eo_blocked_keys_load(void);
extern bool eo_blocked_key(HTAB *blocked, int32 dest_id, const char *key, bool add);

/* Parked deliveries that are due, first of their key (one rule). */
typedef struct DueDelivery
{
	int32		dest_id;
	int			attempt;		/* the attempt about to be made */
	EoMessage	msg;
} DueDelivery;

extern int	eo_delivery_claim_due(int32 dest_id, bool inline_kinds, int limit,
								  bool mark_in_flight, MemoryContext cxt,
								  DueDelivery **out);
extern int	eo_delivery_give_up_head(const char *error);
extern TimestampTz eo_delivery_next_due(void);
extern int64 eo_delivery_reset_interrupted(void);
extern void eo_delivery_forget_plans(void);

#endif							/* EO_DELIVERY_H */
