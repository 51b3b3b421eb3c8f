/*-------------------------------------------------------------------------
 *
 * sink_registry.c
 *	  The kinds of destination: one line per sink.  Adding a kind is a new
 *	  sink file (see sink.h) and a line here; eo.destination accepts every
 *	  kind listed (eo.check_destination_options() checks it).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "sink.h"

static const SinkRoutine *const sinks[] = {
	&eo_notify_sink,
	&eo_http_sink,
	&eo_nats_sink,
	&eo_queue_sink,
	&eo_kafka_sink,
};

/* The sink of a kind, or NULL if there is no such kind. */
const SinkRoutine *
eo_sink_lookup(const char *kind)
{
	for (int i = 0; i < lengthof(sinks); i++)
	{
		if (strcmp(sinks[i]->kind, kind) == 0)
			return sinks[i];
	}
	return NULL;
}

/* Every sink, in registry order. */
const SinkRoutine *const *
eo_sink_all(int *n)
{
	*n = lengthof(sinks);
	return sinks;
}

/* The kinds for a hint: "notify", "http", "nats", "queue" and "kafka" (palloc'd). */
const char *
eo_sink_kind_list(void)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < lengthof(sinks); i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, i == lengthof(sinks) - 1 ? " and " : ", ");
		appendStringInfo(&buf, "\"%s\"", sinks[i]->kind);
	}
	return buf.data;
}
