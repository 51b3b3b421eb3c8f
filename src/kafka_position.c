/*-------------------------------------------------------------------------
 *
 * kafka_position.c
 *	  The position of a kafka destination in exactly_once mode: the
 *	  messages Kafka has in committed transactions that the database may
 *	  not have recorded as delivered yet.
 *
 *	  Each Kafka transaction carries, besides its records, one position
 *	  record (key: the transactional.id) whose value lists these messages:
 *		{"v": 1, "log": [[seq, "id"], ...], "retries": [["id", tag], ...]}
 *	  "log" are messages sent from the relay's log window (seq: their
 *	  place in the log); "retries" are retries of parked deliveries (they
 *	  have no seq).  After a crash between Kafka's commit and the
 *	  database's record, the relay sends those messages again; the sink
 *	  reads the last committed position back and finishes every message
 *	  listed there as delivered without producing it.
 *
 *	  The set stays small: a log message leaves it once the relay opens a
 *	  later log window whose start (SinkSend.recorded_seq) is at or past
 *	  its seq, i.e. once the window holding it was recorded.  A retry has
 *	  no seq: it is tagged with the highest log seq of the first batch with
 *	  log messages committed with it or after it, and leaves the set once
 *	  that seq is recorded (the relay records every finished retry in the
 *	  same step as, or before, the window holding that seq).  A retry
 *	  listed again (sent again after a restart) loses its tag until the
 *	  next such batch.
 *
 *	  Entries read back after a restart are kept until their message is
 *	  sent again (the relay parks the messages of an interrupted window as
 *	  retries), then handled as retries.  An entry whose message the
 *	  database had recorded before the crash is never sent again and stays
 *	  until the producer is replaced: at most one position's worth per
 *	  crash.
 *
 *	  The set is a hash table in the caller's memory context, used on the
 *	  relay's thread only; position texts are malloc'd for the transaction
 *	  thread.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "kafka_position.h"
#include "outbox.h"

typedef struct PositionEntry
{
	pg_uuid_t	id;				/* hash key */
	int64		seq;			/* log messages; 0 for retries */
	int64		tag;			/* retries: see above; 0 for none yet */
	bool		loaded;			/* read back, not yet sent again */
} PositionEntry;

/* A new, empty set in "cxt". */
HTAB *
eo_kafka_position_new(MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(PositionEntry);
	ctl.hcxt = cxt;
	return hash_create("eo_processing kafka position", 256, &ctl,
					   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* Add a message committed in Kafka (seq 0: a retry, tagged with "tag"). */
void
eo_kafka_position_add(HTAB *set, const pg_uuid_t *id, int64 seq, int64 tag)
{
	bool		found;
	PositionEntry *e = hash_search(set, id, HASH_ENTER, &found);

	e->seq = seq;
	e->tag = seq > 0 ? 0 : tag;
	e->loaded = false;
}

/*
 * eo_kafka_position_has
 *		Whether Kafka has the message in a committed transaction (as far
 *		as the set knows).  A retry found here loses its tag: the relay
 *		will record this new outcome later.
 */
bool
eo_kafka_position_has(HTAB *set, const pg_uuid_t *id)
{
	PositionEntry *e = hash_search(set, id, HASH_FIND, NULL);

	if (e == NULL)
		return false;
	if (e->seq == 0)
		e->tag = 0;
	e->loaded = false;
	return true;
}

/* Tag the untagged retries with a committed batch's highest log seq. */
void
eo_kafka_position_tag(HTAB *set, int64 log_seq)
{
	HASH_SEQ_STATUS st;
	PositionEntry *e;

	if (log_seq <= 0)
		return;
	hash_seq_init(&st, set);
	while ((e = hash_seq_search(&st)) != NULL)
	{
		if (e->seq == 0 && e->tag == 0 && !e->loaded)
			e->tag = log_seq;
	}
}

/* Drop what the relay has recorded: log windows up to "recorded_upto". */
void
eo_kafka_position_prune(HTAB *set, int64 recorded_upto)
{
	HASH_SEQ_STATUS st;
	PositionEntry *e;

	if (recorded_upto <= 0)
		return;
	hash_seq_init(&st, set);
	while ((e = hash_seq_search(&st)) != NULL)
	{
		if (e->loaded)
			continue;
		if ((e->seq > 0 && e->seq <= recorded_upto) ||
			(e->seq == 0 && e->tag > 0 && e->tag <= recorded_upto))
			(void) hash_search(set, &e->id, HASH_REMOVE, NULL);
	}
}

/* Append one entry's JSON to "log" or "retries". */
static void
append_entry(StringInfo log, StringInfo retries, const pg_uuid_t *id, int64 seq, int64 tag)
{
	char	   *text = eo_uuid_to_cstring(id);

	if (seq > 0)
		appendStringInfo(log, "%s[" INT64_FORMAT ",\"%s\"]", log->len > 0 ? "," : "", seq, text);
	else
		appendStringInfo(retries, "%s[\"%s\"," INT64_FORMAT "]", retries->len > 0 ? "," : "",
						 text, tag);
	pfree(text);
}

/*
 * eo_kafka_position_text
 *		The value of the position record of a batch: the set, plus the
 *		batch's own messages (ids[i] with seqs[i]; its retries are tagged
 *		with the batch's highest log seq).  malloc'd (for the transaction
 *		thread), NULL when out of memory.
 */
char *
eo_kafka_position_text(HTAB *set, const pg_uuid_t *ids, const int64 *seqs, int n)
{
	StringInfoData log;
	StringInfoData retries;
	HASH_SEQ_STATUS st;
	PositionEntry *e;
	int64		max_seq = 0;
	char	   *out;

	initStringInfo(&log);
	initStringInfo(&retries);
	for (int i = 0; i < n; i++)
		max_seq = Max(max_seq, seqs[i]);
	hash_seq_init(&st, set);
	while ((e = hash_seq_search(&st)) != NULL)
	{
		bool		in_batch = false;

		for (int i = 0; i < n && !in_batch; i++)
			in_batch = (memcmp(&ids[i], &e->id, sizeof(pg_uuid_t)) == 0);
		if (!in_batch)
			append_entry(&log, &retries, &e->id, e->seq,
						 e->seq == 0 && e->tag == 0 ? max_seq : e->tag);
	}
	for (int i = 0; i < n; i++)
		append_entry(&log, &retries, &ids[i], seqs[i], max_seq);
	out = malloc(log.len + retries.len + 64);
	if (out != NULL)
		sprintf(out, "{\"v\": 1, \"log\": [%s], \"retries\": [%s]}", log.data, retries.data);
	pfree(log.data);
	pfree(retries.data);
	return out;
}

/* A uuid from a jsonb string value, false if it is not one. */
static bool
entry_uuid(const JsonbValue *v, pg_uuid_t *id)
{
	char	   *text;
	Datum		d;

	if (v->type != jbvString)
		return false;
	text = pnstrdup(v->val.string.val, v->val.string.len);
	d = DirectFunctionCall1(uuid_in, CStringGetDatum(text));
	memcpy(id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
	return true;
}

/* Add the entries of one array ("log" or "retries") of a position. */
static void
load_array(HTAB *set, Jsonb *j, const char *name, bool log)
{
	JsonbValue *arr = getKeyJsonValueFromContainer(&j->root, name, strlen(name), NULL);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (arr == NULL || arr->type != jbvBinary || !JsonContainerIsArray(arr->val.binary.data))
		return;
	it = JsonbIteratorInit(arr->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue *a;
		JsonbValue *b;
		pg_uuid_t	id;

		if (tok != WJB_ELEM || v.type != jbvBinary || !JsonContainerIsArray(v.val.binary.data) ||
			JsonContainerSize(v.val.binary.data) != 2)
			continue;
		a = getIthJsonbValueFromContainer(v.val.binary.data, 0);
		b = getIthJsonbValueFromContainer(v.val.binary.data, 1);
		if ((log && entry_uuid(b, &id)) || (!log && entry_uuid(a, &id)))
		{
			bool		found;
			PositionEntry *e = hash_search(set, &id, HASH_ENTER, &found);

			e->seq = 0;
			e->tag = 0;
			e->loaded = true;
		}
	}
}

/*
 * eo_kafka_position_load
 *		Add the messages of a position record read back from Kafka to the
 *		set.  Returns the number of entries, or -1 (set unchanged past the
 *		error) if the text is not a position record.
 */
int
eo_kafka_position_load(HTAB *set, const char *text)
{
	MemoryContext old = CurrentMemoryContext;
	Jsonb	   *j = NULL;

	PG_TRY();
	{
		j = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
		if (JB_ROOT_IS_OBJECT(j))
		{
			load_array(set, j, "log", true);
			load_array(set, j, "retries", false);
		}
		else
			j = NULL;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		FlushErrorState();
		j = NULL;
	}
	PG_END_TRY();
	return j == NULL ? -1 : (int) hash_get_num_entries(set);
}
