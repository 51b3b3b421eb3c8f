/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The transactional outbox: eo.publish() writes a message in the
 *	  caller's transaction, so a rolled-back transaction publishes nothing
 *	  and a committed one is relayed (at least once) after commit.
 *
 *	  - Message ids are UUIDv7 (RFC 9562): a millisecond timestamp, then a
 *		12-bit counter that keeps ids from one backend strictly increasing
 *		within a millisecond, then 62 random bits.  Unique across
 *		databases and servers, and time-ordered, so the outbox's primary
 *		key is also the publish order.
 *	  - Messages with a key: the publisher first locks the key's row in
 *		eo.outbox_key (creating it if needed) and only then takes its id,
 *		which it makes larger than the key's previous id.  Publishers of
 *		one key are thereby serialised: within a key, id order is commit
 *		order, and the relay can deliver a key's messages in id order
 *		without ever skipping one that commits late.  The row is found
 *		(with a dirty snapshot) and locked in its latest committed version
 *		under every isolation level, so publishing a key causes no
 *		serialization failure of its own.
 *	  - At commit, a transaction that published sets the latch of its
 *		database's relay worker, so delivery starts without polling.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type_d.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "destination.h"
#include "eo_processing.h"
#include "keyed_table.h"
#include "outbox.h"
#include "relay.h"

PG_FUNCTION_INFO_V1(eo_publish_jsonb);
PG_FUNCTION_INFO_V1(eo_publish_text);
PG_FUNCTION_INFO_V1(eo_message);

/* Columns of eo.outbox (and the first seven of eo.message_log). */
enum
{
	OUTBOX_ID,
	OUTBOX_PUBLISHED_AT,
	OUTBOX_TOPIC,
	OUTBOX_KEY,
	OUTBOX_HEADERS,
	OUTBOX_PAYLOAD,
	OUTBOX_PAYLOAD_TEXT,
	OUTBOX_PUBLISHED_BY,		/* since 0.4.1 */
	OUTBOX_NCOLUMNS
};

/* The first seven columns of a message, shared by eo.outbox and the log. */
#define MESSAGE_NCOLUMNS (OUTBOX_PAYLOAD_TEXT + 1)

/* eo.message_log's own columns, after the first seven. */
enum
{
	LOG_ROUTED_AT = MESSAGE_NCOLUMNS,
	LOG_DESTINATIONS,
	LOG_PUBLISHED_BY,			/* since 0.4.1 */
	LOG_SEQ,					/* since 0.5.0 */
	LOG_ROUTES,					/* since 0.5.0 */
	LOG_SLOT,					/* since 0.6.0 */
	LOG_NCOLUMNS
};

static const KeyedTableColumn outbox_columns[OUTBOX_NCOLUMNS] = {
	{"id", UUIDOID},
	{"published_at", TIMESTAMPTZOID},
	{"topic", TEXTOID},
	{"key", TEXTOID},
	{"headers", JSONBOID},
	{"payload", JSONBOID},
	{"payload_text", TEXTOID},
	{"published_by", REGROLEOID, true},
};

static const KeyedTableColumn message_log_columns[LOG_NCOLUMNS] = {
	{"id", UUIDOID},
	{"published_at", TIMESTAMPTZOID},
	{"topic", TEXTOID},
	{"key", TEXTOID},
	{"headers", JSONBOID},
	{"payload", JSONBOID},
	{"payload_text", TEXTOID},
	{"routed_at", TIMESTAMPTZOID},
	{"destinations", INT4OID},
	{"published_by", REGROLEOID, true},
	{"seq", INT8OID, true},
	{"routes", INT4ARRAYOID, true},
	{"slot", INT2OID, true},
};

enum
{
	KEY_LAST_ID,
	KEY_LAST_USED,
	KEY_KEY,
	KEY_NCOLUMNS
};

static const KeyedTableColumn outbox_key_columns[KEY_NCOLUMNS] = {
	{"last_id", UUIDOID},
	{"last_used", TIMESTAMPTZOID},
	{"key", TEXTOID},
};

/* Per-backend UUIDv7 state. */
static pg_prng_state uuid_prng;
static bool uuid_prng_seeded = false;
static uint64 uuid_last_ms = 0;
static uint32 uuid_last_counter = 0;

/* Did the current transaction publish? (wake the relay at commit) */
static bool published_in_xact = false;
static bool xact_callback_registered = false;

/*
 * uuid_set_u64
 *		Store "value" big-endian into 8 bytes.
 */
static void
uuid_set_u64(unsigned char *dst, uint64 value)
{
	for (int i = 7; i >= 0; i--)
	{
		dst[i] = (unsigned char) (value & 0xFF);
		value >>= 8;
	}
}

static uint64
uuid_get_u64(const unsigned char *src)
{
	uint64		value = 0;

	for (int i = 0; i < 8; i++)
		value = (value << 8) | src[i];
	return value;
}

/*
 * eo_uuidv7
 *		A new UUIDv7, strictly greater than every id this backend generated
 *		before, and (when "after" is given) than *after.
 *
 * Layout: 48 bits of Unix milliseconds, version 7, a 12-bit counter, the
 * variant, 62 random bits.  If the clock stands still or goes back, the
 * previous millisecond is kept and the counter advances; when the counter
 * is exhausted the millisecond moves on by one.
 */
void
eo_uuidv7(pg_uuid_t *out, const pg_uuid_t *after)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		ms = (uint64) ((now / 1000) +
							   (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);
	uint32		counter;
	uint64		hi;
	uint64		lo;

	if (!uuid_prng_seeded)
	{
		if (!pg_prng_strong_seed(&uuid_prng))
			pg_prng_seed(&uuid_prng, (uint64) MyProcPid ^ (uint64) now);
		uuid_prng_seeded = true;
	}

	if (after != NULL)
	{
		/* Never go below the key's previous id (a clock that went back). */
		uint64		after_ms = uuid_get_u64(after->data) >> 16;
		uint32		after_counter = (uint32) (uuid_get_u64(after->data) & 0x0FFF);

		if (after_ms > uuid_last_ms ||
			(after_ms == uuid_last_ms && after_counter > uuid_last_counter))
		{
			uuid_last_ms = after_ms;
			uuid_last_counter = after_counter;
		}
	}

	if (ms > uuid_last_ms)
		counter = (uint32) (pg_prng_uint64(&uuid_prng) & 0x01FF);	/* leave headroom */
	else
	{
		ms = uuid_last_ms;
		counter = uuid_last_counter + 1;
		if (counter > 0x0FFF)
		{
			ms++;
			counter = 0;
		}
	}
	uuid_last_ms = ms;
	uuid_last_counter = counter;

	hi = (ms << 16) | (UINT64CONST(0x7) << 12) | counter;
	lo = (pg_prng_uint64(&uuid_prng) & UINT64CONST(0x3FFFFFFFFFFFFFFF)) |
		UINT64CONST(0x8000000000000000);
	uuid_set_u64(out->data, hi);
	uuid_set_u64(out->data + 8, lo);
}

/* Commit callback: wake the relay once per publishing transaction. */
static void
outbox_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			/* a disabled relay is not woken: a signal per commit costs */
			if (published_in_xact && eo_relay_enabled)
				eo_relay_wake_database(MyDatabaseId);
			published_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			published_in_xact = false;
			break;
		default:
			break;
	}
}

/*
 * check_headers
 *		Headers are a JSON object whose values are strings (they become
 *		HTTP headers of webhook deliveries, so names must be HTTP tokens,
 *		values free of line breaks, and the relay's own names are taken).
 */
static void
check_headers(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			depth = 0;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object")));
	if (VARSIZE(headers) > EO_MAX_HEADERS_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("headers are too large"),
				 errdetail("They take %d bytes; the limit is %d bytes.",
						   (int) VARSIZE(headers), EO_MAX_HEADERS_BYTES)));

	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
			depth++;
		else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
			depth--;
		else if (tok == WJB_KEY && depth == 1)
		{
			if (!eo_http_header_name_ok(v.val.string.val, v.val.string.len))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("header name \"%s\" is not a valid HTTP header name",
								pnstrdup(v.val.string.val, Min(v.val.string.len, 64))),
						 errdetail("Header names are HTTP tokens: letters, digits and !#$%%&'*+-.^_`|~.")));
			if (eo_http_header_reserved(v.val.string.val, v.val.string.len))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("header \"%s\" is set by the relay and cannot be published",
								pnstrdup(v.val.string.val, v.val.string.len))));
		}
		else if (tok == WJB_VALUE && (depth != 1 || v.type != jbvString))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header values must be strings")));
		else if (tok == WJB_VALUE &&
				 !eo_http_header_value_ok(v.val.string.val, v.val.string.len))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header values must not contain control characters such as line breaks")));
		if (depth > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header values must be strings")));
	}
}

/*
 * claim_key
 *		Serialise publishers of one key and take the message id.
 *
 * Locks the key's row in eo.outbox_key (held to the end of the
 * transaction, or of the savepoint, and kept by PREPARE TRANSACTION until
 * COMMIT/ROLLBACK PREPARED), creating it for a new key, and only then
 * generates the id, larger than the key's previous one, which is stored
 * back on the row.  A concurrent publisher of the same key waits for our
 * transaction, so within a key, id order is commit order.
 *
 * The row is bookkeeping, not data the caller reads: it is always the
 * latest committed version that is locked and updated, whatever the
 * caller's isolation level.  So under REPEATABLE READ and SERIALIZABLE a
 * publisher that waited for another one, or whose snapshot predates the
 * last publication of the key, proceeds (with the larger id) instead of
 * failing with a serialization error; its snapshot is not changed and
 * still does not show the other transaction's message.  Under
 * SERIALIZABLE, the key's row is found with a dirty snapshot only, which
 * is not a read that the predicate-lock machinery tracks: concurrent
 * publishers of one key form no read/write dependency through it.
 */
static void
claim_key(text *key, pg_uuid_t *id, TimestampTz now)
{
	KeyedTable *kt = kt_open("outbox_key", outbox_key_columns, KEY_NCOLUMNS,
							 "eo.publish()");
	TupleTableSlot *slot = kt->newslot;

	for (;;)
	{
		ItemPointerData tid;
		bool		found;

		kt_clear_newslot(kt);
		slot->tts_values[KEY_KEY] = PointerGetDatum(key);
		slot->tts_isnull[KEY_KEY] = false;
		ExecStoreVirtualTuple(slot);

		found = kt_find_latest_untracked(kt, &tid);
		if (found && !kt_lock_latest(kt, &tid, LockTupleNoKeyExclusive))
			continue;			/* changed meanwhile: look again */

		if (found)
		{
			bool		isnull;
			pg_uuid_t	last = *DatumGetUUIDP(slot_getattr(kt->oldslot,
														   KEY_LAST_ID + 1,
														   &isnull));

			eo_uuidv7(id, &last);
		}
		else
			eo_uuidv7(id, NULL);

		ExecClearTuple(slot);
		slot->tts_values[KEY_LAST_ID] = UUIDPGetDatum(id);
		slot->tts_values[KEY_LAST_USED] = TimestampTzGetDatum(now);
		slot->tts_values[KEY_KEY] = PointerGetDatum(key);
		memset(slot->tts_isnull, false, sizeof(bool) * KEY_NCOLUMNS);
		ExecStoreVirtualTuple(slot);

		if (found)
		{
			kt_update(kt);
			break;
		}
		if (kt_insert_new(kt))
			break;
		/* another publisher created the key first: wait for it, retry */
	}
	kt_close(kt);
}

/*
 * publish
 *		Common body of both eo.publish() variants: validate, serialise on
 *		the key, take the id, insert the row.  Returns the id.
 */
static Datum
publish(FunctionCallInfo fcinfo, bool payload_is_jsonb)
{
	text	   *topic = eo_text_arg(fcinfo, 0, "topic", EO_MAX_NAME_BYTES);
	text	   *key = NULL;
	Jsonb	   *headers = NULL;
	KeyedTable *kt;
	TupleTableSlot *slot;
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	TimestampTz now = GetCurrentTimestamp();

	if (!PG_ARGISNULL(2))
		key = eo_text_arg(fcinfo, 2, "key", EO_MAX_MSG_ID_BYTES);
	if (!PG_ARGISNULL(3))
	{
		headers = PG_GETARG_JSONB_P(3);
		check_headers(headers);
	}

	if (key != NULL)
		claim_key(key, id, now);
	else
		eo_uuidv7(id, NULL);

	kt = kt_open("outbox", outbox_columns, OUTBOX_NCOLUMNS, "eo.publish()");
	slot = kt->newslot;
	kt_clear_newslot(kt);
	slot->tts_values[OUTBOX_ID] = UUIDPGetDatum(id);
	slot->tts_values[OUTBOX_PUBLISHED_AT] = TimestampTzGetDatum(now);
	slot->tts_values[OUTBOX_TOPIC] = PointerGetDatum(topic);
	memset(slot->tts_isnull, false, sizeof(bool) * 3);
	if (key != NULL)
	{
		slot->tts_values[OUTBOX_KEY] = PointerGetDatum(key);
		slot->tts_isnull[OUTBOX_KEY] = false;
	}
	if (headers != NULL)
	{
		slot->tts_values[OUTBOX_HEADERS] = PointerGetDatum(headers);
		slot->tts_isnull[OUTBOX_HEADERS] = false;
	}
	if (!PG_ARGISNULL(1))
	{
		int			col = payload_is_jsonb ? OUTBOX_PAYLOAD : OUTBOX_PAYLOAD_TEXT;

		slot->tts_values[col] = PG_GETARG_DATUM(1);
		slot->tts_isnull[col] = false;
	}
	if (kt_has_column(kt, OUTBOX_PUBLISHED_BY))
	{
		slot->tts_values[OUTBOX_PUBLISHED_BY] = ObjectIdGetDatum(GetUserId());
		slot->tts_isnull[OUTBOX_PUBLISHED_BY] = false;
	}
	ExecStoreVirtualTuple(slot);
	kt_insert_plain(kt);
	kt_close(kt);

	if (!xact_callback_registered)
	{
		RegisterXactCallback(outbox_xact_callback, NULL);
		xact_callback_registered = true;
	}
	published_in_xact = true;

	PG_RETURN_UUID_P(id);
}

/*
 * eo.publish(topic text, payload jsonb, key text DEFAULT NULL,
 *			  headers jsonb DEFAULT NULL) RETURNS uuid
 */
Datum
eo_publish_jsonb(PG_FUNCTION_ARGS)
{
	return publish(fcinfo, true);
}

/*
 * eo.publish(topic text, payload text, key text DEFAULT NULL,
 *			  headers jsonb DEFAULT NULL) RETURNS uuid
 */
Datum
eo_publish_text(PG_FUNCTION_ARGS)
{
	return publish(fcinfo, false);
}

/*
 * check_message_access
 *		A message may be read by the role that published it and that role's
 *		members, and by roles that may read eo.message_log (operators, the
 *		extension's owner, superusers).  Messages published before 0.4.1
 *		have no publisher and stay readable as before.  Raises 42501.
 */
static void
check_message_access(KeyedTable *kt, int publisher_column, pg_uuid_t *id)
{
	bool		isnull;
	Datum		publisher;
	Oid			log;

	if (!kt_has_column(kt, publisher_column))
		return;
	publisher = slot_getattr(kt->oldslot, publisher_column + 1, &isnull);
	if (isnull || has_privs_of_role(GetUserId(), DatumGetObjectId(publisher)))
		return;
	log = get_relname_relid("message_log", RelationGetNamespace(kt->rel));
	if (OidIsValid(log) && pg_class_aclcheck(log, GetUserId(), ACL_SELECT) == ACLCHECK_OK)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to read message %s",
					DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)))),
			 errdetail("A message can be read by the role that published it, the members of that role, and roles that may read eo.message_log."),
			 errhint("An operator role gets that right from eo.grant_operator().")));
}

/*
 * Where a message may be kept, in the order eo.message() looks: the outbox,
 * then the log.  Since 0.6.0 the log is partitioned into slots, each a
 * table with its own unique index on id (the partitioned parent has
 * none); before, it was one table.
 */
static const char *const outbox_table = "outbox";
static const char *const log_tables[] = {"message_log_0", "message_log_1", "message_log_2"};
static const char *const old_log_table = "message_log";

/*
 * find_message
 *		Look the id up in eo.<relname> with the caller's snapshot; if a row
 *		is visible, check that the caller may read it and return its
 *		envelope, allocated in the caller's context.  NULL if none.
 */
static char *
find_message(const char *relname, const KeyedTableColumn *columns, int ncolumns,
			 int publisher_column, pg_uuid_t *id)
{
	KeyedTable *kt = kt_open(relname, columns, ncolumns, NULL);
	TupleTableSlot *slot = kt->newslot;
	char	   *envelope = NULL;

	kt_clear_newslot(kt);
	slot->tts_values[OUTBOX_ID] = UUIDPGetDatum(id);
	slot->tts_isnull[OUTBOX_ID] = false;
	ExecStoreVirtualTuple(slot);
	if (kt_fetch_visible(kt))
	{
		EoMessage	msg;

		check_message_access(kt, publisher_column, id);
		eo_message_from_slot(&msg, kt->oldslot);
		MemoryContextSwitchTo(kt->callercxt);
		envelope = eo_envelope(&msg, 0);
		MemoryContextSwitchTo(kt->estate->es_query_cxt);
	}
	kt_close(kt);
	return envelope;
}

/*
 * eo.message(id uuid) RETURNS jsonb
 *
 * The message with this id, as the relay's envelope but never truncated;
 * NULL when no such message is kept (unknown, or purged).  Reads the
 * outbox (not yet routed) and the message log with the caller's snapshot.
 * Access is checked per message (check_message_access); the right to read
 * a not-yet-routed message is the right to read eo.message_log as well.
 * A message being copied from one slot of the log to another (by the
 * purge) is found in either.
 */
Datum
eo_message(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	char	   *envelope;
	Oid			nsp;
	Oid			log;

	envelope = find_message(outbox_table, outbox_columns, OUTBOX_NCOLUMNS,
							OUTBOX_PUBLISHED_BY, id);
	nsp = get_namespace_oid(EO_SCHEMA_NAME, true);
	log = OidIsValid(nsp) ? get_relname_relid(old_log_table, nsp) : InvalidOid;
	if (envelope == NULL && OidIsValid(log) && get_rel_relkind(log) == RELKIND_PARTITIONED_TABLE)
	{
		for (int i = 0; i < lengthof(log_tables) && envelope == NULL; i++)
			envelope = find_message(log_tables[i], message_log_columns, LOG_NCOLUMNS,
									LOG_PUBLISHED_BY, id);
	}
	else if (envelope == NULL)
		envelope = find_message(old_log_table, message_log_columns, LOG_NCOLUMNS,
								LOG_PUBLISHED_BY, id);

	if (envelope == NULL)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(envelope)));
}

/*
 * eo_message_from_slot
 *		Point an EoMessage at the columns of an eo.outbox / eo.message_log
 *		row.  The pointers stay valid as long as the slot's tuple does.
 */
void
eo_message_from_slot(EoMessage *msg, TupleTableSlot *slot)
{
	bool		isnull;
	Datum		d;

	memset(msg, 0, sizeof(EoMessage));
	slot_getsomeattrs(slot, MESSAGE_NCOLUMNS);
	msg->id = *DatumGetUUIDP(slot->tts_values[OUTBOX_ID]);
	msg->published_at = DatumGetTimestampTz(slot->tts_values[OUTBOX_PUBLISHED_AT]);
	msg->topic = TextDatumGetCString(slot->tts_values[OUTBOX_TOPIC]);
	d = slot->tts_values[OUTBOX_KEY];
	isnull = slot->tts_isnull[OUTBOX_KEY];
	msg->key = isnull ? NULL : TextDatumGetCString(d);
	msg->headers = slot->tts_isnull[OUTBOX_HEADERS] ? NULL :
		DatumGetJsonbP(slot->tts_values[OUTBOX_HEADERS]);
	msg->payload = slot->tts_isnull[OUTBOX_PAYLOAD] ? NULL :
		DatumGetJsonbP(slot->tts_values[OUTBOX_PAYLOAD]);
	msg->payload_text = slot->tts_isnull[OUTBOX_PAYLOAD_TEXT] ? NULL :
		TextDatumGetCString(slot->tts_values[OUTBOX_PAYLOAD_TEXT]);
}
