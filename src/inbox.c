/*-------------------------------------------------------------------------
 *
 * inbox.c
 *	  The inbox: deduplication of incoming messages inside the caller's own
 *	  transaction.
 *
 *	  eo.process(msg_id, consumer, retain) writes a record for
 *	  (consumer, msg_id) in the caller's transaction and returns true the
 *	  first time; while a committed, unexpired record exists it returns
 *	  false.  Because the record is an ordinary row written by the caller's
 *	  transaction, it commits or rolls back together with the caller's own
 *	  work: there is no window in which the work is done but not recorded,
 *	  or recorded but not done.
 *
 *	  Concurrency (see keyed_table.c for the mechanics): a concurrent
 *	  duplicate waits for the first writer and then returns false if it
 *	  committed, true if it rolled back.  Under REPEATABLE READ or
 *	  SERIALIZABLE, a record committed by a transaction the caller cannot
 *	  see raises a serialization failure.
 *
 *	  Table eo.inbox (see the install script):
 *		expires_at, processed_at, consumer, msg_id, result;
 *		primary key (msg_id, consumer), both COLLATE "C".
 *
 *	  An expired record no longer deduplicates: the next eo.process() for
 *	  that id takes it over (it is updated in place of a new insert) and
 *	  eo.result() no longer returns its result.  eo.purge_expired() (SQL)
 *	  deletes expired records in bulk.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/timestamp.h"

#include "eo_processing.h"
#include "keyed_table.h"

PG_FUNCTION_INFO_V1(eo_process);
PG_FUNCTION_INFO_V1(eo_process_retain_text);
PG_FUNCTION_INFO_V1(eo_process_retain_interval);
PG_FUNCTION_INFO_V1(eo_set_result);
PG_FUNCTION_INFO_V1(eo_result);
PG_FUNCTION_INFO_V1(eo_forget);

/* Columns of eo.inbox, in table order (checked at every open). */
enum
{
	INBOX_EXPIRES_AT,
	INBOX_PROCESSED_AT,
	INBOX_CONSUMER,
	INBOX_MSG_ID,
	INBOX_RESULT,
	INBOX_RESULT_OWNER,
	INBOX_NCOLUMNS
};

static const KeyedTableColumn inbox_columns[INBOX_NCOLUMNS] = {
	{"expires_at", TIMESTAMPTZOID},
	{"processed_at", TIMESTAMPTZOID},
	{"consumer", TEXTOID},
	{"msg_id", TEXTOID},
	{"result", JSONBOID},
	{"result_owner", REGROLEOID, true},	/* since 0.3.0 */
};

/*
 * check_result_access
 *		Results belong to the role that stored them: only it, its members
 *		and superusers may read or replace them.  Records without an owner
 *		(no result, or stored before version 0.3.0) are open.
 */
static void
check_result_access(KeyedTable *kt, text *msg_id, text *consumer,
					const char *action)
{
	bool		isnull;
	Datum		owner;

	if (!kt_has_column(kt, INBOX_RESULT_OWNER))
		return;
	owner = slot_getattr(kt->oldslot, INBOX_RESULT_OWNER + 1, &isnull);
	if (isnull || has_privs_of_role(GetUserId(), DatumGetObjectId(owner)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to %s the result of message \"%s\" for consumer \"%s\"",
					action, text_to_cstring(msg_id), text_to_cstring(consumer)),
			 errdetail("A stored result belongs to the role that stored it and the members of that role.")));
}

/*
 * inbox_open
 *		Open eo.inbox and put the key (consumer, msg_id) into newslot, with
 *		the remaining columns NULL.  The caller fills the rest for writes.
 *		"writer" is the SQL function's name when it writes, else NULL.
 */
static KeyedTable *
inbox_open(text *consumer, text *msg_id, const char *writer)
{
	KeyedTable *kt = kt_open("inbox", inbox_columns, INBOX_NCOLUMNS, writer);
	TupleTableSlot *slot = kt->newslot;

	kt_clear_newslot(kt);
	slot->tts_values[INBOX_CONSUMER] = PointerGetDatum(consumer);
	slot->tts_isnull[INBOX_CONSUMER] = false;
	slot->tts_values[INBOX_MSG_ID] = PointerGetDatum(msg_id);
	slot->tts_isnull[INBOX_MSG_ID] = false;
	ExecStoreVirtualTuple(slot);
	return kt;
}

/*
 * record_expired
 *		Has the record in "slot" passed its expiry time?  "now" is the
 *		caller's transaction start time, as for now() in SQL.
 */
static bool
record_expired(TupleTableSlot *slot, TimestampTz now)
{
	bool		isnull;
	Datum		expires = slot_getattr(slot, INBOX_EXPIRES_AT + 1, &isnull);

	return !isnull && DatumGetTimestampTz(expires) <= now;
}

/*
 * process_message
 *		The body of eo.process(): record (consumer, msg_id) unless a live
 *		record exists.  Returns true when the caller should do the work.
 *
 * Runs in the caller's transaction; writes nothing and assigns no
 * transaction id when the message is a duplicate.
 */
static bool
process_message(text *consumer, text *msg_id, TimestampTz now,
				TimestampTz expires)
{
	KeyedTable *kt = inbox_open(consumer, msg_id, "eo.process()");
	TupleTableSlot *slot = kt->newslot;
	bool		first;

	slot->tts_values[INBOX_EXPIRES_AT] = TimestampTzGetDatum(expires);
	slot->tts_isnull[INBOX_EXPIRES_AT] = false;
	slot->tts_values[INBOX_PROCESSED_AT] = TimestampTzGetDatum(now);
	slot->tts_isnull[INBOX_PROCESSED_AT] = false;

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
			 * REPEATABLE READ / SERIALIZABLE, and the latest version of the
			 * record was committed after our snapshot.  If our snapshot sees
			 * a live version (the record existed, and was later only given a
			 * result), the first run's effects are visible to us too, so
			 * "duplicate" is a consistent answer.  Otherwise we cannot
			 * decide within this snapshot.
			 */
			if (kt_fetch_visible(kt) && !record_expired(kt->oldslot, now))
			{
				first = false;
				break;
			}
			kt_report_invisible(kt);
		}

		if (!record_expired(kt->oldslot, now))
		{
			first = false;		/* a live record: duplicate */
			break;
		}

		/* An expired record: take it over as if it were not there. */
		if (!kt_lock(kt, &tid, LockTupleExclusive))
			continue;			/* changed meanwhile: look again */
		if (!record_expired(kt->oldslot, now))
		{
			first = false;
			break;
		}
		kt_update(kt);
		first = true;
		break;
	}

	kt_close(kt);
	return first;
}

/*
 * process_retain_interval
 *		Common body of the overloads whose retention is an interval:
 *		msg_id is argument 0, retain argument "retain_arg" (NULL: the
 *		default retention) and the consumer argument 1, or "default" when
 *		the overload has no consumer argument.
 */
static bool
process_retain_interval(FunctionCallInfo fcinfo, int retain_arg, bool has_consumer)
{
	text	   *msg_id = eo_text_arg(fcinfo, 0, "msg_id", EO_MAX_MSG_ID_BYTES);
	text	   *consumer;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz expires;

	consumer = has_consumer ? eo_text_arg(fcinfo, 1, "consumer", EO_MAX_NAME_BYTES) :
		cstring_to_text("default");
	if (PG_ARGISNULL(retain_arg))
		expires = eo_expiry_default(now);
	else
		expires = eo_expiry_from_interval(now, PG_GETARG_INTERVAL_P(retain_arg));

	return process_message(consumer, msg_id, now, expires);
}

/*
 * eo.process(msg_id text, consumer text, retain interval) RETURNS boolean
 *
 * (Before 0.4.1 this overload had the defaults; the text overload has them
 * now, so that retain => 'infinity' resolves to it.)
 */
Datum
eo_process(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(process_retain_interval(fcinfo, 2, true));
}

/*
 * eo.process(msg_id text, retain interval) RETURNS boolean
 *
 * For the default consumer: serves eo.process(id, retain => interval '...'),
 * which the text overload cannot take (no implicit cast to text).
 */
Datum
eo_process_retain_interval(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(process_retain_interval(fcinfo, 1, false));
}

/*
 * eo.process(msg_id text, consumer text DEFAULT 'default',
 *			  retain text DEFAULT NULL) RETURNS boolean
 *
 * The same, with the retention given as text so that 'infinity' can be
 * written on PostgreSQL versions whose interval type has no infinity.
 * Any other text is read as an interval.
 */
Datum
eo_process_retain_text(PG_FUNCTION_ARGS)
{
	text	   *msg_id = eo_text_arg(fcinfo, 0, "msg_id", EO_MAX_MSG_ID_BYTES);
	text	   *consumer = eo_text_arg(fcinfo, 1, "consumer", EO_MAX_NAME_BYTES);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz expires;

	if (PG_ARGISNULL(2))
		expires = eo_expiry_default(now);
	else
	{
		char	   *retain = text_to_cstring(PG_GETARG_TEXT_PP(2));

		if (eo_is_infinity_text(retain))
			expires = DT_NOEND;
		else
		{
			Datum		interval = DirectFunctionCall3(interval_in,
													   CStringGetDatum(retain),
													   ObjectIdGetDatum(InvalidOid),
													   Int32GetDatum(-1));

			expires = eo_expiry_from_interval(now, DatumGetIntervalP(interval));
		}
	}

	PG_RETURN_BOOL(process_message(consumer, msg_id, now, expires));
}

/*
 * eo.set_result(msg_id text, result jsonb, consumer text DEFAULT 'default')
 *	 RETURNS void
 *
 * Store the result of processing a message on its record, so that a later
 * duplicate can answer with eo.result().  Normally called in the same
 * transaction as the eo.process() that returned true.  Waits for a
 * concurrent writer of the same record; a SQL NULL result clears it.
 */
Datum
eo_set_result(PG_FUNCTION_ARGS)
{
	text	   *msg_id = eo_text_arg(fcinfo, 0, "msg_id", EO_MAX_MSG_ID_BYTES);
	text	   *consumer = eo_text_arg(fcinfo, 2, "consumer", EO_MAX_NAME_BYTES);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	KeyedTable *kt = inbox_open(consumer, msg_id, "eo.set_result()");
	TupleTableSlot *newslot = kt->newslot;
	TupleTableSlot *oldslot;

	for (;;)
	{
		ItemPointerData tid;

		if (!kt_find_existing(kt, &tid) || record_expired(kt->oldslot, now))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("message \"%s\" has not been processed by consumer \"%s\"",
							text_to_cstring(msg_id), text_to_cstring(consumer)),
					 errhint("Call eo.process() for the message first, in the same transaction.")));

		if (kt_lock(kt, &tid, LockTupleNoKeyExclusive))
			break;
	}

	oldslot = kt->oldslot;
	check_result_access(kt, msg_id, consumer, "replace");
	slot_getallattrs(oldslot);
	ExecClearTuple(newslot);
	memcpy(newslot->tts_values, oldslot->tts_values, sizeof(Datum) * kt->ncolumns);
	memcpy(newslot->tts_isnull, oldslot->tts_isnull, sizeof(bool) * kt->ncolumns);
	newslot->tts_isnull[INBOX_RESULT] = PG_ARGISNULL(1);
	newslot->tts_values[INBOX_RESULT] = PG_ARGISNULL(1) ? (Datum) 0 :
		PointerGetDatum(PG_GETARG_JSONB_P(1));
	if (kt_has_column(kt, INBOX_RESULT_OWNER))
	{
		newslot->tts_isnull[INBOX_RESULT_OWNER] = PG_ARGISNULL(1);
		newslot->tts_values[INBOX_RESULT_OWNER] = ObjectIdGetDatum(GetUserId());
	}
	ExecStoreVirtualTuple(newslot);

	kt_update(kt);
	kt_close(kt);
	PG_RETURN_VOID();
}

/*
 * eo.result(msg_id text, consumer text DEFAULT 'default') RETURNS jsonb
 *
 * The result stored with eo.set_result() on the record our snapshot sees,
 * or NULL when there is no live record or no result.  Never waits.
 */
Datum
eo_result(PG_FUNCTION_ARGS)
{
	text	   *msg_id = eo_text_arg(fcinfo, 0, "msg_id", EO_MAX_MSG_ID_BYTES);
	text	   *consumer = eo_text_arg(fcinfo, 1, "consumer", EO_MAX_NAME_BYTES);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	KeyedTable *kt = inbox_open(consumer, msg_id, NULL);
	Jsonb	   *result = NULL;

	if (kt_fetch_visible(kt) && !record_expired(kt->oldslot, now))
	{
		bool		isnull;
		Datum		value = slot_getattr(kt->oldslot, INBOX_RESULT + 1, &isnull);

		check_result_access(kt, msg_id, consumer, "read");
		if (!isnull)
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(kt->callercxt);

			result = DatumGetJsonbPCopy(value);
			MemoryContextSwitchTo(oldcxt);
		}
	}
	kt_close(kt);

	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(result);
}

/*
 * eo.forget(msg_id text, consumer text DEFAULT 'default') RETURNS boolean
 *
 * Operator tool: delete the record of (consumer, msg_id), expired or not,
 * so the message will be processed again.  Returns false when there was
 * no record.  Waits for a concurrent writer of the same record.
 */
Datum
eo_forget(PG_FUNCTION_ARGS)
{
	text	   *msg_id = eo_text_arg(fcinfo, 0, "msg_id", EO_MAX_MSG_ID_BYTES);
	text	   *consumer = eo_text_arg(fcinfo, 1, "consumer", EO_MAX_NAME_BYTES);
	KeyedTable *kt = inbox_open(consumer, msg_id, "eo.forget()");
	bool		found = false;

	for (;;)
	{
		ItemPointerData tid;

		if (!kt_find_existing(kt, &tid))
			break;
		if (kt_lock(kt, &tid, LockTupleExclusive))
		{
			kt_delete(kt);
			found = true;
			break;
		}
	}

	kt_close(kt);
	PG_RETURN_BOOL(found);
}
