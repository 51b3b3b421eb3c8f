/*-------------------------------------------------------------------------
 *
 * producer_seq.c
 *	  eo.process_seq(): deduplication by producer sequence number, the
 *	  database-side counterpart of Kafka's idempotent producer.
 *
 *	  A producer numbers its messages 1, 2, 3, ...; the consumer keeps only
 *	  the highest sequence number it has committed for that producer.  A
 *	  message is new exactly when its number is above that mark.  State is
 *	  one row per (consumer, producer), whatever the message volume, and
 *	  nothing ever expires.  Gaps are allowed (a producer may skip numbers);
 *	  anything at or below the mark, including a late out-of-order message,
 *	  is treated as already processed.
 *
 *	  Concurrency follows eo.process(): a caller that finds the producer's
 *	  row being changed by an in-flight transaction waits for it, then
 *	  decides against the committed mark.  Under REPEATABLE READ /
 *	  SERIALIZABLE, when the latest mark was committed after the caller's
 *	  snapshot, a number at or below the mark the snapshot sees returns
 *	  false, and anything higher raises SQLSTATE 40001 (retry).
 *
 *	  Table eo.producer_seq: last_seq, updated_at, consumer, producer;
 *	  primary key (producer, consumer).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "executor/tuptable.h"
#include "utils/timestamp.h"

#include "eo_processing.h"
#include "keyed_table.h"

PG_FUNCTION_INFO_V1(eo_process_seq);

/* Columns of eo.producer_seq, in table order (checked at every open). */
enum
{
	SEQ_LAST_SEQ,
	SEQ_UPDATED_AT,
	SEQ_CONSUMER,
	SEQ_PRODUCER,
	SEQ_NCOLUMNS
};

static const KeyedTableColumn producer_seq_columns[SEQ_NCOLUMNS] = {
	{"last_seq", INT8OID},
	{"updated_at", TIMESTAMPTZOID},
	{"consumer", TEXTOID},
	{"producer", TEXTOID},
};

/*
 * slot_last_seq
 *		The committed (or our own) mark stored in "slot".
 */
static int64
slot_last_seq(TupleTableSlot *slot)
{
	bool		isnull;
	Datum		value = slot_getattr(slot, SEQ_LAST_SEQ + 1, &isnull);

	return isnull ? -1 : DatumGetInt64(value);
}

/*
 * eo.process_seq(producer text, seq bigint, consumer text DEFAULT 'default')
 *	 RETURNS boolean
 *
 * True, and the mark raised to seq in the caller's transaction, when seq is
 * above the producer's mark; false otherwise (nothing written, no
 * transaction id assigned).
 */
Datum
eo_process_seq(PG_FUNCTION_ARGS)
{
	text	   *producer = eo_text_arg(fcinfo, 0, "producer", EO_MAX_NAME_BYTES);
	text	   *consumer = eo_text_arg(fcinfo, 2, "consumer", EO_MAX_NAME_BYTES);
	int64		seq;
	KeyedTable *kt;
	TupleTableSlot *slot;
	bool		first;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("seq must not be null")));
	seq = PG_GETARG_INT64(1);
	if (seq < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seq must not be negative"),
				 errdetail("The sequence number given was " INT64_FORMAT ".", seq)));

	kt = kt_open("producer_seq", producer_seq_columns, SEQ_NCOLUMNS,
				 "eo.process_seq()");
	slot = kt->newslot;
	kt_clear_newslot(kt);
	slot->tts_values[SEQ_LAST_SEQ] = Int64GetDatum(seq);
	slot->tts_values[SEQ_UPDATED_AT] =
		TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	slot->tts_values[SEQ_CONSUMER] = PointerGetDatum(consumer);
	slot->tts_values[SEQ_PRODUCER] = PointerGetDatum(producer);
	memset(slot->tts_isnull, false, sizeof(bool) * SEQ_NCOLUMNS);
	ExecStoreVirtualTuple(slot);

	for (;;)
	{
		ItemPointerData tid;

		bool		visible;

		if (!kt_find_latest(kt, &tid, &visible))
		{
			if (kt_insert_new(kt))
			{
				first = true;
				break;
			}
			continue;			/* lost an insertion race: look again */
		}

		if (!visible)
		{
			/*
			 * REPEATABLE READ / SERIALIZABLE, and the latest mark was
			 * committed after our snapshot.  A number at or below the mark
			 * our snapshot sees is a duplicate whose effects we can see, so
			 * false is consistent; anything above it cannot be decided
			 * within this snapshot.
			 */
			if (kt_fetch_visible(kt) && seq <= slot_last_seq(kt->oldslot))
			{
				first = false;
				break;
			}
			kt_report_invisible(kt);
		}

		if (seq <= slot_last_seq(kt->oldslot))
		{
			first = false;
			break;
		}

		if (!kt_lock(kt, &tid, LockTupleNoKeyExclusive))
			continue;			/* moved on meanwhile: look again */
		if (seq <= slot_last_seq(kt->oldslot))
		{
			first = false;
			break;
		}
		kt_update(kt);
		first = true;
		break;
	}

	kt_close(kt);
	PG_RETURN_BOOL(first);
}
