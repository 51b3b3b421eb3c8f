/*-------------------------------------------------------------------------
 *
 * delivery.c
 *	  The relay's records of deliveries, in one place:
 *	  - the retry decision (eo_delivery_next), the only one;
 *	  - the head-of-key rule: a message waits while its key has an
 *		unfinished (not dead) delivery of an earlier message to the same
 *		destination.  In SQL for rows of eo.delivery (DUE_DELIVERIES), in
 *		C for messages read from the log (eo_blocked_key);
 *	  - what a relay transaction writes (DeliveryWrites): new rows of
 *		eo.delivery for the exceptional deliveries, retries that ended,
 *		the attempt log, destinations to disable, and per destination its
 *		statistics and its cursor, each table with one statement;
 *	  - what a stopped relay left unfinished (eo_delivery_reset_interrupted).
 *
 *	  Everything here runs inside the caller's transaction with SPI
 *	  connected; returned rows are allocated in the current (SPI) context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "delivery.h"
#include "eo_processing.h"
#include "relay.h"
#include "sink.h"

const char *const eo_delivery_state_names[] = {
	[DELIVERY_PENDING] = "pending",
	[DELIVERY_IN_FLIGHT] = "in_flight",
	[DELIVERY_RETRYING] = "retrying",
	[DELIVERY_DEAD] = "dead",
};

/* Per destination: what a transaction adds to eo.destination_stats. */
typedef struct DestWrite
{
	int32		dest_id;		/* hash key */
	int64		delivered;
	const char *error;			/* the last error, or NULL */
	int64		delivered_seq;	/* new cursor, or -1 to keep it */
	int64		sending_seq;	/* new window end, or -1 to keep it */
} DestWrite;

static SPIPlanPtr plan_park = NULL;
static SPIPlanPtr plan_attempts = NULL;
static SPIPlanPtr plan_disable = NULL;
static SPIPlanPtr plan_stats = NULL;
static SPIPlanPtr plan_blocked = NULL;
static SPIPlanPtr plan_next_due = NULL;
static SPIPlanPtr plan_any_due = NULL;

/*
 * The deliveries of eo.delivery that are due, of an enabled destination,
 * and first in line for their key: the head-of-key rule for parked rows.
 * "filter" narrows the destinations (it may use parameter $2).
 */
#define DUE_DELIVERIES(filter) \
	"  FROM eo.delivery d" \
	"  JOIN eo.destination t ON t.id = d.destination_id AND t.enabled" filter \
	" WHERE d.state IN ('pending', 'retrying') AND d.next_attempt_at <= now()" \
	"   AND (d.key IS NULL OR NOT EXISTS (" \
	"        SELECT 1 FROM eo.delivery e" \
	"         WHERE e.destination_id = d.destination_id AND e.key = d.key" \
	"           AND e.state <> 'dead' AND e.message_id < d.message_id))"

#define INLINE_KINDS	" AND t.kind = ANY ($2)"
#define ONE_DESTINATION " AND t.id = $2"

#define NEW_ARRAY(type) initArrayResult(type, CurrentMemoryContext, false)
#define ADD(a, d, isnull, type) accumArrayResult(a, d, isnull, type, CurrentMemoryContext)
#define ARR(a) makeArrayResult(a, CurrentMemoryContext)
#define TEXT_OR_NULL(s) ((s) ? CStringGetTextDatum(s) : (Datum) 0)

/*
 * eo_delivery_next
 *		The retry decision.  Delivered: false.  Otherwise the delivery's
 *		next state and when it is due: a destination that is gone keeps
 *		the message waiting (due at once, sent when it is enabled again);
 *		a permanent failure, or the last allowed attempt, is dead; any
 *		other failure retries after the receiver's Retry-After or the
 *		destination's schedule.
 */
bool
eo_delivery_next(const DestinationConfig *dest, int attempt, const SinkOutcome *outcome,
				 TimestampTz now, DeliveryState *state, TimestampTz *next_at)
{
	switch (outcome->result)
	{
		case SINK_DELIVERED:
			return false;
		case SINK_DISABLE:
			*state = DELIVERY_RETRYING;
			*next_at = now;
			return true;
		case SINK_PERMANENT:
			break;
		case SINK_RETRY:
			if (attempt >= dest->max_attempts)
				break;
			*state = DELIVERY_RETRYING;
			*next_at = now + (outcome->retry_after_us >= 0 ? outcome->retry_after_us :
							  eo_retry_delay_us(dest, attempt));
			return true;
	}
	*state = DELIVERY_DEAD;
	*next_at = DT_NOEND;
	return true;
}

void
eo_delivery_writes_init(DeliveryWrites *w)
{
	HASHCTL		ctl;

	memset(w, 0, sizeof(DeliveryWrites));
	w->p_dest = NEW_ARRAY(INT4OID);
	w->p_msg = NEW_ARRAY(UUIDOID);
	w->p_key = NEW_ARRAY(TEXTOID);
	w->p_state = NEW_ARRAY(TEXTOID);
	w->p_attempts = NEW_ARRAY(INT4OID);
	w->p_next = NEW_ARRAY(TIMESTAMPTZOID);
	w->p_error = NEW_ARRAY(TEXTOID);
	w->d_dest = NEW_ARRAY(INT4OID);
	w->d_msg = NEW_ARRAY(UUIDOID);
	w->f_dest = NEW_ARRAY(INT4OID);
	w->f_msg = NEW_ARRAY(UUIDOID);
	w->f_state = NEW_ARRAY(TEXTOID);
	w->f_next = NEW_ARRAY(TIMESTAMPTZOID);
	w->f_error = NEW_ARRAY(TEXTOID);
	w->a_time = NEW_ARRAY(TIMESTAMPTZOID);
	w->a_dest = NEW_ARRAY(INT4OID);
	w->a_msg = NEW_ARRAY(UUIDOID);
	w->a_attempt = NEW_ARRAY(INT4OID);
	w->a_status = NEW_ARRAY(INT4OID);
	w->a_error = NEW_ARRAY(TEXTOID);
	w->a_latency = NEW_ARRAY(FLOAT8OID);
	w->a_body = NEW_ARRAY(TEXTOID);
	w->g_dest = NEW_ARRAY(INT4OID);
	w->g_reason = NEW_ARRAY(TEXTOID);

	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(DestWrite);
	ctl.hcxt = CurrentMemoryContext;
	w->stats = hash_create("eo_processing destination writes", 16, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* The destination's entry of a transaction's writes. */
static DestWrite *
dest_write(DeliveryWrites *w, int32 dest_id)
{
	bool		found;
	DestWrite  *d = hash_search(w->stats, &dest_id, HASH_ENTER, &found);

	if (!found)
	{
		d->delivered = 0;
		d->error = NULL;
		d->delivered_seq = -1;
		d->sending_seq = -1;
	}
	return d;
}

static Datum
uuid_datum(const pg_uuid_t *id)
{
	pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

	*copy = *id;
	return UUIDPGetDatum(copy);
}

/* A new row of eo.delivery: a message that waits, retries or is dead. */
void
eo_delivery_park(DeliveryWrites *w, int32 dest_id, const pg_uuid_t *msg_id,
				 const char *key, DeliveryState state, int attempts,
				 TimestampTz next_at, const char *error)
{
	ADD(w->p_dest, Int32GetDatum(dest_id), false, INT4OID);
	ADD(w->p_msg, uuid_datum(msg_id), false, UUIDOID);
	ADD(w->p_key, TEXT_OR_NULL(key), key == NULL, TEXTOID);
	ADD(w->p_state, CStringGetTextDatum(eo_delivery_state_names[state]), false, TEXTOID);
	ADD(w->p_attempts, Int32GetDatum(attempts), false, INT4OID);
	ADD(w->p_next, TimestampTzGetDatum(next_at), false, TIMESTAMPTZOID);
	ADD(w->p_error, TEXT_OR_NULL(error), error == NULL, TEXTOID);
	w->nparked++;
}

/* Count delivered messages and remember a destination's last error. */
void
eo_delivery_count(DeliveryWrites *w, int32 dest_id, int64 delivered, const char *error)
{
	DestWrite  *d = dest_write(w, dest_id);

	d->delivered += delivered;
	if (error != NULL)
		d->error = error;
	w->delivered_total += delivered;
}

/* Move a destination's cursor (delivered_seq) or mark its window (sending_seq); -1 keeps either. */
void
eo_delivery_cursor(DeliveryWrites *w, int32 dest_id, int64 delivered_seq, int64 sending_seq)
{
	DestWrite  *d = dest_write(w, dest_id);

	if (delivered_seq >= 0)
		d->delivered_seq = delivered_seq;
	if (sending_seq >= 0)
		d->sending_seq = sending_seq;
}

/*
 * eo_delivery_outcome
 *		Record how attempt "attempt" of a delivery ended.  "parked": the
 *		delivery has a row in eo.delivery (a retry), which is deleted or
 *		updated; otherwise a failure gets a new row.  The attempt is logged
 *		if the sink logs attempts (failures always, successes with
 *		log_attempts 'all').  *state says what became of it (DELIVERY_DEAD
 *		for delivered too: it no longer holds its key).
 */
void
eo_delivery_outcome(DeliveryWrites *w, const DestinationConfig *dest,
					const pg_uuid_t *msg_id, const char *key, int attempt,
					bool parked, TimestampTz started_at,
					const SinkOutcome *outcome, TimestampTz now,
					DeliveryState *state)
{
	TimestampTz next_at;
	bool		failed;

	failed = eo_delivery_next(dest, attempt, outcome, now, state, &next_at);
	if (dest->sink->logs_attempts && (failed || dest->log_all_attempts))
	{
		ADD(w->a_time, TimestampTzGetDatum(started_at), false, TIMESTAMPTZOID);
		ADD(w->a_dest, Int32GetDatum(dest->id), false, INT4OID);
		ADD(w->a_msg, uuid_datum(msg_id), false, UUIDOID);
		ADD(w->a_attempt, Int32GetDatum(attempt), false, INT4OID);
		ADD(w->a_status, Int32GetDatum(outcome->status), outcome->status < 0, INT4OID);
		ADD(w->a_error, TEXT_OR_NULL(outcome->error), outcome->error == NULL, TEXTOID);
		ADD(w->a_latency, Float8GetDatum(outcome->latency_ms), false, FLOAT8OID);
		ADD(w->a_body, TEXT_OR_NULL(outcome->response), outcome->response == NULL, TEXTOID);
		w->nattempts++;
	}
	if (!failed)
	{
		*state = DELIVERY_DEAD;
		eo_delivery_count(w, dest->id, 1, NULL);
		if (parked)
		{
			ADD(w->d_dest, Int32GetDatum(dest->id), false, INT4OID);
			ADD(w->d_msg, uuid_datum(msg_id), false, UUIDOID);
			w->ndone++;
		}
		return;
	}

	eo_delivery_count(w, dest->id, 0, outcome->error);
	if (outcome->result == SINK_DISABLE)
	{
		ADD(w->g_dest, Int32GetDatum(dest->id), false, INT4OID);
		ADD(w->g_reason, CStringGetTextDatum(outcome->disable_reason), false, TEXTOID);
		w->ngone++;
	}
	if (parked)
	{
		ADD(w->f_dest, Int32GetDatum(dest->id), false, INT4OID);
		ADD(w->f_msg, uuid_datum(msg_id), false, UUIDOID);
		ADD(w->f_state, CStringGetTextDatum(eo_delivery_state_names[*state]), false, TEXTOID);
		ADD(w->f_next, TimestampTzGetDatum(next_at), false, TIMESTAMPTZOID);
		ADD(w->f_error, TEXT_OR_NULL(outcome->error), outcome->error == NULL, TEXTOID);
		w->nfailed++;
	}
	else
		eo_delivery_park(w, dest->id, msg_id, key, *state, attempt, next_at,
						 outcome->error);
}

static void
run_saved(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types, Datum *values,
		  int expected, const char *what)
{
	eo_relay_prepare(plan, sql, nargs, types);
	if (SPI_execute_plan(*plan, values, NULL, false, 0) != expected)
		elog(ERROR, "eo_processing relay: could not %s", what);
}

/*
 * Statements that find eo.delivery rows by the arrays they are given are
 * planned for each execution: eo.delivery swings from empty to a backlog
 * and back, and a generic plan made while it was nearly empty (a hash join
 * over a sequential scan) would read the whole table for a handful of rows.
 */
static void
run_planned_now(const char *sql, int nargs, Oid *types, Datum *values, int expected,
				const char *what)
{
	if (SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0) != expected)
		elog(ERROR, "eo_processing relay: could not %s", what);
}

/*
 * eo_delivery_write
 *		Write what was gathered: one statement per table.  Rows of a
 *		destination dropped meanwhile are skipped.  Returns the number of
 *		deliveries counted as delivered.
 */
int64
eo_delivery_write(DeliveryWrites *w)
{
	HASH_SEQ_STATUS it;
	DestWrite  *d;
	int			nstats = 0;

	if (w->nparked > 0)
	{
		Oid			types[7] = {INT4ARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID};
		Datum		values[7] = {ARR(w->p_dest), ARR(w->p_msg), ARR(w->p_key),
			ARR(w->p_state), ARR(w->p_attempts), ARR(w->p_next), ARR(w->p_error)};

		run_saved(&plan_park,
				  "INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,"
				  "                         next_attempt_at, created_at, last_attempt_at, last_error)"
				  " SELECT t.d, t.m, t.k, t.s, t.a, t.n, now(),"
				  "        CASE WHEN t.a > 0 THEN now() END, t.e"
				  "   FROM unnest($1, $2, $3, $4, $5, $6, $7) AS t(d, m, k, s, a, n, e)"
				  "  WHERE EXISTS (SELECT 1 FROM eo.destination x WHERE x.id = t.d)"
				  " ON CONFLICT (destination_id, message_id) DO NOTHING",
				  7, types, values, SPI_OK_INSERT, "record deliveries that wait, retry or are dead");
	}
	if (w->ndone > 0)
	{
		Oid			types[2] = {INT4ARRAYOID, UUIDARRAYOID};
		Datum		values[2] = {ARR(w->d_dest), ARR(w->d_msg)};

		run_planned_now("DELETE FROM eo.delivery d USING unnest($1, $2) AS t(dest, msg)"
						" WHERE d.destination_id = t.dest AND d.message_id = t.msg",
						2, types, values, SPI_OK_DELETE, "record retried deliveries");
	}
	if (w->nfailed > 0)
	{
		Oid			types[5] = {INT4ARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID};
		Datum		values[5] = {ARR(w->f_dest), ARR(w->f_msg), ARR(w->f_state), ARR(w->f_next),
		ARR(w->f_error)};

		run_planned_now("UPDATE eo.delivery d SET state = t.s, next_attempt_at = t.n,"
						"       last_attempt_at = now(), last_error = t.e,"
						"       attempts = CASE WHEN d.state = 'in_flight' THEN d.attempts"
						"                       ELSE d.attempts + 1 END"
						"  FROM unnest($1, $2, $3, $4, $5) AS t(dest, msg, s, n, e)"
						" WHERE d.destination_id = t.dest AND d.message_id = t.msg",
						5, types, values, SPI_OK_UPDATE, "record failed retries");
	}
	if (w->nattempts > 0)
	{
		Oid			types[8] = {TIMESTAMPTZARRAYOID, INT4ARRAYOID, UUIDARRAYOID, INT4ARRAYOID,
		INT4ARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID};
		Datum		values[8] = {ARR(w->a_time), ARR(w->a_dest), ARR(w->a_msg), ARR(w->a_attempt),
		ARR(w->a_status), ARR(w->a_error), ARR(w->a_latency), ARR(w->a_body)};

		run_saved(&plan_attempts,
				  "INSERT INTO eo.http_attempt (attempted_at, destination_id, message_id, attempt,"
				  "                             status_code, error, latency_ms, response_body)"
				  " SELECT t.* FROM unnest($1, $2, $3, $4, $5, $6, $7, $8)"
				  "        AS t(at, d, m, a, s, e, l, b)"
				  "  WHERE EXISTS (SELECT 1 FROM eo.destination x WHERE x.id = t.d)",
				  8, types, values, SPI_OK_INSERT, "record attempts");
	}
	if (w->ngone > 0)
	{
		Oid			types[2] = {INT4ARRAYOID, TEXTARRAYOID};
		Datum		values[2] = {ARR(w->g_dest), ARR(w->g_reason)};

		run_saved(&plan_disable,
				  "UPDATE eo.destination x SET enabled = false, disabled_reason = t.r"
				  "  FROM (SELECT DISTINCT ON (d) d, r FROM unnest($1, $2) AS u(d, r)) AS t"
				  " WHERE x.id = t.d AND x.enabled"
				  " RETURNING x.name, t.r",
				  2, types, values, SPI_OK_UPDATE_RETURNING, "disable a destination");
		for (uint64 i = 0; i < SPI_processed; i++)
			ereport(LOG,
					(errmsg("eo_processing relay: disabled destination \"%s\": %s",
							SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
							SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2))));
	}

	{
		ArrayBuildState *ids = NEW_ARRAY(INT4OID);
		ArrayBuildState *counts = NEW_ARRAY(INT8OID);
		ArrayBuildState *errors = NEW_ARRAY(TEXTOID);
		ArrayBuildState *cursors = NEW_ARRAY(INT8OID);
		ArrayBuildState *windows = NEW_ARRAY(INT8OID);

		hash_seq_init(&it, w->stats);
		while ((d = hash_seq_search(&it)) != NULL)
		{
			ADD(ids, Int32GetDatum(d->dest_id), false, INT4OID);
			ADD(counts, Int64GetDatum(d->delivered), false, INT8OID);
			ADD(errors, TEXT_OR_NULL(d->error), d->error == NULL, TEXTOID);
			ADD(cursors, Int64GetDatum(d->delivered_seq), d->delivered_seq < 0, INT8OID);
			ADD(windows, Int64GetDatum(d->sending_seq), d->sending_seq < 0, INT8OID);
			nstats++;
		}
		if (nstats > 0)
		{
			Oid			types[5] = {INT4ARRAYOID, INT8ARRAYOID, TEXTARRAYOID, INT8ARRAYOID,
			INT8ARRAYOID};
			Datum		values[5] = {ARR(ids), ARR(counts), ARR(errors), ARR(cursors),
			ARR(windows)};

			/*
			 * A new cursor closes the window it reached; a new window is
			 * opened only by a transaction that does not move the cursor.
			 */
			run_saved(&plan_stats,
					  "UPDATE eo.destination_stats s"
					  "   SET delivered_total = s.delivered_total + t.n,"
					  "       last_success_at = CASE WHEN t.n > 0 THEN now() ELSE s.last_success_at END,"
					  "       last_error = coalesce(t.err, s.last_error),"
					  "       last_error_at = CASE WHEN t.err IS NOT NULL THEN now() ELSE s.last_error_at END,"
					  "       delivered_seq = coalesce(t.cur, s.delivered_seq),"
					  "       sending_seq = CASE WHEN t.win IS NOT NULL THEN t.win"
					  "                          WHEN t.cur IS NOT NULL AND t.cur >= s.sending_seq THEN NULL"
					  "                          ELSE s.sending_seq END"
					  "  FROM unnest($1, $2, $3, $4, $5) AS t(id, n, err, cur, win)"
					  " WHERE s.destination_id = t.id",
					  5, types, values, SPI_OK_UPDATE, "update destination statistics");
		}
	}
	return w->delivered_total;
}

/* Keys with an unfinished delivery, per destination: "<dest id>/<key>". */
typedef struct BlockedKey
{
	char		name[EO_MAX_MSG_ID_BYTES + 16];
} BlockedKey;

/*
 * eo_blocked_keys_load
 *		The keys that hold later messages back: those with a delivery in
 *		eo.delivery that is not dead.  A hash in the current context; the
 *		caller adds the keys its own failures block.
 */
HTAB *
eo_blocked_keys_load(void)
{
	HASHCTL		ctl;
	HTAB	   *h;

	ctl.keysize = sizeof(BlockedKey);
	ctl.entrysize = sizeof(BlockedKey);
	ctl.hcxt = CurrentMemoryContext;
	h = hash_create("eo_processing blocked keys", 64, &ctl,
					HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	/* Not read-only: it must see the rows this transaction just wrote. */
	eo_relay_prepare(&plan_blocked,
					 "SELECT destination_id, key FROM eo.delivery"
					 " WHERE key IS NOT NULL AND state <> 'dead' GROUP BY 1, 2",
					 0, NULL);
	if (SPI_execute_plan(plan_blocked, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read held keys");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int32		dest = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));
		char	   *key = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
															SPI_tuptable->tupdesc, 2, &isnull));

		(void) eo_blocked_key(h, dest, key, true);
	}
	return h;
}

/* Is the key blocked for the destination?  With add, block it too. */
bool
eo_blocked_key(HTAB *blocked, int32 dest_id, const char *key, bool add)
{
	BlockedKey	k;
	bool		found;

	if (key == NULL)
		return false;
	snprintf(k.name, sizeof(k.name), "%d/%s", dest_id, key);
	(void) hash_search(blocked, &k, add ? HASH_ENTER : HASH_FIND, &found);
	return found;
}

/* Text array of the kinds whose sinks deliver inline (or log attempts). */
static Datum
kinds_where(bool want_inline, bool want_logging)
{
	int			n;
	const SinkRoutine *const *sinks = eo_sink_all(&n);
	ArrayBuildState *a = NEW_ARRAY(TEXTOID);

	for (int i = 0; i < n; i++)
	{
		if ((want_inline && !eo_sink_is_async(sinks[i])) ||
			(want_logging && sinks[i]->logs_attempts))
			ADD(a, CStringGetTextDatum(sinks[i]->kind), false, TEXTOID);
	}
	return ARR(a);
}

/*
 * any_due
 *		Whether a parked delivery of the destination is due now, whatever
 *		its key and its destination's state: one index probe with a saved
 *		plan, so that the claim below (planned for each execution) runs
 *		only when it can find something.  The
 *		relay looks for due retries at every step that sees new messages;
 *		eo.delivery is nearly always empty then.
 */
static bool
any_due(int32 dest_id)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(dest_id)};
	bool		isnull;

	eo_relay_prepare(&plan_any_due,
					 "SELECT EXISTS (SELECT 1 FROM eo.delivery"
					 "  WHERE destination_id = $1 AND next_attempt_at <= now()"
					 "    AND state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying']))",
					 1, types);
	if (SPI_execute_plan(plan_any_due, values, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "eo_processing relay: could not look for due deliveries");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * eo_delivery_claim_due
 *		Parked deliveries that are due now and first of their key: of one
 *		destination (dest_id, an asynchronous sink's: marked in flight and
 *		their attempt counted, so that a crash cannot lose them) or of
 *		every destination whose sink delivers inline (locked until the
 *		caller's transaction ends).  At most "limit"; *out and the messages
 *		are allocated in "cxt".  Returns how many.
 */
int
eo_delivery_claim_due(int32 dest_id, bool inline_kinds, int limit,
					  bool mark_in_flight, MemoryContext cxt, DueDelivery **out)
{
	MemoryContext spicxt;
	Oid			types[2] = {INT4OID, inline_kinds ? TEXTARRAYOID : INT4OID};
	Datum		values[2];
	const char *sql;
	SPITupleTable *rows;
	uint64		n;

	*out = NULL;
	if (!inline_kinds && !any_due(dest_id))
		return 0;
	values[0] = Int32GetDatum(limit);
	values[1] = inline_kinds ? kinds_where(true, false) : Int32GetDatum(dest_id);
	if (mark_in_flight)
		sql = "WITH c AS ("
			"  SELECT d.destination_id, d.message_id"
			DUE_DELIVERIES(ONE_DESTINATION)
			"   ORDER BY d.next_attempt_at, d.message_id LIMIT $1"
			"   FOR UPDATE OF d SKIP LOCKED)"
			" UPDATE eo.delivery d SET state = 'in_flight', attempts = d.attempts + 1,"
			"        last_attempt_at = now()"
			"   FROM c, eo.message_log m"
			"  WHERE d.destination_id = c.destination_id AND d.message_id = c.message_id"
			"    AND m.id = d.message_id"
			" RETURNING d.destination_id, d.attempts, m.id, m.published_at, m.topic, m.key,"
			"           m.headers, m.payload, m.payload_text";
	else if (inline_kinds)
		sql = "SELECT d.destination_id, d.attempts + 1,"
			"       m.id, m.published_at, m.topic, m.key, m.headers, m.payload, m.payload_text"
			DUE_DELIVERIES(INLINE_KINDS " JOIN eo.message_log m ON m.id = d.message_id")
			" ORDER BY d.message_id LIMIT $1 FOR UPDATE OF d SKIP LOCKED";
	else
		elog(ERROR, "eo_processing relay: unsupported claim of parked deliveries");

	/*
	 * Planned for each execution, as the statements of eo_delivery_write:
	 * how many rows eo.delivery has changes all the time.
	 */
	if (SPI_execute_with_args(sql, 2, types, values, NULL, false, 0) !=
		(mark_in_flight ? SPI_OK_UPDATE_RETURNING : SPI_OK_SELECT))
		elog(ERROR, "eo_processing relay: could not claim due deliveries");
	rows = SPI_tuptable;
	n = SPI_processed;
	spicxt = MemoryContextSwitchTo(cxt);
	*out = palloc0(sizeof(DueDelivery) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		(*out)[i].dest_id = DatumGetInt32(SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull));
		(*out)[i].attempt = DatumGetInt32(SPI_getbinval(rows->vals[i], rows->tupdesc, 2, &isnull));
		eo_message_from_spi(&(*out)[i].msg, rows->vals[i], rows->tupdesc, 3);
	}
	MemoryContextSwitchTo(spicxt);
	return (int) n;
}

/*
 * eo_delivery_give_up_head
 *		Last resort for a delivery whose retry fails with an error even when
 *		retried alone: mark dead, with the error, the first delivery an
 *		inline retry step of one would attempt, and nothing else.
 */
int
eo_delivery_give_up_head(const char *error)
{
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	Datum		values[2] = {CStringGetTextDatum(error), kinds_where(true, false)};

	if (SPI_execute_with_args("UPDATE eo.delivery x SET state = 'dead', last_error = $1,"
							  "       last_attempt_at = now(), next_attempt_at = 'infinity'"
							  "  FROM (SELECT d.destination_id, d.message_id"
							  DUE_DELIVERIES(INLINE_KINDS)
							  "         ORDER BY d.message_id"
							  "         LIMIT 1 FOR UPDATE OF d SKIP LOCKED) AS h"
							  " WHERE x.destination_id = h.destination_id AND x.message_id = h.message_id",
							  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eo_processing relay: could not give up a delivery");
	return (int) SPI_processed;
}

/* When is the earliest retry due (DT_NOEND if none)? */
TimestampTz
eo_delivery_next_due(void)
{
	eo_relay_prepare(&plan_next_due,
					 "SELECT min(next_attempt_at) FROM eo.delivery WHERE state = 'retrying'",
					 0, NULL);
	if (SPI_execute_plan(plan_next_due, NULL, NULL, false, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		return isnull ? DT_NOEND : DatumGetTimestampTz(d);
	}
	return DT_NOEND;
}

/*
 * eo_delivery_reset_interrupted
 *		What a relay that stopped (cleanly or not) left on the wire, run by
 *		the next one before it sends anything:
 *		- retries in flight go back to retrying, due now;
 *		- a window of the log it was sending (sending_seq) is closed: each
 *		  of its messages without a row of its own gets one, retrying, due
 *		  now, after one attempt.
 *		For sinks that log attempts, each of these attempts is logged as
 *		interrupted (no status code).  Either way the message is sent again
 *		with the same id: the receiver may have it already.  Returns how
 *		many were reset.
 */
int64
eo_delivery_reset_interrupted(void)
{
	Oid			types[1] = {TEXTARRAYOID};
	Datum		values[1] = {kinds_where(false, true)};
	int64		n;

	if (SPI_execute_with_args(
							  "WITH r AS ("
							  "  UPDATE eo.delivery d SET state = 'retrying', next_attempt_at = now(),"
							  "         last_error = 'the relay stopped while the message was being sent'"
							  "   WHERE d.state = 'in_flight'"
							  "  RETURNING d.destination_id, d.message_id, d.attempts, d.last_attempt_at)"
							  " INSERT INTO eo.http_attempt (attempted_at, destination_id, message_id, attempt,"
							  "                             status_code, error, latency_ms, response_body)"
							  " SELECT coalesce(r.last_attempt_at, now()), r.destination_id, r.message_id,"
							  "        r.attempts, NULL, '" EO_INTERRUPTED_ERROR "',"
							  "        greatest(extract(epoch FROM now() - coalesce(r.last_attempt_at, now())) * 1000, 0),"
							  "        NULL"
							  "   FROM r JOIN eo.destination t ON t.id = r.destination_id"
							  "  WHERE t.kind = ANY ($1)",
							  1, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eo_processing relay: could not reset retries left in flight");
	n = (int64) SPI_processed;

	if (SPI_execute_with_args(
							  "WITH w AS ("
							  "  SELECT s.destination_id AS dest, s.delivered_seq AS lo, s.sending_seq AS hi"
							  "    FROM eo.destination_stats s"
							  "   WHERE s.sending_seq IS NOT NULL FOR UPDATE),"
							  " closed AS ("
							  "  UPDATE eo.destination_stats s SET delivered_seq = w.hi, sending_seq = NULL"
							  "    FROM w WHERE s.destination_id = w.dest),"
							  " lost AS ("
							  "  SELECT w.dest, m.id, m.key"
							  "    FROM w JOIN eo.message_log m"
							  "      ON m.seq > w.lo AND m.seq <= w.hi AND w.dest = ANY (m.routes)"
							  "   WHERE NOT EXISTS (SELECT 1 FROM eo.delivery x"
							  "                      WHERE x.destination_id = w.dest AND x.message_id = m.id)),"
							  " parked AS ("
							  "  INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,"
							  "                           next_attempt_at, created_at, last_attempt_at, last_error)"
							  "  SELECT l.dest, l.id, l.key, 'retrying', 1, now(), now(), now(),"
							  "         'the relay stopped while the message was being sent'"
							  "    FROM lost l)"
							  " INSERT INTO eo.http_attempt (attempted_at, destination_id, message_id, attempt,"
							  "                             status_code, error, latency_ms, response_body)"
							  " SELECT now(), l.dest, l.id, 1, NULL, '" EO_INTERRUPTED_ERROR "', 0, NULL"
							  "   FROM lost l JOIN eo.destination t ON t.id = l.dest"
							  "  WHERE t.kind = ANY ($1)",
							  1, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eo_processing relay: could not close windows left open");
	n += (int64) SPI_processed;
	return n;
}

/* Forget saved plans (after an error they may refer to dropped objects). */
void
eo_delivery_forget_plans(void)
{
	SPIPlanPtr *plans[] = {&plan_park, &plan_attempts, &plan_disable, &plan_stats,
	&plan_blocked, &plan_next_due, &plan_any_due};

	eo_relay_free_plans(plans, lengthof(plans));
}
