/*-------------------------------------------------------------------------
 *
 * relay_worker.c
 *	  The relay of one database: a background worker that takes committed
 *	  messages out of eo.outbox, routes them to the destinations whose
 *	  subscriptions match, and delivers them.
 *
 *	  Loop (read top-down, from eo_relay_worker_main):
 *		wait on the latch (set when a publishing transaction commits; a
 *		long naptime is only a safety net) and on the sockets of webhook
 *		requests in flight -> route a batch -> retry due NOTIFY deliveries
 *		-> an http step (http_sink.c) -> housekeeping now and then -> wait
 *		again.  Destinations and subscriptions come from relay_config.c.
 *
 *	  Each step is one short transaction: claim with FOR UPDATE SKIP
 *	  LOCKED, deliver, record the result, commit.  NOTIFY deliveries are
 *	  queued inside that transaction, so a notification is sent exactly when
 *	  its delivery is recorded (PostgreSQL sends them at commit).  HTTP
 *	  deliveries are only recorded as pending here; the http step sends
 *	  them outside any transaction.  No transaction stays open while
 *	  waiting.
 *
 *	  Errors are caught per step: the transaction is aborted, the error is
 *	  logged (once per distinct message) and shown in eo.relay_status, the
 *	  batch is halved so that a bad message is isolated, and the worker
 *	  backs off; it never exits because of an error (an uncaught ERROR in a
 *	  background worker would turn into FATAL and a restart loop).
 *
 *	  Ordering: messages are routed in id order.  Publishers of one key are
 *	  serialised (outbox.c), so ids within a key follow commit order.  A
 *	  message whose key has an unfinished delivery to a destination waits
 *	  ("pending") behind it; only dead deliveries stop holding later ones
 *	  back.  Messages without a key never wait for each other.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "destination.h"
#include "eo_processing.h"
#include "http.h"
#include "outbox.h"
#include "relay.h"
#include "relay_config.h"

/* NOTIFY refuses payloads of this many bytes or more (see async.c). */
#define EO_NOTIFY_MAX_PAYLOAD	(BLCKSZ - NAMEDATALEN - 128)

/* What one step decided, accumulated into arrays for set-based SQL. */
typedef struct Outcome
{
	ArrayBuildState *dest_ids;	/* deliveries to insert or update */
	ArrayBuildState *msg_ids;
	ArrayBuildState *keys;
	ArrayBuildState *states;
	ArrayBuildState *attempts;
	ArrayBuildState *next_at;
	ArrayBuildState *errors;
	int			n;
} Outcome;

static RelaySlot *my_slot = NULL;
static Oid	my_dboid = InvalidOid;
static MemoryContext loop_cxt = NULL;
static int	batch_limit = 0;	/* shrinks after errors, grows back */
static bool deliveries_added = false;	/* the last routing batch held some */

static int	consecutive_errors = 0;
static char last_logged_error[EO_RELAY_ERROR_LEN];
static TimestampTz last_logged_at = 0;

/* Saved plans (prepared once per worker). */
static SPIPlanPtr plan_claim = NULL;
static SPIPlanPtr plan_blocked = NULL;
static SPIPlanPtr plan_move = NULL;
static bool plan_move_publisher = false;	/* plan_move copies published_by */
static SPIPlanPtr plan_hold = NULL;
static SPIPlanPtr plan_stats = NULL;
static SPIPlanPtr plan_due = NULL;
static SPIPlanPtr plan_done = NULL;
static SPIPlanPtr plan_failed = NULL;
static SPIPlanPtr plan_next_retry = NULL;

static void
set_state(RelayState state)
{
	if (my_slot != NULL)
		my_slot->state = state;
}

/*
 * eo_relay_prepare
 *		Prepare and keep a plan of the relay (the statement text is a
 *		constant); *plan caches it until eo_relay_free_plans().
 */
SPIPlanPtr
eo_relay_prepare(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "eo_processing relay: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/*
 * messages_have_publisher
 *		Whether eo.outbox and eo.message_log have the published_by column
 *		(since 0.4.1).  The library also serves the objects of older
 *		versions, between its installation and ALTER EXTENSION UPDATE, so
 *		the statements that copy a message name the column only when it is
 *		there.  Two syscache lookups per table; call once per batch.
 */
static bool
messages_have_publisher(void)
{
	Oid			nsp = get_namespace_oid(EO_SCHEMA_NAME, true);
	static const char *const tables[] = {"outbox", "message_log"};

	if (!OidIsValid(nsp))
		return false;
	for (int i = 0; i < lengthof(tables); i++)
	{
		Oid			rel = get_relname_relid(tables[i], nsp);

		if (!OidIsValid(rel) || get_attnum(rel, "published_by") == InvalidAttrNumber)
			return false;
	}
	return true;
}

/* Free kept plans (after an error they may refer to dropped objects). */
void
eo_relay_free_plans(SPIPlanPtr **plans, int nplans)
{
	for (int i = 0; i < nplans; i++)
	{
		if (*plans[i] != NULL)
			SPI_freeplan(*plans[i]);
		*plans[i] = NULL;
	}
}

static void
outcome_init(Outcome *o)
{
	MemoryContext cxt = CurrentMemoryContext;

	o->dest_ids = initArrayResult(INT4OID, cxt, false);
	o->msg_ids = initArrayResult(UUIDOID, cxt, false);
	o->keys = initArrayResult(TEXTOID, cxt, false);
	o->states = initArrayResult(TEXTOID, cxt, false);
	o->attempts = initArrayResult(INT4OID, cxt, false);
	o->next_at = initArrayResult(TIMESTAMPTZOID, cxt, false);
	o->errors = initArrayResult(TEXTOID, cxt, false);
	o->n = 0;
}

static void
outcome_add(Outcome *o, int32 dest_id, pg_uuid_t *msg_id, const char *key,
			const char *state, int32 attempts, TimestampTz next_at,
			const char *error)
{
	MemoryContext cxt = CurrentMemoryContext;
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	*id = *msg_id;
	accumArrayResult(o->dest_ids, Int32GetDatum(dest_id), false, INT4OID, cxt);
	accumArrayResult(o->msg_ids, UUIDPGetDatum(id), false, UUIDOID, cxt);
	accumArrayResult(o->keys, key ? CStringGetTextDatum(key) : (Datum) 0,
					 key == NULL, TEXTOID, cxt);
	accumArrayResult(o->states, CStringGetTextDatum(state), false, TEXTOID, cxt);
	accumArrayResult(o->attempts, Int32GetDatum(attempts), false, INT4OID, cxt);
	accumArrayResult(o->next_at, TimestampTzGetDatum(next_at), false,
					 TIMESTAMPTZOID, cxt);
	accumArrayResult(o->errors, error ? CStringGetTextDatum(error) : (Datum) 0,
					 error == NULL, TEXTOID, cxt);
	o->n++;
}

static Datum
array_of(ArrayBuildState *a)
{
	return makeArrayResult(a, CurrentMemoryContext);
}

/* Read an EoMessage from columns first..first+6 of an SPI tuple. */
void
eo_message_from_spi(EoMessage *msg, HeapTuple tup, TupleDesc desc, int first)
{
	bool		isnull;
	Datum		d;

	memset(msg, 0, sizeof(EoMessage));
	msg->id = *DatumGetUUIDP(SPI_getbinval(tup, desc, first, &isnull));
	msg->published_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, first + 1, &isnull));
	msg->topic = TextDatumGetCString(SPI_getbinval(tup, desc, first + 2, &isnull));
	d = SPI_getbinval(tup, desc, first + 3, &isnull);
	msg->key = isnull ? NULL : TextDatumGetCString(d);
	d = SPI_getbinval(tup, desc, first + 4, &isnull);
	msg->headers = isnull ? NULL : DatumGetJsonbP(d);
	d = SPI_getbinval(tup, desc, first + 5, &isnull);
	msg->payload = isnull ? NULL : DatumGetJsonbP(d);
	d = SPI_getbinval(tup, desc, first + 6, &isnull);
	msg->payload_text = isnull ? NULL : TextDatumGetCString(d);
}

/*
 * deliver_notify
 *		Queue the message's notification (sent when the transaction
 *		commits).  Returns NULL on success, or the reason it cannot be
 *		delivered.
 */
static const char *
deliver_notify(const DestinationConfig *dest, const EoMessage *msg)
{
	const char *channel = dest->channel ? dest->channel : msg->topic;

	if (strlen(channel) >= NAMEDATALEN)
		return "channel name too long for NOTIFY (63 bytes at most); set the destination's \"channel\" option";
	Async_Notify(channel, eo_envelope(msg, EO_NOTIFY_MAX_PAYLOAD));
	return NULL;
}

/* Deliver one message to one destination; NULL or an error text. */
static const char *
deliver(const DestinationConfig *dest, const EoMessage *msg)
{
	switch (dest->kind)
	{
		case DEST_NOTIFY:
			return deliver_notify(dest, msg);
		case DEST_HTTP:
			break;				/* never inline: see http_sink.c */
	}
	return "unknown destination kind";
}

/*
 * Keys with an unfinished delivery, per destination: "<dest id>/<key>".
 * Built per batch from eo.delivery, extended as the batch holds messages.
 */
typedef struct BlockedKey
{
	char		name[EO_MAX_MSG_ID_BYTES + 16];
} BlockedKey;

static HTAB *
blocked_keys_load(void)
{
	HASHCTL		ctl;
	HTAB	   *h;

	ctl.keysize = sizeof(BlockedKey);
	ctl.entrysize = sizeof(BlockedKey);
	ctl.hcxt = CurrentMemoryContext;
	h = hash_create("eo_processing blocked keys", 64, &ctl,
					HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	eo_relay_prepare(&plan_blocked,
			"SELECT destination_id, key FROM eo.delivery"
			" WHERE key IS NOT NULL AND state <> 'dead' GROUP BY 1, 2",
			0, NULL);
	if (SPI_execute_plan(plan_blocked, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read held keys");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		BlockedKey	k;
		int32		dest = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));
		char	   *key = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
															SPI_tuptable->tupdesc, 2, &isnull));

		snprintf(k.name, sizeof(k.name), "%d/%s", dest, key);
		(void) hash_search(h, &k, HASH_ENTER, NULL);
	}
	return h;
}

static bool
blocked_key(HTAB *h, int32 dest, const char *key, bool add)
{
	BlockedKey	k;
	bool		found;

	snprintf(k.name, sizeof(k.name), "%d/%s", dest, key);
	(void) hash_search(h, &k, add ? HASH_ENTER : HASH_FIND, &found);
	return found;
}

/*
 * eo_relay_update_stats
 *		Add delivered counts and last errors to eo.destination_stats:
 *		parallel arrays of destination ids (int4[]), counts (int8[]) and
 *		errors (text[], NULL for none); "total" goes to eo.relay_status.
 */
void
eo_relay_update_stats(Datum ids, Datum counts, Datum errors, int64 total)
{
	Oid			types[3] = {INT4ARRAYOID, INT8ARRAYOID, TEXTARRAYOID};
	Datum		values[3] = {ids, counts, errors};

	eo_relay_prepare(&plan_stats,
					 "UPDATE eo.destination_stats s"
					 "   SET delivered_total = s.delivered_total + t.n,"
					 "       last_success_at = CASE WHEN t.n > 0 THEN now() ELSE s.last_success_at END,"
					 "       last_error = coalesce(t.err, s.last_error),"
					 "       last_error_at = CASE WHEN t.err IS NOT NULL THEN now() ELSE s.last_error_at END"
					 "  FROM unnest($1, $2, $3) AS t(id, n, err)"
					 " WHERE s.destination_id = t.id",
					 3, types);
	if (SPI_execute_plan(plan_stats, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eo_processing relay: could not update destination statistics");
	if (my_slot != NULL)
		my_slot->delivered += total;
}

/* Add delivered counts (and errors) to eo.destination_stats. */
static void
record_stats(List *dests, int64 *delivered, const char **errors)
{
	ArrayBuildState *ids = initArrayResult(INT4OID, CurrentMemoryContext, false);
	ArrayBuildState *counts = initArrayResult(INT8OID, CurrentMemoryContext, false);
	ArrayBuildState *errs = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	ListCell   *lc;
	int			i = 0;
	int			n = 0;
	uint64		total = 0;

	foreach(lc, dests)
	{
		DestinationConfig *d = lfirst(lc);

		if (delivered[i] > 0 || errors[i] != NULL)
		{
			accumArrayResult(ids, Int32GetDatum(d->id), false, INT4OID, CurrentMemoryContext);
			accumArrayResult(counts, Int64GetDatum(delivered[i]), false, INT8OID, CurrentMemoryContext);
			accumArrayResult(errs, errors[i] ? CStringGetTextDatum(errors[i]) : (Datum) 0,
							 errors[i] == NULL, TEXTOID, CurrentMemoryContext);
			total += delivered[i];
			n++;
		}
		i++;
	}
	if (n == 0)
		return;

	eo_relay_update_stats(array_of(ids), array_of(counts), array_of(errs), total);
}

/* Index of a destination in the list (for the per-destination counters). */
static int
dest_index(List *dests, const DestinationConfig *dest)
{
	ListCell   *lc;
	int			i = 0;

	foreach(lc, dests)
	{
		if (lfirst(lc) == dest)
			return i;
		i++;
	}
	return -1;
}

/*
 * route_batch
 *		One routing transaction: claim up to "limit" messages from the
 *		outbox in id order, deliver each to its destinations (or hold it),
 *		move the messages to the log.  Returns the number claimed.
 */
static int
route_batch(int limit)
{
	Oid			claim_types[1] = {INT4OID};
	Datum		claim_args[1];
	SPITupleTable *claimed;
	uint64		nclaimed;
	const RelayConfig *config;
	List	   *dests;
	List	   *routes;
	HTAB	   *blocked;
	Outcome		held;
	ArrayBuildState *moved_ids;
	ArrayBuildState *moved_routes;
	int64	   *delivered;
	const char **errors;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	/* Says whether this batch held any: not a previous batch's answer. */
	deliveries_added = false;
	claim_args[0] = Int32GetDatum(limit);
	eo_relay_prepare(&plan_claim,
			"SELECT id, published_at, topic, key, headers, payload, payload_text"
			"  FROM eo.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
			1, claim_types);
	if (SPI_execute_plan(plan_claim, claim_args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not claim messages");
	claimed = SPI_tuptable;
	nclaimed = SPI_processed;
	if (nclaimed == 0)
		return 0;

	config = eo_relay_config();
	routes = config->routes;
	dests = config->dests;
	blocked = blocked_keys_load();
	delivered = palloc0(sizeof(int64) * (list_length(dests) + 1));
	errors = palloc0(sizeof(char *) * (list_length(dests) + 1));
	outcome_init(&held);
	moved_ids = initArrayResult(UUIDOID, CurrentMemoryContext, false);
	moved_routes = initArrayResult(INT4OID, CurrentMemoryContext, false);

	for (uint64 i = 0; i < nclaimed; i++)
	{
		EoMessage	msg;
		ListCell   *lc;
		int			nroutes = 0;
		pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

		CHECK_FOR_INTERRUPTS();
		eo_message_from_spi(&msg, claimed->vals[i], claimed->tupdesc, 1);

		foreach(lc, routes)
		{
			RelayRoute *r = lfirst(lc);
			DestinationConfig *dest = r->dest;
			const char *error;
			ListCell   *lc2;
			bool		seen = false;

			if (!eo_relay_route_matches(r, msg.topic))
				continue;
			/* Two patterns of one destination matching: deliver once. */
			foreach(lc2, routes)
			{
				RelayRoute *o = lfirst(lc2);

				if (o == r)
					break;
				if (o->dest == dest && eo_relay_route_matches(o, msg.topic))
					seen = true;
			}
			if (seen)
				continue;
			nroutes++;

			if (!dest->enabled || dest->kind == DEST_HTTP ||
				(msg.key != NULL && blocked_key(blocked, dest->id, msg.key, false)))
			{
				/*
				 * Wait behind the key's unfinished delivery: due now, but the
				 * retry pass takes only the first of each key.  HTTP
				 * deliveries always wait here: the dispatcher sends them
				 * after this transaction, outside any transaction.
				 */
				outcome_add(&held, dest->id, &msg.id, msg.key, "pending", 0,
							now, NULL);
				continue;
			}

			error = deliver(dest, &msg);
			if (error == NULL)
			{
				delivered[dest_index(dests, dest)]++;
				continue;
			}

			/* Failed at the first attempt: retry on the schedule. */
			errors[dest_index(dests, dest)] = error;
			if (dest->max_attempts <= 1)
				outcome_add(&held, dest->id, &msg.id, msg.key, "dead", 1,
							DT_NOEND, error);
			else
			{
				outcome_add(&held, dest->id, &msg.id, msg.key, "retrying", 1,
							now + eo_retry_delay_us(dest, 1), error);
				if (msg.key != NULL)
					(void) blocked_key(blocked, dest->id, msg.key, true);
			}
		}

		*id = msg.id;
		accumArrayResult(moved_ids, UUIDPGetDatum(id), false, UUIDOID, CurrentMemoryContext);
		accumArrayResult(moved_routes, Int32GetDatum(nroutes), false, INT4OID, CurrentMemoryContext);
	}

	/* Move the messages from the queue to the log. */
	{
		Oid			types[2] = {UUIDARRAYOID, INT4ARRAYOID};
		Datum		values[2] = {array_of(moved_ids), array_of(moved_routes)};

		bool		publisher = messages_have_publisher();

		if (plan_move != NULL && publisher != plan_move_publisher)
		{
			SPI_freeplan(plan_move);
			plan_move = NULL;
		}
		plan_move_publisher = publisher;
#define MOVE_SQL(extra_column) \
				"WITH m AS (DELETE FROM eo.outbox o WHERE o.id = ANY ($1) RETURNING o.*)" \
				" INSERT INTO eo.message_log" \
				"   (id, published_at, topic, key, headers, payload, payload_text, routed_at, destinations" \
				extra_column ")" \
				" SELECT m.id, m.published_at, m.topic, m.key, m.headers, m.payload, m.payload_text," \
				"        now(), r.n" extra_column \
				"   FROM m JOIN unnest($1, $2) AS r(id, n) ON r.id = m.id"
		eo_relay_prepare(&plan_move,
						 publisher ? MOVE_SQL(", published_by") : MOVE_SQL(""),
						 2, types);
#undef MOVE_SQL
		if (SPI_execute_plan(plan_move, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "eo_processing relay: could not move messages to eo.message_log");
		if (SPI_processed != nclaimed)
			elog(ERROR, "eo_processing relay: moved " UINT64_FORMAT " of " UINT64_FORMAT " messages",
				 SPI_processed, nclaimed);
	}

	/* Deliveries that wait or will be retried. */
	if (held.n > 0)
	{
		Oid			types[7] = {INT4ARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID};
		Datum		values[7] = {array_of(held.dest_ids), array_of(held.msg_ids),
			array_of(held.keys), array_of(held.states), array_of(held.attempts),
		array_of(held.next_at), array_of(held.errors)};

		eo_relay_prepare(&plan_hold,
				"INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,"
				"                         next_attempt_at, created_at, last_attempt_at, last_error)"
				" SELECT t.d, t.m, t.k, t.s, t.a, t.n, now(),"
				"        CASE WHEN t.a > 0 THEN now() END, t.e"
				"   FROM unnest($1, $2, $3, $4, $5, $6, $7) AS t(d, m, k, s, a, n, e)",
				7, types);
		if (SPI_execute_plan(plan_hold, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "eo_processing relay: could not record held deliveries");
	}

	record_stats(dests, delivered, errors);
	deliveries_added = (held.n > 0);
	return (int) nclaimed;
}

/*
 * The deliveries the retry step attempts, in the order it attempts them:
 * due, of an enabled notify destination, and the first unfinished delivery
 * of their key to that destination.  retry_batch() reads them, and
 * give_up_head_delivery() gives up the first of them and nothing else: one
 * definition, so that the two cannot drift apart.
 */
#define DUE_NOTIFY_DELIVERIES \
			"  FROM eo.delivery d" \
			"  JOIN eo.message_log m ON m.id = d.message_id" \
			"  JOIN eo.destination t ON t.id = d.destination_id AND t.enabled" \
			"                        AND t.kind = 'notify'" \
			" WHERE d.state IN ('pending', 'retrying') AND d.next_attempt_at <= now()" \
			"   AND (d.key IS NULL OR NOT EXISTS (" \
			"        SELECT 1 FROM eo.delivery e" \
			"         WHERE e.destination_id = d.destination_id AND e.key = d.key" \
			"           AND e.state <> 'dead' AND e.message_id < d.message_id))" \
			" ORDER BY d.message_id"

/*
 * retry_batch
 *		One retry transaction: deliveries whose time has come and that are
 *		first in line for their key.  Returns the number attempted, and in
 *		*next_retry the earliest time a waiting delivery is due.
 */
static int
retry_batch(int limit, TimestampTz *next_retry)
{
	Oid			due_types[1] = {INT4OID};
	Datum		due_args[1];
	SPITupleTable *due;
	uint64		ndue;
	List	   *dests;
	int64	   *delivered;
	const char **errors;
	Outcome		done;
	Outcome		failed;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	due_args[0] = Int32GetDatum(limit);
	eo_relay_prepare(&plan_due,
			"SELECT d.destination_id, d.attempts,"
			"       m.id, m.published_at, m.topic, m.key, m.headers, m.payload, m.payload_text"
			DUE_NOTIFY_DELIVERIES
			" LIMIT $1 FOR UPDATE OF d SKIP LOCKED",
			1, due_types);
	if (SPI_execute_plan(plan_due, due_args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read due deliveries");
	due = SPI_tuptable;
	ndue = SPI_processed;

	if (ndue > 0)
	{
		dests = eo_relay_config()->dests;
		delivered = palloc0(sizeof(int64) * (list_length(dests) + 1));
		errors = palloc0(sizeof(char *) * (list_length(dests) + 1));
		outcome_init(&done);
		outcome_init(&failed);

		for (uint64 i = 0; i < ndue; i++)
		{
			HeapTuple	tup = due->vals[i];
			bool		isnull;
			int32		dest_id = DatumGetInt32(SPI_getbinval(tup, due->tupdesc, 1, &isnull));
			int32		attempts = DatumGetInt32(SPI_getbinval(tup, due->tupdesc, 2, &isnull));
			DestinationConfig *dest;
			EoMessage	msg;
			const char *error;

			CHECK_FOR_INTERRUPTS();
			eo_message_from_spi(&msg, tup, due->tupdesc, 3);
			dest = eo_relay_find_destination(dests, dest_id);
			if (dest == NULL)
				continue;		/* dropped meanwhile; the row goes with it */

			error = deliver(dest, &msg);
			if (error == NULL)
			{
				outcome_add(&done, dest_id, &msg.id, NULL, "done", 0, 0, NULL);
				delivered[dest_index(dests, dest)]++;
			}
			else
			{
				attempts++;
				errors[dest_index(dests, dest)] = error;
				if (attempts >= dest->max_attempts)
					outcome_add(&failed, dest_id, &msg.id, msg.key, "dead", attempts,
								DT_NOEND, error);
				else
					outcome_add(&failed, dest_id, &msg.id, msg.key, "retrying", attempts,
								now + eo_retry_delay_us(dest, attempts), error);
			}
		}

		if (done.n > 0)
		{
			Oid			types[2] = {INT4ARRAYOID, UUIDARRAYOID};
			Datum		values[2] = {array_of(done.dest_ids), array_of(done.msg_ids)};

			eo_relay_prepare(&plan_done,
					"DELETE FROM eo.delivery d USING unnest($1, $2) AS t(dest, msg)"
					" WHERE d.destination_id = t.dest AND d.message_id = t.msg",
					2, types);
			if (SPI_execute_plan(plan_done, values, NULL, false, 0) != SPI_OK_DELETE)
				elog(ERROR, "eo_processing relay: could not record deliveries");
		}
		if (failed.n > 0)
		{
			Oid			types[6] = {INT4ARRAYOID, UUIDARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
			TIMESTAMPTZARRAYOID, TEXTARRAYOID};
			Datum		values[6] = {array_of(failed.dest_ids), array_of(failed.msg_ids),
				array_of(failed.states), array_of(failed.attempts),
			array_of(failed.next_at), array_of(failed.errors)};

			eo_relay_prepare(&plan_failed,
					"UPDATE eo.delivery d SET state = t.s, attempts = t.a, next_attempt_at = t.n,"
					"       last_attempt_at = now(), last_error = t.e"
					"  FROM unnest($1, $2, $3, $4, $5, $6) AS t(dest, msg, s, a, n, e)"
					" WHERE d.destination_id = t.dest AND d.message_id = t.msg",
					6, types);
			if (SPI_execute_plan(plan_failed, values, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "eo_processing relay: could not record failed deliveries");
		}
		record_stats(dests, delivered, errors);
	}

	/* When is the next retry due? */
	eo_relay_prepare(&plan_next_retry,
			"SELECT min(next_attempt_at) FROM eo.delivery WHERE state = 'retrying'",
			0, NULL);
	if (SPI_execute_plan(plan_next_retry, NULL, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		*next_retry = isnull ? DT_NOEND : DatumGetTimestampTz(d);
	}
	return (int) ndue;
}

/* Housekeeping: purge expired inbox records and old delivered messages. */
static int
housekeeping(void)
{
	int			purged = 0;

	if (SPI_execute("SELECT eo.purge_expired(10000)", false, 0) == SPI_OK_SELECT)
		purged += SPI_processed;
	if (SPI_execute("SELECT eo.purge_delivered(10000)", false, 0) == SPI_OK_SELECT)
		purged += SPI_processed;
	/* Idempotency keys exist from version 0.4.0 of the SQL objects on. */
	if (SPI_execute("SELECT to_regprocedure('eo.purge_keys(bigint)') IS NOT NULL", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) &&
			SPI_execute("SELECT eo.purge_keys(10000)", false, 0) == SPI_OK_SELECT)
			purged += SPI_processed;
	}
	return purged;
}

/*
 * log_error_once
 *		Log an error of a step unless the same text was logged in the last
 *		ten minutes, and show it in eo.relay_status.
 */
static void
log_error_once(const char *step, ErrorData *edata)
{
	char		text[EO_RELAY_ERROR_LEN];
	TimestampTz now = GetCurrentTimestamp();

	snprintf(text, sizeof(text), "%s: %s", step, edata->message ? edata->message : "unknown error");
	if (strcmp(text, last_logged_error) != 0 ||
		TimestampDifferenceExceeds(last_logged_at, now, 10 * 60 * 1000))
	{
		ereport(LOG,
				(errmsg("eo_processing relay of database %u: %s", my_dboid, text),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
		strlcpy(last_logged_error, text, sizeof(last_logged_error));
		last_logged_at = now;
	}
	if (my_slot != NULL)
	{
		strlcpy(my_slot->last_error, text, sizeof(my_slot->last_error));
		my_slot->last_error_at = now;
	}
}

/*
 * quarantine_head
 *		Last resort for a message that makes routing fail even alone: move
 *		the oldest outbox message to the log with a dead delivery (carrying
 *		the error) for every destination it matches, so it stays visible
 *		and redrivable but no longer blocks the queue.  Returns 1 if a
 *		message was moved.
 */
static int
quarantine_head(void)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(last_logged_error)};

#define QUARANTINE_SQL(extra_column) \
							  "WITH m AS (" \
							  "  DELETE FROM eo.outbox o" \
							  "   WHERE o.id = (SELECT id FROM eo.outbox ORDER BY id LIMIT 1)" \
							  "  RETURNING o.*)," \
							  " log AS (" \
							  "  INSERT INTO eo.message_log" \
							  "    (id, published_at, topic, key, headers, payload, payload_text, routed_at, destinations" \
							  extra_column ")" \
							  "  SELECT m.id, m.published_at, m.topic, m.key, m.headers, m.payload, m.payload_text, now()," \
							  "         (SELECT count(DISTINCT s.destination_id) FROM eo.subscription s" \
							  "           WHERE s.topic = m.topic OR (right(s.topic, 1) = '*'" \
							  "                 AND starts_with(m.topic, left(s.topic, -1))))" extra_column \
							  "    FROM m RETURNING id)"
	if (SPI_execute_with_args(messages_have_publisher() ?
							  QUARANTINE_SQL(", published_by") : QUARANTINE_SQL("")
							  " INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,"
							  "                          next_attempt_at, created_at, last_attempt_at, last_error)"
							  " SELECT DISTINCT s.destination_id, m.id, m.key, 'dead', 1, 'infinity'::timestamptz,"
							  "        now(), now(), $1"
							  "   FROM m JOIN eo.subscription s"
							  "     ON s.topic = m.topic OR (right(s.topic, 1) = '*'"
							  "        AND starts_with(m.topic, left(s.topic, -1)))",
							  1, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eo_processing relay: could not quarantine a message");
#undef QUARANTINE_SQL
	ereport(LOG,
			(errmsg("eo_processing relay of database %u: moved a message that cannot be routed to the log as dead",
					my_dboid),
			 errdetail("%s", last_logged_error)));
	return 1;
}

/*
 * give_up_head_delivery
 *		Last resort for a delivery whose retry fails with an error even when
 *		retried alone: mark dead, with the error, the delivery a retry step
 *		of one attempts (DUE_NOTIFY_DELIVERIES) — not a delivery of another
 *		kind or of a disabled destination, nor one held behind its key.
 */
static int
give_up_head_delivery(void)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(last_logged_error)};

	if (SPI_execute_with_args(
							  "UPDATE eo.delivery x SET state = 'dead', last_error = $1,"
							  "       last_attempt_at = now(), next_attempt_at = 'infinity'"
							  "  FROM (SELECT d.destination_id, d.message_id"
							  DUE_NOTIFY_DELIVERIES
							  "         LIMIT 1 FOR UPDATE OF d SKIP LOCKED) AS h"
							  " WHERE x.destination_id = h.destination_id AND x.message_id = h.message_id",
							  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eo_processing relay: could not give up a delivery");
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("eo_processing relay of database %u: marked a delivery that cannot be retried as dead",
						my_dboid),
				 errdetail("%s", last_logged_error)));
	return (int) SPI_processed;
}

typedef enum StepKind
{
	STEP_ROUTE,
	STEP_RETRY,
	STEP_HOUSEKEEPING,
	STEP_CHECK_EXTENSION,
	STEP_QUARANTINE,
	STEP_GIVE_UP,
	STEP_HTTP
} StepKind;

/*
 * run_step
 *		Run one step in its own transaction, catching any error.  Returns
 *		false after an error (the transaction was rolled back).
 */
static bool
run_step(StepKind kind, int *result, TimestampTz *next_retry)
{
	static const char *const names[] = {"routing", "retrying", "housekeeping",
	"checking the extension", "quarantining a message", "giving up a delivery",
	"sending webhooks"};
	volatile bool ok = true;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "eo_processing relay: SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, names[kind]);

		switch (kind)
		{
			case STEP_ROUTE:
				*result = route_batch(batch_limit);
				break;
			case STEP_RETRY:
				*result = retry_batch(batch_limit, next_retry);
				break;
			case STEP_HOUSEKEEPING:
				*result = housekeeping();
				break;
			case STEP_CHECK_EXTENSION:
				*result = OidIsValid(get_extension_oid("eo_processing", true));
				break;
			case STEP_QUARANTINE:
				*result = quarantine_head();
				break;
			case STEP_GIVE_UP:
				*result = give_up_head_delivery();
				break;
			case STEP_HTTP:
				*result = eo_http_step();
				break;
		}

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(loop_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		log_error_once(names[kind], edata);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(loop_cxt);
	if (kind == STEP_HTTP)
		eo_http_step_done(ok);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

/*
 * Forget saved plans and the cached configuration (after an error they may
 * refer to dropped objects).
 */
static void
forget_plans(void)
{
	SPIPlanPtr *plans[] = {&plan_claim, &plan_blocked, &plan_move,
		&plan_hold, &plan_stats, &plan_due, &plan_done, &plan_failed,
		&plan_next_retry};

	eo_relay_free_plans(plans, lengthof(plans));
	eo_http_forget_plans();
	eo_relay_config_forget();
}

/* Exit cleanly if the extension is gone or the launcher let go of us. */
static void
exit_if_unwanted(void)
{
	int			present = 1;
	bool		wanted;

	LWLockAcquire(eo_relay->lock, LW_SHARED);
	wanted = my_slot->wanted && !my_slot->stop_requested;
	LWLockRelease(eo_relay->lock);

	if (wanted && run_step(STEP_CHECK_EXTENSION, &present, NULL) && present)
		return;
	if (!present)
		eo_relay_release_database(my_dboid);
	ereport(LOG,
			(errmsg("eo_processing relay of database %u stopping: %s", my_dboid,
					present ? "asked to stop" : "the extension is not installed")));
	proc_exit(0);
}

/* before_shmem_exit callback: clear our slot. */
static void
worker_detach(int code, Datum arg)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	my_slot->pid = 0;
	my_slot->pgprocno = -1;
	LWLockRelease(eo_relay->lock);
	eo_relay_wake_launcher();
}

/*
 * eo.relay_run(max_messages integer DEFAULT 1000) RETURNS integer
 *
 * Runs one routing step and one retry step of the relay in the caller's
 * own transaction, and returns how many messages it routed.  For databases
 * where no relay worker runs (library not preloaded, eo.relay_enabled off)
 * and for tests: NOTIFYs go out when the caller commits, and a concurrent
 * relay skips the messages this call has claimed.
 *
 * What it cannot finish itself (http deliveries, which are never sent
 * inside a transaction; deliveries held behind a key; retries it
 * scheduled) it leaves in eo.delivery, and it wakes the relay worker when
 * the caller commits so that the worker looks at eo.delivery: the worker
 * cannot see rows another backend inserted otherwise.
 */
PG_FUNCTION_INFO_V1(eo_relay_run);

Datum
eo_relay_run(PG_FUNCTION_ARGS)
{
	int			limit = PG_ARGISNULL(0) ? eo_relay_batch_size : PG_GETARG_INT32(0);
	int			routed;
	int			retried;
	TimestampTz next_retry = DT_NOEND;

	if (limit < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must be at least 1")));
	PreventCommandIfReadOnly("eo.relay_run()");

	eo_relay_config_init(NULL);	/* no generation counter: always reload */

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "eo_processing: SPI_connect failed");
	routed = route_batch(limit);
	retried = retry_batch(limit, &next_retry);
	SPI_finish();

	if (routed > 0 || retried > 0)
		eo_relay_wake_at_commit();

	PG_RETURN_INT32(routed);
}

/*
 * eo_relay_worker_main
 *		Entry point of a database's relay worker (started by the launcher;
 *		the database OID is in bgw_extra).
 */
void
eo_relay_worker_main(Datum main_arg)
{
	TimestampTz next_retry = 0;
	TimestampTz next_housekeeping = 0;
	bool		retry_needed = true;

	memcpy(&my_dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (eo_relay == NULL)
		proc_exit(1);
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	my_slot = eo_relay_find_slot(my_dboid);
	if (my_slot != NULL)
	{
		my_slot->pid = MyProcPid;
		my_slot->pgprocno = MyProc->pgprocno;
		my_slot->state = RELAY_STARTING;
		my_slot->started_at = GetCurrentTimestamp();
		my_slot->delivered = 0;
		my_slot->last_error[0] = '\0';
		my_slot->last_error_at = 0;
	}
	LWLockRelease(eo_relay->lock);
	if (my_slot == NULL)
		proc_exit(0);
	before_shmem_exit(worker_detach, (Datum) 0);

	BackgroundWorkerInitializeConnectionByOid(my_dboid, InvalidOid, 0);
	pgstat_report_appname("eo_processing relay");

	/*
	 * The relay's statements take arrays whose contents change every batch;
	 * re-planning them each time cost more than running them.  And its
	 * commits need not wait for the WAL flush: if a routing transaction is
	 * lost in a crash, its messages are still in eo.outbox and are simply
	 * delivered again (at least once), never lost.
	 */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "eo_processing relay loop",
									 ALLOCSET_DEFAULT_SIZES);
	eo_relay_config_init(my_slot);
	MemoryContextSwitchTo(loop_cxt);
	batch_limit = eo_relay_batch_size;

	exit_if_unwanted();

	/*
	 * The database has the extension.  A probe of the launcher's scan
	 * while the relay is off has learnt what it came for: exit, keeping
	 * the slot (eo.relay_status shows the database as disabled); the
	 * launcher starts a worker again when eo.relay_enabled comes on.
	 */
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	my_slot->probe = false;
	LWLockRelease(eo_relay->lock);
	if (!eo_relay_enabled)
	{
		ereport(LOG,
				(errmsg("eo_processing relay of database %u not started: eo.relay_enabled is off",
						my_dboid)));
		proc_exit(0);
	}
	ereport(LOG, (errmsg("eo_processing relay started for database %u", my_dboid)));

	for (;;)
	{
		int			n = 0;
		bool		more = false;
		bool		ok;
		TimestampTz now;
		long		timeout_ms;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		/*
		 * A busy relay never waits, so WL_EXIT_ON_PM_DEATH alone would not
		 * stop it: without a postmaster its notifications reach nobody.
		 */
		if (!PostmasterIsAlive())
			proc_exit(1);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			batch_limit = Min(batch_limit, eo_relay_batch_size);
			next_housekeeping = 0;	/* the interval may have changed */
			retry_needed = true;	/* eo.relay_enabled may have come on */
		}
		MemoryContextReset(loop_cxt);
		my_slot->last_wakeup = GetCurrentTimestamp();

		if (!my_slot->wanted || my_slot->stop_requested)
			exit_if_unwanted();
		if (my_slot->retry_requested)
		{
			/* eo.wake_relay(): a redrive, a new destination, ... */
			my_slot->retry_requested = false;
			retry_needed = true;
		}

		if (eo_relay_enabled)
		{
			bool		route_ok;
			bool		retry_ok = true;
			bool		housekeeping_ok = true;
			bool		http_ok = true;
			bool		http_wanted;
			TimestampTz due;

			set_state(RELAY_ROUTING);
			route_ok = run_step(STEP_ROUTE, &n, NULL);
			if (route_ok && n >= batch_limit)
				more = true;
			if (route_ok && deliveries_added)
				retry_needed = true;	/* new held or failed deliveries */

			now = GetCurrentTimestamp();

			/*
			 * Deliveries this loop did not make (eo.relay_run(), a redrive,
			 * rows written by hand) are announced by retry_requested; as a
			 * safety net, look at eo.delivery once per naptime anyway.  Both
			 * steps find due deliveries through an index: cheap when idle.
			 */
			if (now >= next_housekeeping)
				retry_needed = true;
			http_wanted = retry_needed || now >= next_retry || eo_http_work_waiting();
			if (retry_needed || now >= next_retry)
			{
				set_state(RELAY_RETRYING);
				next_retry = DT_NOEND;
				retry_ok = run_step(STEP_RETRY, &n, &next_retry);
				retry_needed = retry_ok && n > 0;
				if (retry_needed)
					more = true;
			}

			/*
			 * Webhooks: record what finished, send what is due.  Only where
			 * http destinations exist (or may have appeared).
			 */
			if (http_wanted &&
				(eo_relay_config_may_have_http() || eo_http_work_waiting()))
			{
				set_state(RELAY_SENDING);
				http_ok = run_step(STEP_HTTP, &n, NULL);
				due = eo_http_next_due();	/* (Min() evaluates twice) */
				next_retry = Min(next_retry, due);
			}

			if (now >= next_housekeeping)
			{
				set_state(RELAY_HOUSEKEEPING);
				housekeeping_ok = run_step(STEP_HOUSEKEEPING, &n, NULL);
				next_housekeeping = TimestampTzPlusMilliseconds(now,
																(int64) eo_relay_naptime_secs * 1000);
			}

			ok = route_ok && retry_ok && housekeeping_ok && http_ok;
			if (ok)
			{
				consecutive_errors = 0;
				if (batch_limit < eo_relay_batch_size)
					batch_limit = Min(batch_limit * 2, eo_relay_batch_size);

				/*
				 * Webhooks that finished without the wait below noticing
				 * (not sendable, or answered at once): record them now.
				 */
				if (eo_http_work_waiting())
					more = true;
			}
			else
			{
				/*
				 * Isolate a bad message by halving the batch; once a batch of
				 * one has failed three times, set that message (or delivery)
				 * aside.  Back off in any case.
				 */
				consecutive_errors++;
				forget_plans();
				if (batch_limit == 1 && consecutive_errors >= 3)
				{
					if (!route_ok)
						(void) run_step(STEP_QUARANTINE, &n, NULL);
					else if (!retry_ok)
						(void) run_step(STEP_GIVE_UP, &n, NULL);
				}
				batch_limit = Max(batch_limit / 2, 1);
				exit_if_unwanted();
				more = false;
				retry_needed = true;
				if (next_retry == DT_NOEND)
					next_retry = 0;
			}
		}

		if (more)
		{
			/* Keep requests moving while a backlog is routed. */
			(void) eo_http_wait(0);
			continue;
		}

		set_state(consecutive_errors > 0 ? RELAY_BACKING_OFF : RELAY_IDLE);
		now = GetCurrentTimestamp();
		if (consecutive_errors > 0)
			timeout_ms = Min(100L << Min(consecutive_errors, 8), 30000L);
		else
		{
			TimestampTz wake = TimestampTzPlusMilliseconds(now,
														   (int64) eo_relay_naptime_secs * 1000);

			if (next_retry < wake)
				wake = next_retry;
			if (next_housekeeping < wake)
				wake = next_housekeeping;
			timeout_ms = wake <= now ? 1 :
				(long) Min((wake - now) / 1000 + 1, (int64) eo_relay_naptime_secs * 1000);
		}
		(void) eo_http_wait(timeout_ms);
	}
}
