/*-------------------------------------------------------------------------
 *
 * keyed_table.c
 *	  Direct row access to the extension's own tables, each identified by
 *	  one unique index (the key).  This is the engine under eo.process()
 *	  and eo.process_seq().
 *
 *	  The SQL a user would write by hand is INSERT ... ON CONFLICT.  We do
 *	  what the executor does for that statement, minus the parts that only
 *	  a general-purpose statement needs (parse analysis, planning, a plan
 *	  tree, projection, permission checks on the table):
 *
 *	  - kt_find_existing() probes the unique index with a dirty snapshot,
 *		waiting for any transaction that is still writing a row with the
 *		same key, exactly as ON CONFLICT's pre-check does.  So a concurrent
 *		duplicate blocks until the first writer commits or aborts, and the
 *		wait obeys lock_timeout, statement_timeout and deadlock detection.
 *	  - kt_insert_new() inserts speculatively (heap tuple, then index entry
 *		with the uniqueness check deferred); if another backend won a race
 *		in between, the heap tuple is "super-deleted" and the caller looks
 *		again.  No subtransaction, no unique-violation error.
 *	  - kt_lock() / kt_update() / kt_delete() lock an existing row with
 *		table_tuple_lock() and change it, with the same concurrent-update
 *		rules as UPDATE: READ COMMITTED retries, REPEATABLE READ and
 *		SERIALIZABLE raise a serialization failure.
 *
 *	  Under REPEATABLE READ and SERIALIZABLE, a row with our key that was
 *	  committed by a transaction our snapshot cannot see raises SQLSTATE
 *	  40001: the caller must not act on (or skip because of) data it is not
 *	  allowed to see.  This matches INSERT ... ON CONFLICT.  The exception
 *	  is bookkeeping that is not the caller's data, such as the last id of
 *	  a message key (outbox.c): kt_find_latest_untracked() and
 *	  kt_lock_latest() work on the latest committed version whatever the
 *	  isolation level.
 *
 *	  Tables are accessed without permission checks on them: the SQL
 *	  functions built on this file are the access control (EXECUTE on the
 *	  function), so application roles need no rights on the tables and
 *	  none of these functions has to be SECURITY DEFINER.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"
#include "access/stratnum.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "compat.h"
#include "eo_processing.h"
#include "keyed_table.h"

/*
 * check_layout
 *		Make sure the table has the columns this library was built for (or
 *		all but trailing ones "added" later), so a library/script version
 *		mismatch is a clear error rather than rows written into the wrong
 *		columns.  Returns the number of columns the table has.  Cheap: it
 *		only reads the relcache entry.
 */
static int
check_layout(Relation rel, const KeyedTableColumn *columns, int ncolumns)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			required = ncolumns;
	bool		ok;

	while (required > 0 && columns[required - 1].added)
		required--;
	ok = (rel->rd_rel->relkind == RELKIND_RELATION &&
		  desc->natts >= required && desc->natts <= ncolumns);

	for (int i = 0; ok && i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);

		ok = !attr->attisdropped &&
			attr->atttypid == columns[i].type &&
			strcmp(NameStr(attr->attname), columns[i].name) == 0;
	}

	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s.%s\" does not have the layout this eo_processing library expects",
						EO_SCHEMA_NAME, RelationGetRelationName(rel)),
				 errhint("Run ALTER EXTENSION eo_processing UPDATE, or install the library version that matches the extension.")));
	return desc->natts;
}

/*
 * Relation OIDs of the tables opened so far in this backend, so that the
 * hot path does not look names up in the catalogs on every call.  An entry
 * is only a hint: open_eo_table() checks that the OID still names the same
 * table and looks the name up again when it does not (the extension was
 * dropped and created again, say).
 */
typedef struct EoTableCache
{
	const char *relname;		/* points to the caller's string constant */
	Oid			relid;
	Oid			nspid;
} EoTableCache;

#define EO_TABLE_CACHE_SIZE 16
static EoTableCache table_cache[EO_TABLE_CACHE_SIZE];

/*
 * open_eo_table
 *		table_open() eo.<relname> with RowExclusiveLock, or a clear error
 *		when it does not exist.
 */
static Relation
open_eo_table(const char *relname)
{
	EoTableCache *entry = NULL;
	Relation	rel;
	Oid			nspid;
	Oid			relid = InvalidOid;

	for (int i = 0; i < EO_TABLE_CACHE_SIZE; i++)
	{
		if (table_cache[i].relname == NULL ||
			strcmp(table_cache[i].relname, relname) == 0)
		{
			entry = &table_cache[i];
			break;
		}
	}

	if (entry != NULL && entry->relname != NULL)
	{
		rel = try_table_open(entry->relid, RowExclusiveLock);
		if (rel != NULL)
		{
			if (RelationGetNamespace(rel) == entry->nspid &&
				strcmp(RelationGetRelationName(rel), relname) == 0)
				return rel;
			table_close(rel, RowExclusiveLock);
		}
	}

	nspid = get_namespace_oid(EO_SCHEMA_NAME, true);
	if (OidIsValid(nspid))
		relid = get_relname_relid(relname, nspid);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s.%s\" does not exist", EO_SCHEMA_NAME, relname),
				 errhint("Is the eo_processing extension installed in this database?")));

	rel = table_open(relid, RowExclusiveLock);
	if (entry != NULL)
	{
		entry->relname = relname;
		entry->relid = relid;
		entry->nspid = nspid;
	}
	return rel;
}

/*
 * kt_open
 *		Open eo.<relname> and its indexes for modification.
 *
 * "writer" names the SQL function for the error raised in a read-only
 * transaction (including every transaction on a hot standby); NULL for
 * callers that only read.
 *
 * Takes RowExclusiveLock on the table and its indexes (held to end of
 * transaction, as for any DML).  On return CurrentMemoryContext is the
 * executor state's query context, so everything the caller allocates
 * until kt_close() is freed there; kt_close() switches back.
 */
KeyedTable *
kt_open(const char *relname, const KeyedTableColumn *columns, int ncolumns,
		const char *writer)
{
	MemoryContext callercxt = CurrentMemoryContext;
	Oid			relid;
	Relation	rel;
	EState	   *estate;
	RangeTblEntry *rte;
	KeyedTable *kt;
	int			natts;

	if (!ActiveSnapshotSet())
		elog(ERROR, "eo_processing: no active snapshot");
	if (writer != NULL)
		PreventCommandIfReadOnly(writer);

	rel = open_eo_table(relname);
	relid = RelationGetRelid(rel);
	natts = check_layout(rel, columns, ncolumns);

	estate = CreateExecutorState();
	MemoryContextSwitchTo(estate->es_query_cxt);

	estate->es_output_cid = GetCurrentCommandId(true);
	estate->es_snapshot = GetActiveSnapshot();

	kt = palloc0(sizeof(KeyedTable));
	kt->rel = rel;
	kt->estate = estate;
	kt->callercxt = callercxt;
	kt->ncolumns = natts;
	/*
	 * A one-entry range table, as the executor would build: index insertion
	 * after an update asks it which columns changed (none of the key
	 * columns ever do, which lets B-tree bottom-up deletion work well).
	 */
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	EO_ExecInitRangeTable(estate, list_make1(rte));

	kt->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(kt->rri, rel, 1, NULL, 0);
	/* speculative = true: prepare the unique index for ON CONFLICT checks */
	ExecOpenIndices(kt->rri, true);

	kt->newslot = table_slot_create(rel, &estate->es_tupleTable);
	kt->oldslot = NULL;			/* created when first needed */

	return kt;
}

/*
 * kt_close
 *		Release everything kt_open() set up.  Locks stay until end of
 *		transaction.  Must be called in the context kt_open() left current.
 */
void
kt_close(KeyedTable *kt)
{
	MemoryContext callercxt = kt->callercxt;
	EState	   *estate = kt->estate;
	Relation	rel = kt->rel;

	ExecCloseIndices(kt->rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	MemoryContextSwitchTo(callercxt);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
}

/* Create oldslot on first use (the insert-only path never needs it). */
static TupleTableSlot *
kt_oldslot(KeyedTable *kt)
{
	if (kt->oldslot == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(kt->estate->es_query_cxt);

		kt->oldslot = table_slot_create(kt->rel, &kt->estate->es_tupleTable);
		MemoryContextSwitchTo(oldcxt);
	}
	return kt->oldslot;
}

/*
 * kt_clear_newslot
 *		Empty newslot so the caller can fill tts_values/tts_isnull and then
 *		call ExecStoreVirtualTuple().
 */
void
kt_clear_newslot(KeyedTable *kt)
{
	TupleTableSlot *slot = kt->newslot;

	ExecClearTuple(slot);
	memset(slot->tts_isnull, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);
}

/*
 * slot_visible
 *		May the caller act on the row in "slot"?  Always under READ
 *		COMMITTED; under REPEATABLE READ or SERIALIZABLE only when the
 *		transaction snapshot sees it or our own transaction wrote it.
 */
static bool
slot_visible(KeyedTable *kt, TupleTableSlot *slot)
{
	Datum		xmin_datum;
	bool		isnull;

	if (!IsolationUsesXactSnapshot())
		return true;
	if (table_tuple_satisfies_snapshot(kt->rel, slot, kt->estate->es_snapshot))
		return true;

	xmin_datum = slot_getsysattr(slot, MinTransactionIdAttributeNumber, &isnull);
	Assert(!isnull);
	return TransactionIdIsCurrentTransactionId(DatumGetTransactionId(xmin_datum));
}

/*
 * kt_report_concurrent_change
 *		SQLSTATE 40001 for a row that a transaction our snapshot cannot see
 *		updated (TM_Updated) or deleted (TM_Deleted), as UPDATE and
 *		SELECT ... FOR UPDATE raise it under REPEATABLE READ.
 */
void
kt_report_concurrent_change(TM_Result result)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to concurrent %s",
					result == TM_Updated ? "update" : "delete"),
			 errhint("Retry the transaction.")));
}

/*
 * kt_report_invisible
 *		Raise the serialization failure for a row with our key that was
 *		committed by a transaction our snapshot cannot see.
 */
void
kt_report_invisible(KeyedTable *kt)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to concurrent update"),
			 errdetail("A row of \"%s.%s\" with the same key was committed by a transaction this transaction's snapshot cannot see.",
					   EO_SCHEMA_NAME, RelationGetRelationName(kt->rel)),
			 errhint("Retry the transaction.")));
}

/*
 * kt_find_latest
 *		Look for a row with newslot's key.
 *
 * Waits for transactions that are still inserting, updating or deleting a
 * row with this key, then returns false if there is none, or true with the
 * latest version of the row in oldslot and its TID in *tid.  That version
 * is committed or written by our own transaction; *visible tells whether
 * the caller may act on it (see slot_visible).  The row is not locked.
 */
bool
kt_find_latest(KeyedTable *kt, ItemPointer tid, bool *visible)
{
	ItemPointerData conflict;

	ItemPointerSetInvalid(&conflict);
	if (ExecCheckIndexConstraints(kt->rri, kt->newslot, kt->estate,
								  &conflict, NIL))
		return false;

	if (!table_tuple_fetch_row_version(kt->rel, &conflict, SnapshotAny,
									   kt_oldslot(kt)))
		elog(ERROR, "eo_processing: could not fetch row (%u,%u) of \"%s\"",
			 ItemPointerGetBlockNumber(&conflict),
			 ItemPointerGetOffsetNumber(&conflict),
			 RelationGetRelationName(kt->rel));

	*visible = slot_visible(kt, kt->oldslot);
	*tid = conflict;
	return true;
}

/*
 * kt_find_existing
 *		kt_find_latest() for callers that must not act on a row their
 *		snapshot cannot see: that case raises a serialization failure.
 */
bool
kt_find_existing(KeyedTable *kt, ItemPointer tid)
{
	bool		visible;

	if (!kt_find_latest(kt, tid, &visible))
		return false;
	if (!visible)
		kt_report_invisible(kt);
	return true;
}

/*
 * kt_insert_new
 *		Insert newslot, unless a row with the same key appeared since the
 *		last kt_find_existing() (then nothing is inserted and false is
 *		returned; the caller looks again).
 *
 * The heap tuple carries a speculative-insertion token while the index
 * entry is added, so that concurrent inserters of the same key wait for
 * us only for this short moment, not until we commit, if we back out.
 */
bool
kt_insert_new(KeyedTable *kt)
{
	TransactionId xid = GetCurrentTransactionId();
	uint32		token;
	bool		conflict = false;
	List	   *recheck;

	token = SpeculativeInsertionLockAcquire(xid);
	table_tuple_insert_speculative(kt->rel, kt->newslot,
								   kt->estate->es_output_cid, 0, NULL, token);
	recheck = EO_ExecInsertIndexTuples(kt->rri, kt->newslot, kt->estate,
									   false, true, &conflict, NIL);
	table_tuple_complete_speculative(kt->rel, kt->newslot, token, !conflict);
	SpeculativeInsertionLockRelease(xid);
	list_free(recheck);

	return !conflict;
}

/*
 * kt_insert_plain
 *		Insert newslot when its key cannot already exist (a fresh UUID): a
 *		plain heap insertion, and index entries with the ordinary
 *		uniqueness check (a duplicate would be a unique-violation error).
 */
void
kt_insert_plain(KeyedTable *kt)
{
	table_tuple_insert(kt->rel, kt->newslot, kt->estate->es_output_cid, 0, NULL);
	if (kt->rri->ri_NumIndices > 0)
		list_free(EO_ExecInsertIndexTuples(kt->rri, kt->newslot, kt->estate,
										   false, false, NULL, NIL));
}

/*
 * lock_row
 *		Common body of kt_lock() and kt_lock_latest(): lock the row at *tid
 *		in the given mode, waiting for concurrent writers, and load it into
 *		oldslot.  With "snapshot_rules", a row our snapshot may not act on
 *		and a row changed by a transaction that committed while we waited
 *		raise a serialization failure under REPEATABLE READ / SERIALIZABLE;
 *		without, the caller gets the latest committed version whatever its
 *		isolation level (false: look again).
 */
static bool
lock_row(KeyedTable *kt, ItemPointer tid, LockTupleMode mode,
		 bool snapshot_rules)
{
	TM_FailureData tmfd;
	TM_Result	result;

	result = table_tuple_lock(kt->rel, tid, kt->estate->es_snapshot,
							  kt_oldslot(kt), kt->estate->es_output_cid,
							  mode, LockWaitBlock, 0, &tmfd);
	if (result == TM_Invisible)
	{
		/*
		 * The row was inserted by the current command of our own
		 * transaction (inserts skip CommandCounterIncrement() to stay
		 * cheap).  Make it visible to ourselves and lock again.
		 */
		CommandCounterIncrement();
		kt->estate->es_output_cid = GetCurrentCommandId(true);
		result = table_tuple_lock(kt->rel, tid, kt->estate->es_snapshot,
								  kt->oldslot, kt->estate->es_output_cid,
								  mode, LockWaitBlock, 0, &tmfd);
	}
	switch (result)
	{
		case TM_Ok:
			if (snapshot_rules && !slot_visible(kt, kt->oldslot))
				kt_report_invisible(kt);
			return true;

		case TM_Updated:
		case TM_Deleted:
			if (snapshot_rules && IsolationUsesXactSnapshot())
				kt_report_concurrent_change(result);
			return false;

		default:

			/*
			 * TM_SelfModified would mean a row changed by a later command of
			 * our own transaction; updates and deletes here end with
			 * CommandCounterIncrement(), so that cannot happen.
			 */
			elog(ERROR, "eo_processing: unexpected result %d locking a row of \"%s\"",
				 (int) result, RelationGetRelationName(kt->rel));
	}
	return false;				/* keep compiler quiet */
}

/*
 * kt_lock
 *		Lock the row at *tid in the given mode, waiting for concurrent
 *		writers, and load it into oldslot.
 *
 * Returns false when the row was updated or deleted by a transaction that
 * committed while we waited (READ COMMITTED: the caller starts over with
 * kt_find_existing()).  Under REPEATABLE READ / SERIALIZABLE that case
 * raises a serialization failure instead, as UPDATE does.
 */
bool
kt_lock(KeyedTable *kt, ItemPointer tid, LockTupleMode mode)
{
	return lock_row(kt, tid, mode, true);
}

/*
 * kt_lock_latest
 *		kt_lock() for bookkeeping rows whose content the caller's snapshot
 *		has no say in (see the header of this file): lock the latest
 *		committed version found by kt_find_latest_untracked() under any
 *		isolation level.  Returns false when that version was updated or
 *		deleted by a transaction that committed while we waited: the
 *		caller looks again.
 */
bool
kt_lock_latest(KeyedTable *kt, ItemPointer tid, LockTupleMode mode)
{
	return lock_row(kt, tid, mode, false);
}

/*
 * kt_update
 *		Replace the row locked by kt_lock() (oldslot) with newslot, and make
 *		the change visible to the rest of our transaction's commands.
 */
void
kt_update(KeyedTable *kt)
{
	if (EO_simple_table_tuple_update(kt->rel, &kt->oldslot->tts_tid,
									 kt->newslot, kt->estate->es_snapshot) &&
		kt->rri->ri_NumIndices > 0)
		list_free(EO_ExecInsertIndexTuples(kt->rri, kt->newslot, kt->estate,
										   true, false, NULL, NIL));
	CommandCounterIncrement();
}

/*
 * kt_delete
 *		Delete the row locked by kt_lock() (oldslot), visibly to the rest
 *		of our transaction's commands.
 */
void
kt_delete(KeyedTable *kt)
{
	simple_table_tuple_delete(kt->rel, &kt->oldslot->tts_tid,
							  kt->estate->es_snapshot);
	CommandCounterIncrement();
}

/*
 * unique_index_keys
 *		Find the table's unique index and fill "keys" with an equality scan
 *		key per key column, taking the values from newslot.  Returns the
 *		number of keys; *index receives the index (open, owned by kt).
 */
static int
unique_index_keys(KeyedTable *kt, Relation *index, ScanKey keys)
{
	ResultRelInfo *rri = kt->rri;
	IndexInfo  *info = NULL;
	int			nkeys;

	*index = NULL;
	for (int i = 0; i < rri->ri_NumIndices; i++)
	{
		if (rri->ri_IndexRelationInfo[i]->ii_Unique)
		{
			*index = rri->ri_IndexRelationDescs[i];
			info = rri->ri_IndexRelationInfo[i];
			break;
		}
	}
	if (*index == NULL)
		elog(ERROR, "eo_processing: \"%s\" has no unique index",
			 RelationGetRelationName(kt->rel));

	nkeys = IndexRelationGetNumberOfKeyAttributes(*index);
	for (int i = 0; i < nkeys; i++)
	{
		AttrNumber	heapatt = info->ii_IndexAttrNumbers[i];
		Oid			eqop = get_opfamily_member((*index)->rd_opfamily[i],
											   (*index)->rd_opcintype[i],
											   (*index)->rd_opcintype[i],
											   BTEqualStrategyNumber);

		if (!OidIsValid(eqop))
			elog(ERROR, "eo_processing: no equality operator for index column %d of \"%s\"",
				 i + 1, RelationGetRelationName(*index));
		ScanKeyEntryInitialize(&keys[i], 0, i + 1, BTEqualStrategyNumber,
							   InvalidOid, (*index)->rd_indcollation[i],
							   get_opcode(eqop),
							   kt->newslot->tts_values[heapatt - 1]);
	}
	return nkeys;
}

/*
 * kt_fetch_visible
 *		Read the row with newslot's key that our snapshot sees into oldslot,
 *		without waiting or locking (a plain MVCC index lookup).  Returns
 *		false when our snapshot sees no such row.
 */
bool
kt_fetch_visible(KeyedTable *kt)
{
	Relation	index;
	ScanKeyData keys[INDEX_MAX_KEYS];
	IndexScanDesc scan;
	int			nkeys;
	bool		found;

	nkeys = unique_index_keys(kt, &index, keys);
	scan = index_beginscan(kt->rel, index, kt->estate->es_snapshot, nkeys, 0);
	index_rescan(scan, keys, nkeys, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, kt_oldslot(kt));
	index_endscan(scan);

	return found;
}

/*
 * kt_find_latest_untracked
 *		kt_find_latest() for bookkeeping rows (see the header of this
 *		file): wait for transactions still writing a row with newslot's
 *		key, then return false if there is none, or true with its latest
 *		committed (or our own) version in oldslot and its TID in *tid.
 *
 * The probe uses a dirty snapshot only, never the transaction snapshot,
 * so under SERIALIZABLE it is not a read the predicate-lock machinery
 * tracks (the ON CONFLICT probe of kt_find_latest() is one): concurrent
 * publishers of one key do not form read/write dependencies through it.
 * The row is not locked.
 */
bool
kt_find_latest_untracked(KeyedTable *kt, ItemPointer tid)
{
	Relation	index;
	ScanKeyData keys[INDEX_MAX_KEYS];
	SnapshotData dirty;
	int			nkeys;

	nkeys = unique_index_keys(kt, &index, keys);
	InitDirtySnapshot(dirty);
	for (;;)
	{
		IndexScanDesc scan;
		bool		found;
		TransactionId xwait;

		scan = index_beginscan(kt->rel, index, &dirty, nkeys, 0);
		index_rescan(scan, keys, nkeys, NULL, 0);
		found = index_getnext_slot(scan, ForwardScanDirection, kt_oldslot(kt));
		index_endscan(scan);
		if (!found)
			return false;

		/* A writer still in progress: wait for it, then look again. */
		xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
		if (!TransactionIdIsValid(xwait))
		{
			*tid = kt->oldslot->tts_tid;
			return true;
		}
		if (dirty.speculativeToken)
			SpeculativeInsertionWait(dirty.xmin, dirty.speculativeToken);
		else
			XactLockTableWait(xwait, kt->rel, &kt->oldslot->tts_tid,
							  XLTW_InsertIndex);
	}
}
