/*-------------------------------------------------------------------------
 *
 * log_write.c
 *	  Writing a routing batch into eo.message_log the way COPY writes a
 *	  table: the rows go into the partition of the current slot with one
 *	  multi-insert, then each row gets its index entries.
 *
 *	  Routing wrote the batch with an INSERT ... SELECT over arrays of the
 *	  claimed values.  The executor then inserted row by row, a WAL record
 *	  and a buffer lock cycle per row, after unnesting a dozen arrays built
 *	  only for it.  Here the claimed values go straight into the rows;
 *	  heap_multi_insert fills a page per WAL record, and
 *	  ExecInsertIndexTuples maintains every index of the partition (the
 *	  primary key checks uniqueness as it always did).
 *
 *	  What the executor's INSERT did that this does not:
 *	  - partition routing: the rows go to eo.message_log_<slot> for the
 *	    slot that eo.message_log_rotation names (0 when it has no row yet),
 *	    and their "slot" column says that slot, so the partition
 *	    constraint holds by construction;
 *	  - constraint checks: every NOT NULL column is filled from a NOT NULL
 *	    column of eo.outbox or by the relay;
 *	  - triggers and rules: none fire for routed messages (the log is the
 *	    extension's own table; the README says so).
 *	  Row counts still reach the statistics (heap_multi_insert counts its
 *	  rows as inserted).
 *
 *	  Call in the routing transaction, SPI connected, with the routing lock
 *	  held (message_log.c).  Everything is allocated in the current memory
 *	  context, the batch's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/partition.h"
#include "catalog/pg_type_d.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "nodes/execnodes.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "message_log.h"

/* The columns of eo.message_log, whatever their order in a partition. */
typedef enum LogColumn
{
	LOG_ID,
	LOG_PUBLISHED_AT,
	LOG_TOPIC,
	LOG_KEY,
	LOG_HEADERS,
	LOG_PAYLOAD,
	LOG_PAYLOAD_TEXT,
	LOG_ROUTED_AT,
	LOG_DESTINATIONS,
	LOG_PUBLISHED_BY,
	LOG_SEQ,
	LOG_ROUTES,
	LOG_SLOT,
	LOG_NCOLUMNS
} LogColumn;

static const char *const log_column_names[LOG_NCOLUMNS] = {
	"id", "published_at", "topic", "key", "headers", "payload", "payload_text",
	"routed_at", "destinations", "published_by", "seq", "routes", "slot"
};

/*
 * For each attribute of a partition's row type, the LogColumn it holds, or
 * -1 for a dropped one.  A partition has exactly its parent's columns (in
 * any order: slot 0 is the 0.5.0 table, attached); anything else means
 * the objects are not this library's.
 */
static int *
map_columns(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int		   *map = palloc(sizeof(int) * desc->natts);
	bool		seen[LOG_NCOLUMNS] = {0};

	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);
		const char *name = NameStr(att->attname);

		map[a] = -1;
		if (att->attisdropped)
			continue;
		for (int c = 0; c < LOG_NCOLUMNS && map[a] < 0; c++)
		{
			if (strcmp(name, log_column_names[c]) == 0)
				map[a] = c;
		}
		if (map[a] < 0)
			elog(ERROR, "eo_processing relay: unexpected column \"%s\" in %s",
				 name, RelationGetRelationName(rel));
		seen[map[a]] = true;
	}
	for (int c = 0; c < LOG_NCOLUMNS; c++)
	{
		if (!seen[c])
			elog(ERROR, "eo_processing relay: %s has no column \"%s\"",
				 RelationGetRelationName(rel), log_column_names[c]);
	}
	return map;
}

/*
 * open_slot
 *		The partition of eo.message_log for "slot", opened with
 *		RowExclusiveLock, the parent locked as an INSERT through it would
 *		lock it.  Only a partition of the log by that name will do.
 */
static Relation
open_slot(int16 slot)
{
	Oid			parent = eo_relation_oid("message_log");
	char		name[NAMEDATALEN];
	Oid			relid;

	if (!OidIsValid(parent))
		elog(ERROR, "eo_processing relay: eo.message_log is missing");
	LockRelationOid(parent, RowExclusiveLock);
	snprintf(name, sizeof(name), "message_log_%d", (int) slot);
	relid = eo_relation_oid(name);
	if (!OidIsValid(relid) || !get_rel_relispartition(relid) ||
		get_partition_parent(relid, true) != parent)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eo.%s is not a partition of eo.message_log", name),
				 errdetail("eo.message_log_rotation names slot %d as the current one.", (int) slot)));
	return table_open(relid, RowExclusiveLock);
}

/*
 * eo_log_write
 *		Insert the n routed messages "msgs" into the log's partition for
 *		"slot".  Their values are the claimed rows of eo.outbox ("claimed":
 *		the message at columns 1 to 7 as eo_message_read_spi reads them,
 *		published_by at LOG_CLAIM_PUBLISHED_BY), with each message's
 *		position and destinations from msgs[i], routed_at the
 *		transaction's start.  Raises the primary key's unique violation, as
 *		an INSERT would, if an id is already in that partition.
 */
void
eo_log_write(SPITupleTable *claimed, const LogMessage *msgs, int n, int16 slot)
{
	Relation	rel = open_slot(slot);
	int		   *map = map_columns(rel);
	TupleDesc	desc = CreateTupleDescCopy(RelationGetDescr(rel));	/* not pinned */
	Datum		routed_at = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot **slots = palloc(sizeof(TupleTableSlot *) * n);
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);

	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);

	for (int i = 0; i < n; i++)
	{
		HeapTuple	row = claimed->vals[i];
		TupleTableSlot *ts = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);

		for (int a = 0; a < desc->natts; a++)
		{
			Datum	   *value = &values[a];
			bool	   *isnull = &nulls[a];

			*isnull = false;
			switch (map[a])
			{
				case LOG_ID:
				case LOG_PUBLISHED_AT:
				case LOG_TOPIC:
				case LOG_KEY:
				case LOG_HEADERS:
				case LOG_PAYLOAD:
				case LOG_PAYLOAD_TEXT:
					/* the claim's columns 1..7 are these, in this order */
					*value = SPI_getbinval(row, claimed->tupdesc, map[a] - LOG_ID + 1, isnull);
					break;
				case LOG_PUBLISHED_BY:
					*value = SPI_getbinval(row, claimed->tupdesc, LOG_CLAIM_PUBLISHED_BY, isnull);
					break;
				case LOG_ROUTED_AT:
					*value = routed_at;
					break;
				case LOG_DESTINATIONS:
					*value = Int32GetDatum(msgs[i].ndests);
					break;
				case LOG_SEQ:
					*value = Int64GetDatum(msgs[i].seq);
					break;
				case LOG_ROUTES:
					{
						Datum	   *ids = palloc(sizeof(Datum) * Max(msgs[i].ndests, 1));

						for (int d = 0; d < msgs[i].ndests; d++)
							ids[d] = Int32GetDatum(msgs[i].dests[d]);
						*value = PointerGetDatum(construct_array(ids, msgs[i].ndests, INT4OID,
																 sizeof(int32), true,
																 TYPALIGN_INT));
						break;
					}
				case LOG_SLOT:
					*value = Int16GetDatum(slot);
					break;
				default:
					*value = (Datum) 0; /* a dropped column */
					*isnull = true;
					break;
			}
		}
		/* the slot owns the row: the multi-insert takes it as it is */
		ExecStoreHeapTuple(heap_form_tuple(desc, values, nulls), ts, true);
		slots[i] = ts;
	}

	/* The rows, a page per WAL record; each slot learns its row's TID. */
	table_multi_insert(rel, slots, n, GetCurrentCommandId(true), 0, NULL);
	for (int i = 0; i < n; i++)
	{
		ResetPerTupleExprContext(estate);
		(void) ExecInsertIndexTuples(rri, slots[i], estate, false, false, NULL, NIL);
	}
	table_finish_bulk_insert(rel, 0);

	for (int i = 0; i < n; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
}
