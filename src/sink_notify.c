/*-------------------------------------------------------------------------
 *
 * sink_notify.c
 *	  The "notify" sink: a NOTIFY on a channel for each message, queued
 *	  inside the relay's transaction and sent by PostgreSQL when it
 *	  commits, so that a notification goes out exactly when its delivery
 *	  is recorded.
 *
 *	  Options:
 *		channel		text, 1..63 bytes; default: the message's topic
 *	  (and the options every kind has: see destination.c).
 *
 *	  The payload is the message's JSON envelope (envelope.c), cut to what
 *	  NOTIFY accepts; eo.message(id) returns it whole.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/async.h"

#include "destination.h"
#include "sink.h"

/* NOTIFY refuses payloads of this many bytes or more (see async.c). */
#define NOTIFY_MAX_PAYLOAD	(BLCKSZ - NAMEDATALEN - 128)

typedef struct NotifyOptions
{
	char	   *channel;		/* NULL: the message's topic */
} NotifyOptions;

static void
notify_init_options(DestinationConfig *cfg)
{
	cfg->sink_options = palloc0(sizeof(NotifyOptions));
}

static bool
notify_parse_option(const char *name, const JsonbValue *v, DestinationConfig *cfg)
{
	NotifyOptions *opts = cfg->sink_options;

	if (strcmp(name, "channel") != 0)
		return false;
	if (v->type != jbvString)
		eo_bad_option(name, "a string");
	if (v->val.string.len == 0 || v->val.string.len >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"channel\" must be 1 to %d bytes long", NAMEDATALEN - 1)));
	opts->channel = pnstrdup(v->val.string.val, v->val.string.len);
	return true;
}

/*
 * notify_deliver
 *		Queue the message's notification; it is sent when the relay's
 *		transaction commits.  A topic too long for a channel name cannot
 *		be delivered without a "channel" option.
 */
static void
notify_deliver(const DestinationConfig *dest, const EoMessage *msg, SinkOutcome *out)
{
	const NotifyOptions *opts = dest->sink_options;
	const char *channel = opts->channel ? opts->channel : msg->topic;

	memset(out, 0, sizeof(SinkOutcome));
	out->status = -1;
	out->retry_after_us = -1;
	if (strlen(channel) >= NAMEDATALEN)
	{
		out->result = SINK_RETRY;
		out->error = "channel name too long for NOTIFY (63 bytes at most); set the destination's \"channel\" option";
		return;
	}
	Async_Notify(channel, eo_envelope(msg, NOTIFY_MAX_PAYLOAD));
	out->result = SINK_DELIVERED;
}

const SinkRoutine eo_notify_sink = {
	.kind = "notify",
	.option_names = "channel, max_attempts and retry_delays",
	.init_options = notify_init_options,
	.parse_option = notify_parse_option,
	.deliver = notify_deliver,
};
