/*-------------------------------------------------------------------------
 *
 * sink_queue.c
 *	  The "queue" sink: routed messages stay in eo.queue_message until a
 *	  consumer acknowledges them, and the SQL functions consumers call:
 *	  eo.read(), eo.ack() and eo.nack().
 *
 *	  Delivery is inline: the relay's transaction inserts the message into
 *	  eo.queue_message (a copy of the message, so that nothing here depends
 *	  on how the message log is stored) and queues a NOTIFY on the
 *	  destination's "channel", if it has one.  PostgreSQL folds identical
 *	  notifications of one transaction into one, so a relay batch sends a
 *	  single notification however many messages it enqueued.
 *
 *	  A row of eo.queue_message is, by its columns:
 *		ready		dead_at IS NULL AND visible_at <= now (this includes
 *					a lease that expired: it may still be acked until
 *					somebody reads the message again)
 *		leased		dead_at IS NULL AND lease IS NOT NULL AND visible_at > now
 *		retrying	dead_at IS NULL AND lease IS NULL AND visible_at > now
 *		dead		dead_at IS NOT NULL
 *	  eo.read() picks ready messages with the scan of queue_scan.c, which
 *	  locks them as FOR UPDATE SKIP LOCKED would, so that readers never
 *	  wait for each other.  A keyed message is handed out only while no
 *	  earlier message of its key is left in the queue alive (ready, leased
 *	  or retrying): per-key order.  Each hand-out counts an attempt and
 *	  gets a lease of its own: the message's qseq times 65,536 plus the
 *	  attempt (1 to 65,535; attempts are never reset), so that eo.ack()
 *	  and eo.nack() find the row by qseq through the index of alive
 *	  messages and then compare the whole lease.  A hand-out changes no
 *	  indexed column: on a page with room (the table's fillfactor is 50)
 *	  it is a HOT update, with no index entry written.  A message read
 *	  again after max_attempts hand-outs, or given back by eo.nack() after
 *	  its last one, is dead: it no longer holds its key, and eo.redrive()
 *	  enqueues it again, at the back of the queue under a new qseq (never
 *	  in place: see queue_scan.c).  eo.ack() deletes the rows of current
 *	  leases in the caller's transaction and counts them in eo.queue_ack.
 *	  The channel is also notified when eo.ack() makes the next message of
 *	  a key readable, and when eo.nack() gives a message back at once; the
 *	  relay's timers (queue_timers) notify it when a lease runs out or a
 *	  nack's delay has passed.
 *
 *	  Options:
 *		channel				text, 1..63 bytes: NOTIFY channel of the
 *							wake-up (payload: the destination's name);
 *							none by default
 *		visibility_timeout	interval > 0, at most 365 days; default 30 s
 *		consumers			array of role names that may read, ack and
 *							nack (besides the extension's owner and
 *							superusers); the roles must exist when the
 *							destination is created or altered
 *		max_attempts		hand-outs before a message is dead
 *		retry_delays		how long eo.nack(delay => NULL) keeps a message
 *							back, by attempt; default 0 (at once)
 *
 *	  Privileges: the functions are not SECURITY DEFINER.  They check the
 *	  calling role against the destination, then run their statements as
 *	  the extension's owner (whose tables these are); an error on the way
 *	  restores the caller's identity with the (sub)transaction's abort.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "destination.h"
#include "message_log.h"
#include "queue_scan.h"
#include "relay.h"
#include "sink.h"

PG_FUNCTION_INFO_V1(eo_read);
PG_FUNCTION_INFO_V1(eo_ack);
PG_FUNCTION_INFO_V1(eo_nack);

/*
 * Leases: qseq << QUEUE_ATTEMPT_BITS | the attempt.  A message handed out
 * QUEUE_MAX_HANDOUTS times dies at the next read, whatever max_attempts
 * says (the schema caps qseq at 2^47 - 1, so that a lease stays positive).
 */
#define QUEUE_ATTEMPT_BITS	16
#define QUEUE_MAX_HANDOUTS	((1 << QUEUE_ATTEMPT_BITS) - 1)

/* Limits of the consumer functions' arguments. */
#define QUEUE_MAX_READ		10000
#define QUEUE_MAX_LEASES	100000
#define QUEUE_MAX_INTERVAL_US	((int64) 365 * USECS_PER_DAY)
#define QUEUE_MAX_CONSUMERS		100

/*
 * A lease that is no longer current (documented in the README): class QL,
 * in the range the SQL standard leaves to implementations (as IK of the
 * idempotency keys).
 */
#define ERRCODE_EO_STALE_LEASE	MAKE_SQLSTATE('Q','L','0','0','1')

typedef struct QueueOptions
{
	char	   *channel;		/* NULL: no wake-up */
	int64		visibility_us;
	int			nconsumers;
	char	  **consumers;		/* role names */
} QueueOptions;

#define QUEUE_OPTIONS(cfg) ((QueueOptions *) (cfg)->sink_options)

static SPIPlanPtr insert_plan = NULL;

/* Microseconds of an interval (a month counts as 30 days). */
static double
interval_us(const Interval *iv)
{
	return (double) iv->time + (double) iv->day * USECS_PER_DAY +
		(double) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
}

static void
queue_init_options(DestinationConfig *cfg)
{
	QueueOptions *opts = palloc0(sizeof(QueueOptions));

	opts->visibility_us = 30 * USECS_PER_SEC;
	cfg->sink_options = opts;
}

/*
 * queue_parse_option
 *		One option of the queue kind; false for a name it does not know.
 *		Role names are only checked for existence by queue_check_target (a
 *		role dropped later must not stop the relay from loading).
 */
static bool
queue_parse_option(const char *name, const JsonbValue *v, DestinationConfig *cfg)
{
	QueueOptions *opts = QUEUE_OPTIONS(cfg);

	if (strcmp(name, "channel") == 0)
	{
		if (v->type != jbvString)
			eo_bad_option(name, "a string");
		if (v->val.string.len == 0 || v->val.string.len >= NAMEDATALEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"channel\" must be 1 to %d bytes long", NAMEDATALEN - 1)));
		opts->channel = pnstrdup(v->val.string.val, v->val.string.len);
		return true;
	}
	if (strcmp(name, "visibility_timeout") == 0)
	{
		Datum		d;
		double		us;

		if (v->type != jbvString)
			eo_bad_option(name, "an interval string, such as \"30s\"");
		d = DirectFunctionCall3(interval_in,
								CStringGetDatum(pnstrdup(v->val.string.val, v->val.string.len)),
								ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
		us = interval_us(DatumGetIntervalP(d));
		if (us <= 0 || us > (double) QUEUE_MAX_INTERVAL_US)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"visibility_timeout\" must be longer than 0 and at most 365 days")));
		opts->visibility_us = (int64) us;
		return true;
	}
	if (strcmp(name, "consumers") == 0)
	{
		JsonbIterator *it;
		JsonbValue	elem;
		JsonbIteratorToken tok;
		int			n = 0;

		if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
			eo_bad_option(name, "an array of role names");
		if (JsonContainerSize(v->val.binary.data) > QUEUE_MAX_CONSUMERS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"consumers\" has more than %d entries", QUEUE_MAX_CONSUMERS)));
		opts->consumers = palloc0(sizeof(char *) * (JsonContainerSize(v->val.binary.data) + 1));
		it = JsonbIteratorInit(v->val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok != WJB_ELEM)
				continue;
			if (elem.type != jbvString || elem.val.string.len == 0 ||
				elem.val.string.len >= NAMEDATALEN)
				eo_bad_option(name, "an array of role names");
			opts->consumers[n++] = pnstrdup(elem.val.string.val, elem.val.string.len);
		}
		opts->nconsumers = n;
		return true;
	}
	return false;
}

/* Is eo.queue_message there (the objects are of 0.6.0 or later)? */
static bool
queue_tables_exist(void)
{
	Oid			nsp = get_namespace_oid("eo", true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid("queue_message", nsp));
}

/*
 * At create/alter time: the queue's table exists (the relay could not
 * enqueue into objects older than the library), and every consumer role
 * exists.
 */
static void
queue_check_target(const DestinationConfig *cfg)
{
	const QueueOptions *opts = QUEUE_OPTIONS(cfg);

	if (!queue_tables_exist())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("destinations of kind \"queue\" need the objects of eo_processing 0.6.0"),
				 errhint("Run ALTER EXTENSION eo_processing UPDATE.")));
	for (int i = 0; i < opts->nconsumers; i++)
		(void) get_role_oid(opts->consumers[i], false);
}

/*
 * lock_destination_for_enqueue
 *		Hold the destination row FOR KEY SHARE before this transaction
 *		draws its first qseq for the queue: eo.redrive() takes the row FOR
 *		UPDATE before it draws, so the two never draw while the other one
 *		is open, and qseq order is commit order between them.  (Without
 *		it, the enqueueing INSERT drew first and only then waited, in its
 *		foreign-key check, for a redrive that drew a later qseq and
 *		committed first: a reader could hand out the redriven message and
 *		then the earlier-numbered one of the same key.)  Once per
 *		transaction and destination.
 */
static void
lock_destination_for_enqueue(int32 dest_id)
{
	static SPIPlanPtr plan = NULL;
	static LocalTransactionId locked_lxid = InvalidLocalTransactionId;
	static List *locked = NIL;	/* in TopTransactionContext */
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(dest_id)};
	MemoryContext old;

	if (locked_lxid != MyProc->lxid)
	{
		locked = NIL;			/* freed with its transaction */
		locked_lxid = MyProc->lxid;
	}
	else if (list_member_int(locked, dest_id))
		return;
	(void) eo_relay_prepare(&plan,
							"SELECT 1 FROM eo.destination WHERE id = $1 FOR KEY SHARE",
							1, types);
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing: could not lock destination %d", dest_id);
	old = MemoryContextSwitchTo(TopTransactionContext);
	locked = lappend_int(locked, dest_id);
	MemoryContextSwitchTo(old);
}

/*
 * queue_deliver
 *		Enqueue a message, in the relay's transaction (SPI connected), and
 *		queue the wake-up notification.  An error aborts the relay's step:
 *		nothing is recorded and the batch is routed again.
 */
static void
queue_deliver(const DestinationConfig *dest, const EoMessage *msg, SinkOutcome *out)
{
	const QueueOptions *opts = QUEUE_OPTIONS(dest);
	Oid			types[8] = {INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDOID,
	TEXTOID, TEXTOID, JSONBOID, JSONBOID};
	Datum		values[9];
	char		nulls[9];
	int			rc;

	if (insert_plan == NULL)
	{
		Oid			all[9];

		memcpy(all, types, sizeof(types));
		all[8] = TEXTOID;
		(void) eo_relay_prepare(&insert_plan,
								"INSERT INTO eo.queue_message (destination_id, visible_at, enqueued_at,"
								" published_at, id, topic, key, headers, payload, payload_text)"
								" VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9)", 9, all);
	}
	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(dest->id);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = TimestampTzGetDatum(msg->published_at);
	values[3] = UUIDPGetDatum(&msg->id);
	values[4] = CStringGetTextDatum(msg->topic);
	values[5] = msg->key ? CStringGetTextDatum(msg->key) : (Datum) 0;
	nulls[5] = msg->key ? ' ' : 'n';
	values[6] = msg->headers ? JsonbPGetDatum(msg->headers) : (Datum) 0;
	nulls[6] = msg->headers ? ' ' : 'n';
	values[7] = msg->payload ? JsonbPGetDatum(msg->payload) : (Datum) 0;
	nulls[7] = msg->payload ? ' ' : 'n';
	values[8] = msg->payload_text ? CStringGetTextDatum(msg->payload_text) : (Datum) 0;
	nulls[8] = msg->payload_text ? ' ' : 'n';
	/*
	 * A transaction id before the qseq is drawn: eo.read()'s scan relies
	 * on it (see queue_scan.c); and no redrive of the queue open meanwhile.
	 */
	(void) GetCurrentTransactionId();
	lock_destination_for_enqueue(dest->id);
	rc = SPI_execute_plan(insert_plan, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "eo_processing: enqueueing failed: %s", SPI_result_code_string(rc));
	if (opts->channel)
		Async_Notify(opts->channel, dest->name);

	memset(out, 0, sizeof(SinkOutcome));
	out->status = -1;
	out->retry_after_us = -1;
	out->result = SINK_DELIVERED;
}

/*
 * queue_housekeeping
 *		Fold the rows eo.ack() appended to eo.queue_ack into one per
 *		destination (SPI connected, in the relay's housekeeping step).
 *		Returns the rows removed.  Objects older than 0.6.0 (before ALTER
 *		EXTENSION UPDATE) have no queue tables: nothing to do.
 */
static int
queue_housekeeping(void)
{
	int			rc;

	if (!queue_tables_exist())
		return 0;
	rc = SPI_execute("WITH gone AS (DELETE FROM eo.queue_ack RETURNING destination_id, acked),"
					 " sums AS (INSERT INTO eo.queue_ack (destination_id, acked)"
					 "  SELECT destination_id, sum(acked) FROM gone GROUP BY destination_id"
					 "  RETURNING 1)"
					 " SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM sums)",
					 false, 0);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		return 0;
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		return isnull ? 0 : (int) DatumGetInt64(d);
	}
}

/*
 * Timers: a message becomes readable again when its lease runs out or the
 * delay of eo.nack() has passed, and nothing else would tell the channel's
 * listeners.  eo.read() and eo.nack() tell the relay when that will be
 * (eo_relay_timer_at(), for queues with a channel); the relay calls
 * queue_timers() then ("signalled"), and it notifies every queue with a
 * channel that has readable messages.  Because the relay keeps only the
 * earliest such time, queue_timers() also remembers, per queue, the
 * earliest time still ahead in the table ("due") and notifies the queue
 * once that has passed.  A wake-up may be spurious (the message was
 * acknowledged meanwhile, or it was another queue's lease): a consumer
 * that wakes for nothing reads nothing.  A queue seen for the first time
 * (the relay started, the destination is new) is notified if it has
 * readable messages.  Timers run at most every QUEUE_TIMER_MIN_US, so
 * that many leases running out one after the other cost a few statements
 * a second, not one each.
 *
 * No index orders the leased messages by the end of their lease (a
 * hand-out would then write an index entry): the statement reads every
 * alive message of the queues with a channel.  So that a long queue does
 * not keep the relay busy with it, the pause before the next run is also
 * at least QUEUE_TIMER_COST_FACTOR times what this one took (a queue of a
 * million messages: a wake-up up to a few seconds late, a share of one
 * CPU under 10 %).
 */
#define QUEUE_TIMER_MIN_US	(200 * 1000)
#define QUEUE_TIMER_COST_FACTOR	10

typedef struct QueueTimer
{
	int32		dest_id;
	TimestampTz due;			/* DT_NOEND: nothing ahead */
} QueueTimer;

static QueueTimer *queue_timers_state = NULL;	/* in TopMemoryContext */
static int	queue_timers_n = 0;
static SPIPlanPtr timers_plan = NULL;

/* The timer of a destination in the state, or NULL if it has none yet. */
static QueueTimer *
queue_timer_find(int32 dest_id)
{
	for (int i = 0; i < queue_timers_n; i++)
	{
		if (queue_timers_state[i].dest_id == dest_id)
			return &queue_timers_state[i];
	}
	return NULL;
}

/*
 * queue_timers
 *		Notify the channels of the queues whose due time has passed (see
 *		above) and work out the next due times: one statement for all
 *		queues with a channel, in the relay's retry step (SPI connected).
 *		Returns the earliest next due time, no sooner than
 *		QUEUE_TIMER_MIN_US from now, or DT_NOEND.
 */
static TimestampTz
queue_timers(List *dests, TimestampTz now, bool signalled)
{
	ListCell   *lc;
	Datum	   *ids;
	int			nids = 0;
	QueueTimer *next_state;
	TimestampTz next = DT_NOEND;
	bool		first_run = (queue_timers_state == NULL);
	int64		took_us = 0;

	ids = palloc(sizeof(Datum) * Max(list_length(dests), 1));
	foreach(lc, dests)
	{
		DestinationConfig *dest = lfirst(lc);

		if (dest->sink == &eo_queue_sink && QUEUE_OPTIONS(dest)->channel != NULL)
			ids[nids++] = Int32GetDatum(dest->id);
	}
	next_state = MemoryContextAllocZero(TopMemoryContext, sizeof(QueueTimer) * Max(nids, 1));
	if (nids > 0)
	{
		Oid			types[2] = {TIMESTAMPTZOID, INT4ARRAYOID};
		Datum		args[2];

		if (timers_plan == NULL)
		{
			(void) eo_relay_prepare(&timers_plan,
									"SELECT d.id,"
									"       EXISTS (SELECT 1 FROM eo.queue_message q"
									"                WHERE q.destination_id = d.id AND q.dead_at IS NULL"
									"                  AND q.visible_at <= $1),"
									"       (SELECT min(q.visible_at) FROM eo.queue_message q"
									"         WHERE q.destination_id = d.id AND q.dead_at IS NULL"
									"           AND q.visible_at > $1)"
									"  FROM unnest($2) AS d(id)", 2, types);
		}
		args[0] = TimestampTzGetDatum(now);
		args[1] = PointerGetDatum(construct_array(ids, nids, INT4OID, 4, true, TYPALIGN_INT));
		if (SPI_execute_plan(timers_plan, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "eo_processing: reading the queues' timers failed");
		took_us = GetCurrentTimestamp() - now;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int32		id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			bool		readable = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
			Datum		due = SPI_getbinval(tup, desc, 3, &isnull);
			QueueTimer *old = first_run ? NULL : queue_timer_find(id);
			DestinationConfig *dest = NULL;

			foreach(lc, dests)
			{
				if (((DestinationConfig *) lfirst(lc))->id == id)
					dest = lfirst(lc);
			}
			if (dest == NULL)
				continue;		/* cannot happen: the ids come from dests */
			if (readable && (old == NULL || old->due <= now || signalled))
				Async_Notify(QUEUE_OPTIONS(dest)->channel, dest->name);
			next_state[r].dest_id = id;
			next_state[r].due = isnull ? DT_NOEND : DatumGetTimestampTz(due);
			next = Min(next, next_state[r].due);
		}
	}
	if (queue_timers_state != NULL)
		pfree(queue_timers_state);
	queue_timers_state = next_state;
	queue_timers_n = nids;
	pfree(ids);
	if (next == DT_NOEND)
		return DT_NOEND;
	return Max(next, now + Max(QUEUE_TIMER_MIN_US, QUEUE_TIMER_COST_FACTOR * took_us));
}

const SinkRoutine eo_queue_sink = {
	.kind = "queue",
	.option_names = "channel, visibility_timeout, consumers, max_attempts and retry_delays",
	.init_options = queue_init_options,
	.parse_option = queue_parse_option,
	.check_target = queue_check_target,
	.default_retry_delays = "0",
	.deliver = queue_deliver,
	.housekeeping = queue_housekeeping,
	.timers = queue_timers,
};

/* ---------------------------------------------------------------------
 * The consumer functions
 * ---------------------------------------------------------------------
 */

static bool queue_objects_current(void);

/* A queue as a consumer function sees it. */
typedef struct QueueCall
{
	DestinationConfig cfg;
	Oid			saved_user;
	int			saved_sec_context;
} QueueCall;

/*
 * queue_open
 *		Find the queue destination called "name", check that the calling
 *		role may consume from it, then connect SPI and run as the
 *		extension's owner until queue_close().  Errors: 22004 (NULL name),
 *		42704 (no such destination), 42809 (not a queue), 42501 (the role
 *		is not a consumer).  The configuration is palloc'd in the caller's
 *		context.
 */
static void
queue_open(FunctionCallInfo fcinfo, QueueCall *q)
{
	static SPIPlanPtr find_plan = NULL;
	char	   *name;
	Oid			owner = eo_extension_owner();
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	bool		isnull;
	char	   *kind;
	Jsonb	   *options;
	int32		id;
	MemoryContext callercxt = CurrentMemoryContext;
	bool		allowed;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("destination must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!queue_objects_current())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the objects of extension eo_processing are older than its library"),
				 errdetail("eo.read(), eo.ack() and eo.nack() need the queue table of eo_processing 0.8.0."),
				 errhint("Run ALTER EXTENSION eo_processing UPDATE.")));

	GetUserIdAndSecContext(&q->saved_user, &q->saved_sec_context);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "eo_processing: SPI_connect failed");
	SetUserIdAndSecContext(owner, q->saved_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	if (find_plan == NULL)
	{
		/* Every call of a consumer function looks its queue up: keep the plan. */
		(void) eo_relay_prepare(&find_plan,
								"SELECT id, kind, options FROM eo.destination WHERE name = $1",
								1, argtypes);
	}
	args[0] = CStringGetTextDatum(name);
	if (SPI_execute_plan(find_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing: reading eo.destination failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("destination \"%s\" does not exist", name)));
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	{
		MemoryContext spicxt = MemoryContextSwitchTo(callercxt);

		kind = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 2, &isnull));
		options = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 3, &isnull));
		MemoryContextSwitchTo(spicxt);
	}
	if (strcmp(kind, eo_queue_sink.kind) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("destination \"%s\" is not a queue", name),
				 errdetail("It is of kind \"%s\".", kind),
				 errhint("eo.read(), eo.ack() and eo.nack() work on destinations of kind \"queue\".")));
	{
		MemoryContext spicxt = MemoryContextSwitchTo(callercxt);

		eo_parse_destination(kind, options, &q->cfg);
		MemoryContextSwitchTo(spicxt);
	}
	q->cfg.id = id;
	q->cfg.name = name;

	/* The caller's rights, checked as the caller. */
	allowed = superuser_arg(q->saved_user) ||
		(OidIsValid(owner) && has_privs_of_role(q->saved_user, owner));
	for (int i = 0; i < QUEUE_OPTIONS(&q->cfg)->nconsumers && !allowed; i++)
	{
		Oid			role = get_role_oid(QUEUE_OPTIONS(&q->cfg)->consumers[i], true);

		allowed = OidIsValid(role) && has_privs_of_role(q->saved_user, role);
	}
	if (!allowed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for queue \"%s\"", name),
				 errdetail("Only the roles named in the destination's \"consumers\" option, the owner of extension eo_processing and superusers may read, acknowledge or give back its messages."),
				 errhint("The owner adds a role with eo.alter_destination('%s', '{\"consumers\": [...]}', replace => false).",
						 name)));
}

/*
 * Has eo.queue_message the index of 0.8.0 (queue_message_alive)?  Between
 * a new library and ALTER EXTENSION UPDATE it has not; the relay still
 * enqueues into the older table.
 */
static bool
queue_objects_current(void)
{
	return OidIsValid(eo_relation_oid("queue_message_alive"));
}

/* Back to the caller's identity, and disconnect SPI. */
static void
queue_close(QueueCall *q)
{
	SetUserIdAndSecContext(q->saved_user, q->saved_sec_context);
	SPI_finish();
}

/*
 * interval_arg
 *		An interval argument in microseconds, refused when negative (or,
 *		unless zero_ok, zero) or longer than 365 days.
 */
static int64
interval_arg(FunctionCallInfo fcinfo, int argno, const char *what, bool zero_ok)
{
	double		us = interval_us(PG_GETARG_INTERVAL_P(argno));

	if (us < 0 || (!zero_ok && us == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg(zero_ok ? "%s must not be negative" : "%s must be positive", what)));
	if (us > (double) QUEUE_MAX_INTERVAL_US)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be longer than 365 days", what)));
	return (int64) us;
}

/* Order of int64 values (leases, qseqs), for qsort() and bsearch(). */
static int
int64_cmp(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * leases_arg
 *		The leases of eo.ack()/eo.nack(): a one-dimensional bigint array
 *		without NULLs.  Returns it (as given) and, in *ndistinct, how many
 *		different leases it holds.
 */
static ArrayType *
leases_arg(FunctionCallInfo fcinfo, int argno, int *ndistinct)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int64	   *vals;
	int			distinct = 0;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("leases must not be null")));
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("leases must be a one-dimensional array")));
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	if (n > QUEUE_MAX_LEASES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many leases: %d", n),
				 errdetail("At most %d leases go in one call.", QUEUE_MAX_LEASES)));
	vals = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("leases must not contain null")));
		vals[i] = DatumGetInt64(elems[i]);
	}
	qsort(vals, n, sizeof(int64), int64_cmp);
	for (int i = 0; i < n; i++)
	{
		if (i == 0 || vals[i] != vals[i - 1])
			distinct++;
	}
	pfree(vals);
	*ndistinct = distinct;
	return arr;
}

/*
 * lease_qseqs
 *		The qseq of each lease (see QUEUE_ATTEMPT_BITS), as a bigint array
 *		palloc'd in the current context: eo.ack() and eo.nack() look the
 *		rows up by it and then compare the whole lease.  A lease that was
 *		never handed out yields a qseq whose row (if any) has another lease.
 */
static ArrayType *
lease_qseqs(ArrayType *leases)
{
	Datum	   *elems;
	int			n;

	deconstruct_array(leases, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, NULL, &n);
	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(DatumGetInt64(elems[i]) >> QUEUE_ATTEMPT_BITS);
	return construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/*
 * stale_lease_error
 *		Raise QL001 for the first lease of "arr" not among the leases in
 *		column 1 of the last SPI result (the rows the call changed, each
 *		with the lease it was held under).  The caller's transaction must
 *		roll back: its work depended on a lease it no longer holds.
 */
static void
stale_lease_error(ArrayType *arr, const char *queue, const char *what)
{
	Datum	   *elems;
	int			n;
	int64		stale = 0;
	int64	   *current = palloc(sizeof(int64) * Max(SPI_processed, 1));

	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;

		current[r] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
												 1, &isnull));
	}
	qsort(current, SPI_processed, sizeof(int64), int64_cmp);
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, NULL, &n);
	for (int i = 0; i < n; i++)
	{
		int64		lease = DatumGetInt64(elems[i]);

		if (bsearch(&lease, current, SPI_processed, sizeof(int64), int64_cmp) == NULL)
		{
			stale = lease;
			break;
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_EO_STALE_LEASE),
			 errmsg("lease " INT64_FORMAT " of queue \"%s\" is no longer current", stale, queue),
			 errdetail("Its message was acknowledged or given back already, or the lease expired and the message was read again."),
			 errhint("Roll back the work done under this lease: %s applies to no message, and another consumer may hold it now.",
					 what)));
}

/* A message eo.read() leased, with its place in the queue. */
typedef struct LeasedRow
{
	int64		qseq;
	HeapTuple	tuple;			/* the row eo.read() returns, and more */
} LeasedRow;

static int
leased_row_order(const void *a, const void *b)
{
	return int64_cmp(&((const LeasedRow *) a)->qseq, &((const LeasedRow *) b)->qseq);
}

/*
 * eo.read(destination text, max_messages int DEFAULT 100,
 *		   visibility interval DEFAULT NULL)
 * RETURNS TABLE (id uuid, lease bigint, topic text, key text, headers jsonb,
 *				  payload jsonb, payload_text text, published_at timestamptz,
 *				  attempt int)
 *
 * Leases up to max_messages ready messages to the caller for "visibility"
 * (NULL: the destination's visibility_timeout), oldest first, skipping
 * rows other readers hold locked (never waits for them).  A message read
 * again after its last attempt is marked dead instead of returned.  The
 * leases take effect when the caller's transaction commits.
 */
Datum
eo_read(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	QueueCall	q;
	int			max_messages;
	int64		visibility_us = -1;
	int			wanted;
	ItemPointerData *tids;
	Datum	   *tid_datums;
	LeasedRow  *leased;
	int			nleased = 0;
	TupleDesc	desc = NULL;
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext old;
	TimestampTz now = GetCurrentTimestamp();

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max_messages must not be null")));
	max_messages = PG_GETARG_INT32(1);
	if (max_messages < 1 || max_messages > QUEUE_MAX_READ)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must be between 1 and %d", QUEUE_MAX_READ)));
	if (!PG_ARGISNULL(2))
		visibility_us = interval_arg(fcinfo, 2, "visibility", false);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	queue_open(fcinfo, &q);
	if (visibility_us < 0)
		visibility_us = QUEUE_OPTIONS(&q.cfg)->visibility_us;

	if (plan == NULL)
	{
		Oid			types[6] = {INT4OID, TIDARRAYOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, INT4OID};

		/*
		 * The candidates eo_queue_pick() locked ($2): each is leased, or
		 * marked dead after its last attempt ($5, and at most $6).
		 */
		(void) eo_relay_prepare(&plan,
								"WITH taken AS ("
								" UPDATE eo.queue_message q"
								"    SET lease = CASE WHEN q.attempt >= least($5, $6) THEN NULL"
								"                     ELSE (q.qseq << " CppAsString2(QUEUE_ATTEMPT_BITS) ") + q.attempt + 1 END,"
								"        attempt = CASE WHEN q.attempt >= least($5, $6) THEN q.attempt"
								"                       ELSE q.attempt + 1 END,"
								"        visible_at = CASE WHEN q.attempt >= least($5, $6) THEN q.visible_at"
								"                          ELSE $4 END,"
								"        dead_at = CASE WHEN q.attempt >= least($5, $6) THEN $3 END"
								"  WHERE q.ctid = ANY ($2) AND q.destination_id = $1"
								" RETURNING q.qseq, q.id, q.lease, q.topic, q.key, q.headers, q.payload,"
								"           q.payload_text, q.published_at, q.attempt, q.dead_at IS NOT NULL)"
								" SELECT id, lease, topic, key, headers, payload, payload_text,"
								"        published_at, attempt, dead, qseq"
								"   FROM taken AS t (qseq, id, lease, topic, key, headers, payload,"
								"                    payload_text, published_at, attempt, dead)",
								6, types);
	}

	/*
	 * Messages that died take places in the batch: read again for those
	 * (a few rounds at most, so that a queue of dying messages cannot keep
	 * one call busy).
	 */
	wanted = max_messages;
	leased = palloc(sizeof(LeasedRow) * max_messages);
	tids = palloc(sizeof(ItemPointerData) * max_messages);
	tid_datums = palloc(sizeof(Datum) * max_messages);
	for (int round = 0; round < 10 && wanted > 0; round++)
	{
		Datum		args[6];
		int			died = 0;
		int			picked;
		uint64		got;

		picked = eo_queue_pick(q.cfg.id, now, wanted, tids);
		if (picked == 0)
			break;
		for (int i = 0; i < picked; i++)
			tid_datums[i] = PointerGetDatum(&tids[i]);
		args[0] = Int32GetDatum(q.cfg.id);
		args[1] = PointerGetDatum(construct_array(tid_datums, picked, TIDOID,
												  sizeof(ItemPointerData), false,
												  TYPALIGN_SHORT));
		args[2] = TimestampTzGetDatum(now);
		args[3] = TimestampTzGetDatum(now + visibility_us);
		args[4] = Int32GetDatum(q.cfg.max_attempts);
		args[5] = Int32GetDatum(QUEUE_MAX_HANDOUTS);
		if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "eo_processing: eo.read() failed");
		got = SPI_processed;
		old = MemoryContextSwitchTo(callcxt);
		if (desc == NULL)
			desc = CreateTupleDescCopy(SPI_tuptable->tupdesc);
		for (uint64 r = 0; r < got; r++)
		{
			bool		isnull;

			if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r], desc, 10, &isnull)))
			{
				died++;
				continue;
			}
			leased[nleased].qseq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], desc, 11, &isnull));
			leased[nleased++].tuple = heap_copytuple(SPI_tuptable->vals[r]);
			wanted--;
		}
		MemoryContextSwitchTo(old);
		if (died == 0)
			break;
	}

	/* Oldest first, also when a later round found older messages. */
	qsort(leased, nleased, sizeof(LeasedRow), leased_row_order);
	for (int i = 0; i < nleased; i++)
	{
		Datum		values[11];
		bool		nulls[11];

		heap_deform_tuple(leased[i].tuple, desc, values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	/* The relay notifies the channel if these leases run out. */
	if (wanted < max_messages && QUEUE_OPTIONS(&q.cfg)->channel)
		eo_relay_timer_at(now + visibility_us);
	queue_close(&q);
	return (Datum) 0;
}

/*
 * eo.ack(destination text, leases bigint[]) RETURNS bigint
 *
 * Finishes the leased messages in the caller's transaction (deletes them)
 * and returns how many.  Any lease that is not current raises QL001 and
 * changes nothing.  Duplicates in the array count once.  Acknowledging a
 * keyed message makes the next one of its key readable: that wakes the
 * listeners of the channel at commit.
 */
Datum
eo_ack(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr count_plan = NULL;
	QueueCall	q;
	ArrayType  *leases;
	int			ndistinct;
	int64		n;
	bool		next_readable = false;

	leases = leases_arg(fcinfo, 1, &ndistinct);
	queue_open(fcinfo, &q);
	if (ndistinct == 0)
	{
		queue_close(&q);
		PG_RETURN_INT64(0);
	}
	if (plan == NULL)
	{
		Oid			types[3] = {INT4OID, INT8ARRAYOID, INT8ARRAYOID};

		(void) eo_relay_prepare(&plan,
								"DELETE FROM eo.queue_message"
								" WHERE destination_id = $1 AND dead_at IS NULL AND qseq = ANY ($3)"
								"   AND lease = ANY ($2)"
								" RETURNING lease, key IS NOT NULL", 3, types);
		types[1] = INT8OID;
		(void) eo_relay_prepare(&count_plan,
								"INSERT INTO eo.queue_ack (destination_id, acked) VALUES ($1, $2)",
								2, types);
	}
	{
		Datum		args[3] = {Int32GetDatum(q.cfg.id), PointerGetDatum(leases),
		PointerGetDatum(lease_qseqs(leases))};

		if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_DELETE_RETURNING)
			elog(ERROR, "eo_processing: eo.ack() failed");
	}
	n = (int64) SPI_processed;
	if (n < ndistinct)
		stale_lease_error(leases, q.cfg.name, "the acknowledgement");
	/* The next message of an acknowledged one's key is readable now. */
	for (uint64 r = 0; r < SPI_processed && !next_readable; r++)
	{
		bool		isnull;

		next_readable = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r],
												   SPI_tuptable->tupdesc, 2, &isnull));
	}
	if (next_readable && QUEUE_OPTIONS(&q.cfg)->channel)
		Async_Notify(QUEUE_OPTIONS(&q.cfg)->channel, q.cfg.name);
	{
		Datum		args[2] = {Int32GetDatum(q.cfg.id), Int64GetDatum(n)};

		if (SPI_execute_plan(count_plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "eo_processing: counting acknowledgements failed");
	}
	queue_close(&q);
	PG_RETURN_INT64(n);
}

/*
 * eo.nack(destination text, leases bigint[], delay interval DEFAULT NULL)
 * RETURNS bigint
 *
 * Gives the leased messages back: readable again after "delay" (NULL: the
 * destination's retry_delays for the attempt made, 0 by default); a
 * message that had its last attempt is dead.  Stale leases raise QL001.
 * A message readable at once wakes the listeners of the channel.
 */
Datum
eo_nack(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	QueueCall	q;
	ArrayType  *leases;
	int			ndistinct;
	int64		n;
	int64		delay_us = -1;
	Datum	   *delays;
	int			ndelays;
	bool		now_ready = false;
	TimestampTz first_later = DT_NOEND;
	TimestampTz now = GetCurrentTimestamp();

	leases = leases_arg(fcinfo, 1, &ndistinct);
	if (!PG_ARGISNULL(2))
		delay_us = interval_arg(fcinfo, 2, "delay", true);
	queue_open(fcinfo, &q);
	if (ndistinct == 0)
	{
		queue_close(&q);
		PG_RETURN_INT64(0);
	}
	if (delay_us >= 0)
	{
		ndelays = 1;
		delays = palloc(sizeof(Datum));
		delays[0] = Int64GetDatum(delay_us);
	}
	else
	{
		ndelays = q.cfg.ndelays;
		delays = palloc(sizeof(Datum) * ndelays);
		for (int i = 0; i < ndelays; i++)
			delays[i] = Int64GetDatum(q.cfg.delays_us[i]);
	}
	if (plan == NULL)
	{
		Oid			types[6] = {INT4OID, INT8ARRAYOID, TIMESTAMPTZOID, INT8ARRAYOID, INT4OID,
		INT8ARRAYOID};

		(void) eo_relay_prepare(&plan,
								"UPDATE eo.queue_message q"
								"   SET lease = NULL,"
								"       visible_at = $3 + make_interval(secs =>"
								"           $4[least(greatest(q.attempt, 1), cardinality($4))] / 1000000.0),"
								"       dead_at = CASE WHEN q.attempt >= $5 THEN $3 END"
								" WHERE q.destination_id = $1 AND q.dead_at IS NULL AND q.qseq = ANY ($6)"
								"   AND q.lease = ANY ($2)"
								" RETURNING (q.qseq << " CppAsString2(QUEUE_ATTEMPT_BITS) ") + q.attempt,"
								"           q.dead_at IS NULL AND q.visible_at <= $3,"
								"           CASE WHEN q.dead_at IS NULL AND q.visible_at > $3"
								"                THEN q.visible_at END",
								6, types);
	}
	{
		Datum		args[6];

		args[0] = Int32GetDatum(q.cfg.id);
		args[1] = PointerGetDatum(leases);
		args[5] = PointerGetDatum(lease_qseqs(leases));
		args[2] = TimestampTzGetDatum(now);
		args[3] = PointerGetDatum(construct_array(delays, ndelays, INT8OID, 8,
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		args[4] = Int32GetDatum(q.cfg.max_attempts);
		if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "eo_processing: eo.nack() failed");
	}
	n = (int64) SPI_processed;
	if (n < ndistinct)
		stale_lease_error(leases, q.cfg.name, "giving it back");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		Datum		later;

		now_ready |= DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
												2, &isnull));
		later = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 3, &isnull);
		if (!isnull)
			first_later = Min(first_later, DatumGetTimestampTz(later));
	}
	if (QUEUE_OPTIONS(&q.cfg)->channel)
	{
		/* Readable now: wake at commit; readable later: the relay will. */
		if (now_ready)
			Async_Notify(QUEUE_OPTIONS(&q.cfg)->channel, q.cfg.name);
		if (first_later != DT_NOEND)
			eo_relay_timer_at(first_later);
	}
	queue_close(&q);
	PG_RETURN_INT64(n);
}
