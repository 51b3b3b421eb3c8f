/*-------------------------------------------------------------------------
 *
 * sink.h
 *	  The interface between the relay and the kinds of destination.
 *
 *	  A sink kind is one file that fills a SinkRoutine (as an index access
 *	  method fills an IndexAmRoutine) and one line of the registry in
 *	  sink_registry.c.  The relay's loop calls the callbacks and never
 *	  names a kind; no callback of a sink calls back into the relay's
 *	  files (a kind's own SQL functions, such as eo.read(), may signal the
 *	  relay through relay_shmem.c).
 *
 *	  Two ways to deliver:
 *	  - inline (deliver): inside the relay's transaction, which records the
 *		outcome; what the sink queued goes out when it commits (NOTIFY);
 *	  - asynchronous (start, wait events, collect, release): after the
 *		transaction that claimed the messages has committed, with no
 *		transaction open while they are on the wire (HTTP).  The sink's
 *		file descriptors join the relay's WaitEventSet.
 *	  Either way the sink classifies each outcome in a SinkOutcome; the
 *	  relay alone decides what follows from it (relay_delivery.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_SINK_H
#define EO_SINK_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "lib/ilist.h"
#include "nodes/pg_list.h"
#include "storage/latch.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "outbox.h"

struct DestinationConfig;

/* How one attempt ended, as the sink sees it. */
typedef enum SinkResult
{
	SINK_DELIVERED,				/* the receiver has it */
	SINK_RETRY,					/* try again later */
	SINK_PERMANENT,				/* retrying cannot help: dead at once */
	SINK_DISABLE				/* the receiver is gone: disable the
								 * destination, keep the message waiting */
} SinkResult;

typedef struct SinkOutcome
{
	SinkResult	result;
	int64		retry_after_us; /* SINK_RETRY: the receiver's wish, or -1 for
								 * the destination's schedule */
	const char *error;			/* NULL when delivered */
	const char *disable_reason; /* SINK_DISABLE */
	/* For the attempt log (sinks with logs_attempts). */
	int			status;			/* protocol status code, or -1 for none */
	double		latency_ms;
	const char *response;		/* start of the answer, or NULL */
} SinkOutcome;

/*
 * One message on its way to one destination through an asynchronous sink.
 * The relay allocates it and owns it; the sink keeps its own state in
 * "private" (freed by release) and fills "outcome" when it is finished.
 */
typedef struct SinkSend
{
	dlist_node	node;			/* in one of the relay's lists */
	int32		dest_id;
	pg_uuid_t	msg_id;
	char	   *key;			/* NULL: no key */
	int64		seq;			/* position in the log; 0 for a parked
								 * delivery's retry */
	int64		recorded_seq;	/* log windows: the destination's cursor
								 * when the window opened (every earlier
								 * window is recorded, and every retry
								 * finished before it); 0 for retries */
	int			attempt;		/* 1 for the first attempt */
	TimestampTz started_at;
	bool		finished;
	void	   *private;		/* the sink's */
	SinkOutcome outcome;
} SinkSend;

/* A descriptor an asynchronous sink waits on. */
typedef struct SinkSocket
{
	pgsocket	fd;
	uint32		events;			/* WL_SOCKET_READABLE / WL_SOCKET_WRITEABLE */
} SinkSocket;

typedef struct SinkRoutine
{
	const char *kind;			/* eo.destination.kind */
	const char *option_names;	/* for the hint of an unknown option */

	/*
	 * Options.  init_options sets the sink's defaults in cfg (and
	 * cfg->sink_options); parse_option takes one option of the kind's own
	 * and returns false for a name it does not know; check_options runs
	 * after every option was parsed (required options).  may_configure,
	 * if set, raises an error when the current user may not create or
	 * alter destinations of this kind; check_target whether the
	 * configured target is allowed (both at create/alter time only).
	 */
	void		(*init_options) (struct DestinationConfig *cfg);
	bool		(*parse_option) (const char *name, const JsonbValue *v,
								 struct DestinationConfig *cfg);
	void		(*check_options) (struct DestinationConfig *cfg);
	void		(*may_configure) (void);
	void		(*check_target) (const struct DestinationConfig *cfg);
	const char *default_retry_delays;	/* NULL: eo.retry_delays */
	int			default_concurrency;	/* asynchronous sinks */
	const int  *concurrency_cap;	/* a setting that caps "concurrency"
									 * (eo.http_max_concurrency for http), or
									 * NULL: the option alone */
	bool		logs_attempts;	/* attempts go to eo.http_attempt */

	/* Inline delivery: fill *out (the relay's transaction is open). */
	void		(*deliver) (const struct DestinationConfig *dest,
							const EoMessage *msg, SinkOutcome *out);

	/*
	 * Asynchronous delivery.  start begins sending (no transaction open);
	 * it may finish the send at once (send->finished).  wait_sockets says
	 * which descriptors the relay's wait must watch (an array the sink
	 * owns, valid until the next call into the sink), with a generation
	 * that changes whenever a descriptor is opened or closed (the relay
	 * keeps its wait set between waits and rebuilds it only then), and may
	 * lower *timeout_ms; handle_events gets every event the wait returned
	 * (the sink's have user_data = the routine) and lets the sink
	 * progress; collect moves finished sends to "done".  release frees a
	 * send's private state (finished or not).
	 */
	void		(*start) (SinkSend *send, const struct DestinationConfig *dest,
						  const EoMessage *msg);
	int			(*wait_sockets) (const SinkSocket **sockets, uint64 *generation,
								 long *timeout_ms);
	void		(*handle_events) (WaitEvent *events, int nevents);
	void		(*collect) (dlist_head *done);
	void		(*release) (SinkSend *send);

	/*
	 * Optional: the sink's share of the relay's housekeeping step (its
	 * transaction open, SPI connected), keeping the sink's own tables
	 * bounded.  Returns the number of rows it removed.
	 */
	int			(*housekeeping) (void);

	/*
	 * Optional: work that falls due with time rather than with a message
	 * (a queue's lease running out), in the relay's retry step (its
	 * transaction open, SPI connected).  "dests" lists every destination
	 * (DestinationConfig *), of all kinds; "signalled" says that a
	 * consumer function asked for this moment (eo_relay_timer_at()).
	 * Returns when the sink wants to be called again, or DT_NOEND; the
	 * relay may call it earlier.
	 */
	TimestampTz (*timers) (List *dests, TimestampTz now, bool signalled);
} SinkRoutine;

/* sink_registry.c */
extern const SinkRoutine *eo_sink_lookup(const char *kind);
extern const SinkRoutine *const *eo_sink_all(int *n);
extern const char *eo_sink_kind_list(void);

/* The sinks. */
extern const SinkRoutine eo_notify_sink;
extern const SinkRoutine eo_http_sink;
extern const SinkRoutine eo_nats_sink;
extern const SinkRoutine eo_queue_sink;
extern const SinkRoutine eo_kafka_sink;

static inline bool
eo_sink_is_async(const SinkRoutine *sink)
{
	return sink->start != NULL;
}

#endif							/* EO_SINK_H */
