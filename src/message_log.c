/*-------------------------------------------------------------------------
 *
 * message_log.c
 *	  The log of routed messages (eo.message_log) and the cursors over it.
 *
 *	  Routing takes committed messages out of eo.outbox in id order, gives
 *	  each the next positions of the sequence eo.message_seq ("seq") and
 *	  the list of destinations whose subscriptions match it ("routes"), and
 *	  moves it to the log.  Routing transactions are serialised by a lock
 *	  on the sequence (eo_log_lock), so seq order is the order in which
 *	  they commit: a reader that has seen position n has seen every
 *	  position below it, and a message committed late with an earlier id
 *	  simply gets a later position.  (Within a key, publishers are
 *	  serialised too, so id order, seq order and commit order agree.)
 *
 *	  Each destination has a cursor in eo.destination_stats:
 *	  delivered_seq, below which every message routed to it was delivered
 *	  or set aside in eo.delivery, and sending_seq, the end of the window
 *	  an asynchronous sink is sending.  The success path writes no row
 *	  per message: the cursor moves once per batch.
 *
 *	  Everything runs in the caller's transaction with SPI connected.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "eo_processing.h"
#include "message_log.h"
#include "relay.h"
#include "topic.h"

/* How far ahead of a cursor one read looks, in multiples of its limit. */
#define READ_SPAN_FACTOR 4

static SPIPlanPtr plan_claim = NULL;
static SPIPlanPtr plan_seq = NULL;
static SPIPlanPtr plan_delete = NULL;
static SPIPlanPtr plan_slot = NULL;
static SPIPlanPtr plan_cursors = NULL;
static SPIPlanPtr plan_head = NULL;
static SPIPlanPtr plan_read = NULL;

/* A relation of the extension's schema, or InvalidOid if there is none. */
Oid
eo_relation_oid(const char *name)
{
	Oid			nsp = get_namespace_oid(EO_SCHEMA_NAME, true);

	return OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;
}

/*
 * eo_log_objects_ready
 *		Whether the extension's objects are those of this library's relay
 *		(version 0.6.0 or later: the log rotates over the slots that
 *		eo.message_log_rotation tracks).  Between the installation of a
 *		new library and ALTER EXTENSION UPDATE they may be older.
 */
bool
eo_log_objects_ready(void)
{
	return OidIsValid(eo_relation_oid("message_log_rotation"));
}

/*
 * eo_log_lock
 *		Take the routing lock until the end of the transaction: a
 *		self-conflicting lock on the sequence eo.message_seq that nextval()
 *		and readers do not conflict with.  Without "wait", returns false at
 *		once if another routing transaction holds it.
 */
bool
eo_log_lock(bool wait)
{
	Oid			seq = eo_relation_oid("message_seq");

	if (!OidIsValid(seq) || !eo_log_objects_ready())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the objects of extension eo_processing are older than its library"),
				 errhint("Run ALTER EXTENSION eo_processing UPDATE.")));
	if (wait)
	{
		LockRelationOid(seq, ShareUpdateExclusiveLock);
		return true;
	}
	return ConditionalLockRelationOid(seq, ShareUpdateExclusiveLock);
}

/* The last position routed so far (0 if none); call with the lock held. */
int64
eo_log_head(void)
{
	bool		isnull;
	Datum		d;

	/*
	 * A saved plan: the relay turns enable_seqscan off, so that even a
	 * plan made on an empty log reads each slot's index backwards.
	 */
	eo_relay_prepare(&plan_head, "SELECT coalesce(max(seq), 0) FROM eo.message_log", 0, NULL);
	if (SPI_execute_plan(plan_head, NULL, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "eo_processing relay: could not read the end of the log");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return DatumGetInt64(d);
}

/* The destinations a topic goes to, in id order, each once. */
static void
route_message(const RelayConfig *config, LogMessage *m)
{
	ListCell   *lc;
	int			n = 0;

	m->dests = palloc(sizeof(int32) * Max(list_length(config->routes), 1));
	foreach(lc, config->routes)
	{
		RelayRoute *r = lfirst(lc);

		/* Routes are in destination order: two patterns of one match once. */
		if (n > 0 && m->dests[n - 1] == r->dest->id)
			continue;
		if (eo_topic_matches(r->pattern, r->pattern_len, r->is_prefix, m->msg.topic))
			m->dests[n++] = r->dest->id;
	}
	m->ndests = n;
}

/* Order of uuids, for comparing the claimed ids with the deleted ones. */
static int
uuid_order(const void *a, const void *b)
{
	return memcmp(a, b, UUID_LEN);
}

/*
 * delete_claimed
 *		Delete the claimed rows of eo.outbox, found by the ctids the claim
 *		read in one TID scan (no index probe; a TID lookup per row would
 *		also ask the kernel for the table's size every time).  Every
 *		deleted row must carry a claimed id and every claimed row must be
 *		deleted, or the routing transaction fails: a ctid that now holds
 *		another row never counts.
 */
static void
delete_claimed(SPITupleTable *claimed, uint64 n)
{
	Oid			types[1] = {TIDARRAYOID};
	Datum		values[1];
	pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * n);
	Datum	   *tids = palloc(sizeof(Datum) * n);
	pg_uuid_t  *deleted;
	bool		isnull;

	for (uint64 i = 0; i < n; i++)
	{
		ids[i] = *DatumGetUUIDP(SPI_getbinval(claimed->vals[i], claimed->tupdesc, 1, &isnull));
		tids[i] = SPI_getbinval(claimed->vals[i], claimed->tupdesc, LOG_CLAIM_CTID, &isnull);
	}
	values[0] = PointerGetDatum(construct_array(tids, (int) n, TIDOID, sizeof(ItemPointerData),
												false, TYPALIGN_SHORT));
	eo_relay_prepare(&plan_delete,
					 "DELETE FROM eo.outbox WHERE ctid = ANY ($1) RETURNING id",
					 1, types);
	if (SPI_execute_plan(plan_delete, values, NULL, false, 0) != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "eo_processing relay: could not delete routed messages from eo.outbox");
	if (SPI_processed != n)
		elog(ERROR, "eo_processing relay: deleted " UINT64_FORMAT " of " UINT64_FORMAT " claimed messages",
			 SPI_processed, n);
	deleted = palloc(sizeof(pg_uuid_t) * n);
	for (uint64 i = 0; i < n; i++)
		deleted[i] = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	qsort(deleted, n, sizeof(pg_uuid_t), uuid_order);
	qsort(ids, n, sizeof(pg_uuid_t), uuid_order);
	if (memcmp(deleted, ids, sizeof(pg_uuid_t) * n) != 0)
		elog(ERROR, "eo_processing relay: eo.outbox changed while it was routed");
	SPI_freetuptable(SPI_tuptable);
}

/*
 * The slot of the log that routing writes into now: 0 until
 * eo.purge_delivered() first records one.  Read in the routing
 * transaction; a rotation in between only means that the batch lands in
 * the slot it replaced, which is kept until everything in it has aged.
 */
static int16
current_slot(void)
{
	bool		isnull;
	Datum		d;

	eo_relay_prepare(&plan_slot, "SELECT current_slot FROM eo.message_log_rotation", 0, NULL);
	if (SPI_execute_plan(plan_slot, NULL, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read eo.message_log_rotation");
	if (SPI_processed == 0)
		return 0;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt16(d);
}

/*
 * eo_log_route
 *		Route up to "limit" messages of eo.outbox, oldest id first: number
 *		them, route them with the current configuration (read after the
 *		claim, so that it includes every change the claim could see; see
 *		relay_config.c) and move them to the log (log_write.c).  The
 *		caller holds the routing lock.  Returns how many, with the messages
 *		in *out and the configuration used in *config (current context; the
 *		messages point into SPI's result, valid until SPI_finish()).
 */
int
eo_log_route(int limit, const RelayConfig **config, LogMessage **out)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(limit)};
	SPITupleTable *claimed;
	uint64		n;
	LogMessage *msgs;
	int64		last;
	bool		isnull;
	MemoryContext cxt = CurrentMemoryContext;

	/*
	 * A saved generic plan: the relay turns enable_seqscan off, so that a
	 * plan made while eo.outbox was empty still reads the backlog through
	 * its primary key instead of sorting it whole for every batch.
	 */
	eo_relay_prepare(&plan_claim,
					 "SELECT id, published_at, topic, key, headers, payload, payload_text, ctid,"
					 "       published_by"
					 "  FROM eo.outbox ORDER BY id LIMIT $1",
					 1, types);
	if (SPI_execute_plan(plan_claim, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read eo.outbox");
	claimed = SPI_tuptable;
	n = SPI_processed;
	MemoryContextSwitchTo(cxt);
	*out = NULL;
	if (n == 0)
		return 0;

	*config = eo_relay_config();
	MemoryContextSwitchTo(cxt);
	msgs = palloc0(sizeof(LogMessage) * n);
	for (uint64 i = 0; i < n; i++)
	{
		eo_message_read_spi(&msgs[i].msg, claimed->vals[i], claimed->tupdesc, 1, false);
		route_message(*config, &msgs[i]);
	}

	/* n positions at once; a rolled-back routing leaves a harmless gap. */
	values[0] = Int32GetDatum((int32) n);
	eo_relay_prepare(&plan_seq,
					 "SELECT pg_catalog.setval('eo.message_seq',"
					 "       pg_catalog.nextval('eo.message_seq') + $1 - 1)",
					 1, types);
	if (SPI_execute_plan(plan_seq, values, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "eo_processing relay: could not number messages");
	last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < n; i++)
		msgs[i].seq = last - (int64) n + 1 + (int64) i;

	delete_claimed(claimed, n);
	MemoryContextSwitchTo(cxt);
	eo_log_write(claimed, msgs, (int) n, current_slot());
	MemoryContextSwitchTo(cxt);
	*out = msgs;
	return (int) n;
}

/* Every destination's cursor: a List of LogCursor (current context). */
List *
eo_log_cursors(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *cursors = NIL;

	eo_relay_prepare(&plan_cursors,
					 "SELECT destination_id, delivered_seq, coalesce(sending_seq, 0)"
					 "  FROM eo.destination_stats",
					 0, NULL);
	if (SPI_execute_plan(plan_cursors, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read the cursors");
	MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		LogCursor  *c = palloc(sizeof(LogCursor));

		c->dest_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		c->delivered_seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		c->sending_seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
		cursors = lappend(cursors, c);
	}
	return cursors;
}

/* The cursor of a destination in a list of cursors, or NULL. */
LogCursor *
eo_log_find_cursor(List *cursors, int32 dest_id)
{
	ListCell   *lc;

	foreach(lc, cursors)
	{
		if (((LogCursor *) lfirst(lc))->dest_id == dest_id)
			return lfirst(lc);
	}
	return NULL;
}

/*
 * eo_log_read
 *		Up to "limit" messages routed to a destination after position
 *		"after", in log order, allocated in the current context.  The read
 *		looks at most READ_SPAN_FACTOR * limit positions ahead (so that it
 *		never sorts a whole backlog); *covered gets the position up to
 *		which it looked, as seen by the same snapshot: the end of that span
 *		or the end of the log, whichever is first.  When fewer than "limit"
 *		were found, nothing else routed to the destination lies up to
 *		*covered, and a cursor may move there.  Returns how many.
 */
int
eo_log_read(int32 dest_id, int64 after, int limit, LogMessage **out, int64 *covered)
{
	int64		span_end = after + (int64) READ_SPAN_FACTOR * limit;
	Oid			types[4] = {INT8OID, INT4OID, INT4OID, INT8OID};
	Datum		values[4] = {Int64GetDatum(after), Int32GetDatum(dest_id), Int32GetDatum(limit),
	Int64GetDatum(span_end)};
	MemoryContext cxt = CurrentMemoryContext;
	SPITupleTable *rows;
	uint64		n;
	int			count = 0;

	/*
	 * One statement, so one snapshot, for the messages and the end of the
	 * log; the end is the row whose id is NULL.  A saved plan, as the
	 * claim of eo_log_route(): with enable_seqscan off it reads each
	 * slot's seq index over the span, whatever the log held when it was
	 * made (planning it for every read cost a tenth of the relay's time
	 * under a steady load of small batches).
	 */
	eo_relay_prepare(&plan_read,
					 "SELECT m.seq, m.id, m.published_at, m.topic, m.key, m.headers,"
					 "       m.payload, m.payload_text"
					 "  FROM (SELECT * FROM eo.message_log"
					 "         WHERE seq > $1 AND seq <= $4 AND $2 = ANY (routes)"
					 "         ORDER BY seq LIMIT $3) AS m"
					 " UNION ALL"
					 " SELECT coalesce(max(seq), 0), NULL, NULL, NULL, NULL, NULL, NULL, NULL"
					 "   FROM eo.message_log",
					 4, types);
	if (SPI_execute_plan(plan_read, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read eo.message_log");
	rows = SPI_tuptable;
	n = SPI_processed;
	MemoryContextSwitchTo(cxt);
	*out = palloc0(sizeof(LogMessage) * Max(n, 1));
	*covered = after;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		int64		seq = DatumGetInt64(SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull));

		(void) SPI_getbinval(rows->vals[i], rows->tupdesc, 2, &isnull);
		if (isnull)
		{
			/* the end of the log */
			*covered = Max(after, Min(seq, span_end));
			continue;
		}
		(*out)[count].seq = seq;
		eo_message_from_spi(&(*out)[count].msg, rows->vals[i], rows->tupdesc, 2);
		count++;
	}
	return count;
}

/*
 * eo_log_quarantine_head
 *		Last resort for a message that makes routing fail even alone: move
 *		the oldest outbox message to the log, routed nowhere, with a dead
 *		delivery (carrying the error) for every destination it matches, so
 *		that it stays visible and redrivable but no longer blocks the
 *		queue.  The caller holds the routing lock.  Returns 1 if a message
 *		was moved.
 */
int
eo_log_quarantine_head(const char *error)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(error)};

	if (SPI_execute_with_args("WITH m AS ("
							  "  DELETE FROM eo.outbox o"
							  "   WHERE o.id = (SELECT id FROM eo.outbox ORDER BY id LIMIT 1)"
							  "  RETURNING o.*),"
							  " r AS ("
							  "  SELECT DISTINCT s.destination_id FROM m JOIN eo.subscription s"
							  "    ON eo.topic_matches(s.topic, m.topic)),"
							  " log AS ("
							  "  INSERT INTO eo.message_log"
							  "    (id, published_at, topic, key, headers, payload, payload_text, routed_at,"
							  "     destinations, published_by, seq, routes, slot)"
							  "  SELECT m.id, m.published_at, m.topic, m.key, m.headers, m.payload,"
							  "         m.payload_text, now(), (SELECT count(*) FROM r), m.published_by,"
							  "         nextval('eo.message_seq'), '{}',"
							  "         coalesce((SELECT current_slot FROM eo.message_log_rotation), 0)"
							  "    FROM m RETURNING id, key)"
							  " INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,"
							  "                          next_attempt_at, created_at, last_attempt_at, last_error)"
							  " SELECT r.destination_id, log.id, log.key, 'dead', 1, 'infinity'::timestamptz,"
							  "        now(), now(), $1"
							  "   FROM log, r",
							  1, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eo_processing relay: could not quarantine a message");
	return 1;
}

/* Forget saved plans (after an error they may refer to dropped objects). */
void
eo_log_forget_plans(void)
{
	SPIPlanPtr *plans[] = {&plan_claim, &plan_seq, &plan_delete, &plan_slot, &plan_cursors, &plan_head,
	&plan_read};

	eo_relay_free_plans(plans, lengthof(plans));
}
