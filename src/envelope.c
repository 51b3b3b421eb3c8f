/*-------------------------------------------------------------------------
 *
 * envelope.c
 *	  The JSON envelope in which the relay delivers a message:
 *
 *		{"id": "<uuid>", "topic": "...", "key": "..." | null,
 *		 "headers": {...} | null, "payload": <json> | "<text>" | null,
 *		 "published_at": "<ISO 8601, UTC>"}
 *
 *	  When the envelope would not fit in max_bytes (NOTIFY's payload limit),
 *	  the payload is left out and "truncated": true is added; the receiver
 *	  fetches the whole message with eo.message(id).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "outbox.h"

/*
 * eo_uuid_to_cstring
 *		The canonical 8-4-4-4-12 text form; palloc'd.
 */
char *
eo_uuid_to_cstring(const pg_uuid_t *id)
{
	static const char hex[] = "0123456789abcdef";
	char	   *out = palloc(37);
	char	   *p = out;

	for (int i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[id->data[i] >> 4];
		*p++ = hex[id->data[i] & 0x0F];
	}
	*p = '\0';
	return out;
}

/*
 * eo_iso_timestamp
 *		A timestamptz as ISO 8601 in UTC ("2026-01-02T03:04:05.123456Z"),
 *		or "" for an infinite one; palloc'd.  For the headers of sinks.
 */
char *
eo_iso_timestamp(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		text[MAXDATELEN + 2];

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		return pstrdup("");
	EncodeDateTime(&tm, fsec, false, 0, NULL, USE_XSD_DATES, text);
	strlcat(text, "Z", sizeof(text));
	return pstrdup(text);
}

/*
 * Append a string that needs no JSON escaping (the text forms of uuids and
 * timestamps: hex digits, digits and "-:.TZ") as a JSON string.
 */
static void
append_plain_string(StringInfo buf, const char *text)
{
	appendStringInfoChar(buf, '"');
	appendStringInfoString(buf, text);
	appendStringInfoChar(buf, '"');
}

/* Append a timestamptz as an ISO 8601 string in UTC. */
static void
append_timestamp(StringInfo buf, TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;
	char		text[MAXDATELEN + 1];

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	EncodeDateTime(&tm, fsec, false, 0, NULL, USE_XSD_DATES, text);
	strlcat(text, "Z", sizeof(text));
	append_plain_string(buf, text);
}

static void
append_common(StringInfo buf, const EoMessage *msg, bool with_headers)
{
	char	   *id = eo_uuid_to_cstring(&msg->id);

	appendStringInfoString(buf, "{\"id\": ");
	append_plain_string(buf, id);
	appendStringInfoString(buf, ", \"topic\": ");
	escape_json(buf, msg->topic);
	appendStringInfoString(buf, ", \"key\": ");
	if (msg->key)
		escape_json(buf, msg->key);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ", \"headers\": ");
	if (msg->headers && with_headers)
		(void) JsonbToCString(buf, &msg->headers->root, VARSIZE(msg->headers));
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ", \"published_at\": ");
	append_timestamp(buf, msg->published_at);
	pfree(id);
}

/*
 * eo_envelope
 *		The message as a JSON text; palloc'd in the current context.  With
 *		max_bytes > 0 the result is shorter than max_bytes: the payload is
 *		dropped (and "truncated": true set) when it does not fit.  Headers
 *		(4 kB), topic (256 bytes) and key (1 kB) are bounded, so the short
 *		form fits a NOTIFY.
 */
char *
eo_envelope(const EoMessage *msg, int max_bytes)
{
	StringInfoData buf;
	int			common_len;

	initStringInfo(&buf);
	append_common(&buf, msg, true);
	common_len = buf.len;

	appendStringInfoString(&buf, ", \"payload\": ");
	if (msg->payload)
		(void) JsonbToCString(&buf, &msg->payload->root, VARSIZE(msg->payload));
	else if (msg->payload_text)
		escape_json(&buf, msg->payload_text);
	else
		appendStringInfoString(&buf, "null");
	appendStringInfoChar(&buf, '}');

	if (max_bytes > 0 && buf.len >= max_bytes)
	{
		buf.len = common_len;
		buf.data[buf.len] = '\0';
		appendStringInfoString(&buf, ", \"truncated\": true}");
	}
	if (max_bytes > 0 && buf.len >= max_bytes)
	{
		/*
		 * Cannot happen within the documented limits of topic, key and
		 * headers; if it does, leave the headers out as well rather than
		 * fail the delivery.
		 */
		resetStringInfo(&buf);
		append_common(&buf, msg, false);
		appendStringInfoString(&buf, ", \"truncated\": true}");
	}
	return buf.data;
}
