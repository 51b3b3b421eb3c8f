/*-------------------------------------------------------------------------
 *
 * sink_async.c
 *	  Shared by the asynchronous sinks whose client library runs threads
 *	  of its own (sink_nats.c, sink_kafka.c):
 *	  - the self-pipe: a library or sink thread writes a byte to wake the
 *		relay (eo_sink_wake, safe on any thread: no allocation, no
 *		PostgreSQL call); the read end is the socket the sink gives the
 *		relay's WaitEventSet; the relay's thread drains it in collect();
 *	  - the table of sends on their way, keyed by a token the sink hands
 *		to the library instead of a pointer (a late answer to a send the
 *		relay has released finds nothing);
 *	  - finishing a send and handing it back to the relay.
 *	  Everything but eo_sink_wake runs on the relay's thread.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "sink_async.h"

/*
 * eo_sink_wake_pipe_open
 *		Open the pipe (non-blocking, close-on-exec) unless it is open.
 *		Raises an error if no pipe can be made.
 */
void
eo_sink_wake_pipe_open(SinkWakePipe *wp)
{
	if (wp->fds[0] >= 0)
		return;
	if (pipe(wp->fds) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("eo_processing relay: could not create a pipe: %m")));
	for (int i = 0; i < 2; i++)
	{
		(void) fcntl(wp->fds[i], F_SETFL, O_NONBLOCK);
		(void) fcntl(wp->fds[i], F_SETFD, FD_CLOEXEC);
	}
	wp->socket.fd = wp->fds[0];
	wp->socket.events = WL_SOCKET_READABLE;
}

/* Wake the relay (any thread): a full pipe already holds a wake-up. */
void
eo_sink_wake(const SinkWakePipe *wp)
{
	char		byte = 0;

	if (write(wp->fds[1], &byte, 1) < 0)
		return;
}

/* Empty the pipe (the relay's thread, before looking at what woke it). */
void
eo_sink_wake_drain(const SinkWakePipe *wp)
{
	char		buf[256];

	while (read(wp->fds[0], buf, sizeof(buf)) > 0)
		;
}

/* A table of sends on their way (token -> the sink's state) in "cxt". */
HTAB *
eo_sink_pending_create(const char *name, MemoryContext cxt)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(SinkPendingEntry);
	ctl.hcxt = cxt;
	return hash_create(name, 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * eo_sink_finish
 *		Give a send its outcome; the strings are copied into the send's own
 *		context.  "started" (0: unknown) gives the latency.
 */
void
eo_sink_finish(SinkSend *send, SinkResult result, const char *error, int status,
			   const char *response, TimestampTz started)
{
	MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(send));
	SinkOutcome *out = &send->outcome;

	out->result = result;
	out->retry_after_us = -1;
	out->error = error ? pstrdup(error) : NULL;
	out->status = status;
	out->response = response ? pstrdup(response) : NULL;
	out->latency_ms = started != 0 ? (GetCurrentTimestamp() - started) / 1000.0 : 0;
	send->finished = true;
	MemoryContextSwitchTo(old);
}

/* Take a finished send off "pending" and move it to the relay's "done". */
void
eo_sink_hand_over(HTAB *pending, uint64 token, SinkSend *send, dlist_head *done)
{
	(void) hash_search(pending, &token, HASH_REMOVE, NULL);
	dlist_delete(&send->node);
	dlist_push_tail(done, &send->node);
}
