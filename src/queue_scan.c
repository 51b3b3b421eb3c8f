/*-------------------------------------------------------------------------
 *
 * queue_scan.c
 *	  The candidate scan of eo.read(): which messages of a queue it may
 *	  hand out now, each locked for the caller's transaction.
 *
 *	  A message may go out when it is alive (not dead), visible (its lease
 *	  or retry delay is over) and no earlier alive message has its key.
 *	  All alive messages of a queue are in index queue_message_alive, in
 *	  queue order (qseq).  So one forward scan of that index from the
 *	  start meets every earlier alive message of a key before any later
 *	  one: the scan remembers the keys it has met (leased, retrying and
 *	  ready alike) and passes over a message whose key it met already.
 *	  That is the per-key order rule with no index probe per message, and
 *	  it sees exactly the rows a NOT EXISTS probe with the same snapshot
 *	  would see.
 *
 *	  Each candidate is locked at once, as SELECT ... FOR UPDATE SKIP
 *	  LOCKED would: a row another reader is leasing (or a consumer is
 *	  acknowledging) is passed over without waiting, and its key stays
 *	  taken for the rest of the scan.  Under READ COMMITTED, a row changed
 *	  by a transaction that committed after our snapshot is locked in its
 *	  latest version and checked again; under REPEATABLE READ and
 *	  SERIALIZABLE that is a serialization failure, as for FOR UPDATE.
 *
 *	  Where the scan starts: the index keeps the entries of acknowledged
 *	  messages until VACUUM removes them, and in a busy queue there are
 *	  millions of them ahead of the first alive message between two
 *	  autovacuum runs.  So each backend remembers, per queue, a qseq below
 *	  which no message can be alive any more (the "floor") and starts
 *	  there.  A message is made alive only by an INSERT (the relay's
 *	  enqueueing, and eo.redrive(), which enqueues a dead message again
 *	  with a new qseq), qseq grows with the time it was drawn, and both
 *	  have a transaction id before they draw one.  So once every
 *	  transaction that had an id when a scan saw F as the first alive
 *	  message has ended (a later snapshot's xmin has reached the next
 *	  transaction id as read after that scan's snapshot), nothing below F
 *	  can become alive again: no transaction still running drew a qseq
 *	  below it.  The floor then moves up to F, or to the first alive
 *	  message below F that this later scan found (one that committed in
 *	  between).  The other way back to life is a rollback of the reader's
 *	  own acknowledgement, give-back or kill, which its own scan does not
 *	  see: a scan in a transaction that already had an id never moves
 *	  the floor.  A transaction
 *	  open for long holds the floor where it is; the scan is then as
 *	  long as it was without one.  A floor belongs to one table file:
 *	  after DROP and CREATE EXTENSION or a TRUNCATE (qseq and destination
 *	  ids may start again) it starts over.  Rows written into
 *	  eo.queue_message by hand must take a transaction id before their
 *	  qseq is drawn (txid_current(), as the relay does); rows with an
 *	  explicit qseq (OVERRIDING SYSTEM VALUE), a qseq sequence set back or
 *	  given a cache, are outside this rule.
 *
 *	  The keys met are kept as 64-bit hashes: two keys with the same hash
 *	  would hold each other back (a delay, never a message out of order);
 *	  with the few thousand keys of a scan that does not happen in
 *	  practice.
 *
 *	  Called by eo.read() with the queue's owner as the current user; no
 *	  permission checks here.  Allocates in the current memory context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "keyed_table.h"
#include "message_log.h"
#include "queue_scan.h"

/* The columns the scan reads, by attribute number. */
typedef struct QueueColumns
{
	AttrNumber	qseq;
	AttrNumber	visible_at;
	AttrNumber	dead_at;
	AttrNumber	key;
} QueueColumns;

/*
 * The floor of a queue in this backend (see the file header): scans start
 * at "floor"; "candidate" becomes the floor once a snapshot's xmin has
 * passed candidate_xmax.
 */
typedef struct QueueFloor
{
	Oid			relid;			/* eo.queue_message, and its file: a table */
	Oid			relfilenode;	/* made again, or truncated, starts over */
	int32		dest_id;
	int64		floor;
	bool		has_candidate;
	int64		candidate;
	FullTransactionId candidate_xmax;
} QueueFloor;

static QueueFloor *floors = NULL;	/* in TopMemoryContext */
static int	nfloors = 0;

/*
 * The floor entry of a queue, made (at 0) if it has none yet.  An entry
 * of an earlier eo.queue_message (DROP and CREATE EXTENSION, TRUNCATE:
 * qseq may start again, and destination ids too) is started over.
 */
static QueueFloor *
queue_floor(Relation rel, int32 dest_id)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			relfilenode = rel->rd_rel->relfilenode;

	for (int i = 0; i < nfloors; i++)
	{
		if (floors[i].dest_id != dest_id)
			continue;
		if (floors[i].relid != relid || floors[i].relfilenode != relfilenode)
		{
			memset(&floors[i], 0, sizeof(QueueFloor));
			floors[i].relid = relid;
			floors[i].relfilenode = relfilenode;
			floors[i].dest_id = dest_id;
		}
		return &floors[i];
	}
	if (floors == NULL)
		floors = MemoryContextAlloc(TopMemoryContext, sizeof(QueueFloor));
	else
		floors = repalloc(floors, sizeof(QueueFloor) * (nfloors + 1));
	memset(&floors[nfloors], 0, sizeof(QueueFloor));
	floors[nfloors].relid = relid;
	floors[nfloors].relfilenode = relfilenode;
	floors[nfloors].dest_id = dest_id;
	return &floors[nfloors++];
}

/*
 * candidate_passed
 *		Has every transaction that had an id when the candidate was noted
 *		ended, by "snapshot"?  Its xmin and a candidate noted less than
 *		2^31 transaction ids ago compare as 32-bit ids; a candidate noted
 *		longer ago than that (a backend that did not read for so long) is
 *		older than any transaction that can still run.
 */
static bool
candidate_passed(const QueueFloor *f, Snapshot snapshot)
{
	uint64		age = U64FromFullTransactionId(ReadNextFullTransactionId()) -
		U64FromFullTransactionId(f->candidate_xmax);

	if (age >= (UINT64CONST(1) << 31))
		return true;
	return TransactionIdFollowsOrEquals(snapshot->xmin,
										XidFromFullTransactionId(f->candidate_xmax));
}

/*
 * floor_after_scan
 *		Move the floor after a scan with "snapshot" that started at the
 *		floor and found "first" as its first alive message (found false:
 *		none).  Call after the scan: the next transaction id read here is
 *		at least that of every transaction that drew a qseq before the
 *		snapshot.
 *
 *		"own_changes": the caller's transaction had a transaction id when
 *		the snapshot was taken, so it may have acknowledged, given back or
 *		marked dead messages the scan then did not see, and a rollback (of
 *		the transaction or of a savepoint) would make them alive again.
 *		Such a scan never moves the floor; it may note a candidate, which
 *		only becomes the floor together with the first message of a later
 *		scan without changes of its own (the lower of the two).
 */
static void
floor_after_scan(QueueFloor *f, Snapshot snapshot, bool own_changes, bool found, int64 first)
{
	if (f->has_candidate && !own_changes && candidate_passed(f, snapshot))
	{
		f->floor = found ? Min(first, f->candidate) : f->candidate;
		f->has_candidate = false;
	}
	else if (!f->has_candidate && found && first > f->floor)
	{
		f->has_candidate = true;
		f->candidate = first;
		f->candidate_xmax = ReadNextFullTransactionId();
	}
}

static AttrNumber
column(Relation rel, const char *name)
{
	AttrNumber	att = get_attnum(RelationGetRelid(rel), name);

	if (att == InvalidAttrNumber)
		elog(ERROR, "eo_processing: eo.queue_message has no column \"%s\"", name);
	return att;
}

/* Is the row in slot alive and visible at "now"? */
static bool
row_ready(TupleTableSlot *slot, const QueueColumns *cols, TimestampTz now)
{
	bool		isnull;
	Datum		d;

	(void) slot_getattr(slot, cols->dead_at, &isnull);
	if (!isnull)
		return false;
	d = slot_getattr(slot, cols->visible_at, &isnull);
	return !isnull && DatumGetTimestampTz(d) <= now;
}

/*
 * key_taken
 *		Has the scan met the key of the row in slot before?  Records it if
 *		not.  A row without a key never holds anything back.
 */
static bool
key_taken(HTAB *keys, TupleTableSlot *slot, const QueueColumns *cols)
{
	bool		isnull;
	Datum		d = slot_getattr(slot, cols->key, &isnull);
	text	   *key;
	uint64		h;
	bool		found;

	if (isnull)
		return false;
	key = DatumGetTextPP(d);
	h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
							VARSIZE_ANY_EXHDR(key), 0);
	(void) hash_search(keys, &h, HASH_ENTER, &found);
	return found;
}

/*
 * lock_candidate
 *		Lock the row the scan returned in "seen" without waiting.  Returns
 *		true with the TID of the locked version in *locked when the caller
 *		may hand it out: locked and still ready.  A row locked by someone
 *		else, or gone, is passed over (false).
 */
static bool
lock_candidate(Relation rel, Snapshot snapshot, TupleTableSlot *seen,
			   TupleTableSlot *latest, const QueueColumns *cols,
			   TimestampTz now, ItemPointer locked)
{
	TM_FailureData tmfd;
	TM_Result	result;
	bool		xact_snapshot = IsolationUsesXactSnapshot();

	result = table_tuple_lock(rel, &seen->tts_tid, snapshot, latest,
							  GetCurrentCommandId(true), LockTupleExclusive,
							  LockWaitSkip,
							  xact_snapshot ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION,
							  &tmfd);
	switch (result)
	{
		case TM_Ok:
			/* A newer version (READ COMMITTED): is it still ready? */
			if (tmfd.traversed && !row_ready(latest, cols, now))
				return false;
			*locked = latest->tts_tid;
			return true;

		case TM_Updated:
		case TM_Deleted:
			if (xact_snapshot)
				kt_report_concurrent_change(result);
			return false;

		default:
			/* TM_WouldBlock: another reader or an ack holds it. */
			return false;
	}
}

/*
 * eo_queue_pick
 *		Lock up to "wanted" messages of queue dest_id that may be handed
 *		out at "now" (see the file header), in queue order, and store the
 *		TIDs of their locked versions in tids[] (room for "wanted").
 *		Returns how many.  Takes a new snapshot (under READ COMMITTED)
 *		that sees the caller's earlier changes; the locks last until the
 *		end of the caller's transaction.
 */
int
eo_queue_pick(int32 dest_id, TimestampTz now, int wanted, ItemPointerData *tids)
{
	Oid			relid = eo_relation_oid("queue_message");
	Oid			indexid = eo_relation_oid("queue_message_alive");
	Relation	rel;
	Relation	index;
	QueueColumns cols;
	Snapshot	snapshot;
	ScanKeyData skeys[2];
	QueueFloor *floor;
	bool		own_changes;
	bool		found = false;
	int64		first = 0;
	IndexScanDesc scan;
	TupleTableSlot *seen;
	TupleTableSlot *latest;
	HASHCTL		ctl;
	HTAB	   *keys;
	int			picked = 0;

	if (!OidIsValid(relid) || !OidIsValid(indexid))
		elog(ERROR, "eo_processing: eo.queue_message or its index queue_message_alive is missing");
	rel = table_open(relid, RowShareLock);
	index = index_open(indexid, AccessShareLock);
	if (!index->rd_index->indisvalid)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("index eo.queue_message_alive is not valid"),
				 errhint("REINDEX INDEX eo.queue_message_alive.")));
	floor = queue_floor(rel, dest_id);
	cols.qseq = column(rel, "qseq");
	cols.visible_at = column(rel, "visible_at");
	cols.dead_at = column(rel, "dead_at");
	cols.key = column(rel, "key");

	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(uint64);
	ctl.hcxt = CurrentMemoryContext;
	keys = hash_create("eo.read keys", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	/*
	 * Whether this transaction may have changed messages the scan will not
	 * see (see floor_after_scan); locks the scan takes below do not hide
	 * anything from it.
	 */
	own_changes = TransactionIdIsValid(GetTopTransactionIdIfAny());
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	seen = table_slot_create(rel, NULL);
	latest = table_slot_create(rel, NULL);

	/* The index columns: destination_id, qseq. */
	ScanKeyInit(&skeys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(dest_id));
	ScanKeyInit(&skeys[1], 2, BTGreaterEqualStrategyNumber, F_INT8GE,
				Int64GetDatum(floor->floor));
	scan = index_beginscan(rel, index, snapshot, 2, 0);
	index_rescan(scan, skeys, 2, NULL, 0);
	while (picked < wanted && index_getnext_slot(scan, ForwardScanDirection, seen))
	{
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		(void) slot_getattr(seen, cols.dead_at, &isnull);
		if (!isnull)
			continue;			/* cannot happen: the index holds alive rows */
		if (!found)
		{
			found = true;
			first = DatumGetInt64(slot_getattr(seen, cols.qseq, &isnull));
		}
		if (key_taken(keys, seen, &cols) || !row_ready(seen, &cols, now))
			continue;
		if (lock_candidate(rel, snapshot, seen, latest, &cols, now, &tids[picked]))
			picked++;
	}
	index_endscan(scan);
	floor_after_scan(floor, snapshot, own_changes, found, first);

	ExecDropSingleTupleTableSlot(latest);
	ExecDropSingleTupleTableSlot(seen);
	UnregisterSnapshot(snapshot);
	hash_destroy(keys);
	index_close(index, AccessShareLock);
	table_close(rel, NoLock);
	return picked;
}
