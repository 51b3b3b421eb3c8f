/*-------------------------------------------------------------------------
 *
 * sink_async.h
 *	  Pieces the asynchronous sinks driven by client libraries with threads
 *	  of their own share (sink_async.c): a self-pipe that wakes the relay's
 *	  wait from any thread, a table of sends on their way by token, and
 *	  finishing a send.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_SINK_ASYNC_H
#define EO_SINK_ASYNC_H

#include "postgres.h"

#include "utils/hsearch.h"

#include "sink.h"

/* A self-pipe: its read end joins the relay's wait set. */
typedef struct SinkWakePipe
{
	int			fds[2];			/* -1 until opened */
	SinkSocket	socket;			/* the read end, for wait_sockets */
} SinkWakePipe;

#define SINK_WAKE_PIPE_INIT {{-1, -1}, {PGINVALID_SOCKET, 0}}

/* An entry of a table of sends on their way: token -> the sink's state. */
typedef struct SinkPendingEntry
{
	uint64		token;
	void	   *pub;
} SinkPendingEntry;

extern void eo_sink_wake_pipe_open(SinkWakePipe *wp);
extern void eo_sink_wake(const SinkWakePipe *wp);
extern void eo_sink_wake_drain(const SinkWakePipe *wp);
extern HTAB *eo_sink_pending_create(const char *name, MemoryContext cxt);
extern void eo_sink_finish(SinkSend *send, SinkResult result, const char *error,
						   int status, const char *response, TimestampTz started);
extern void eo_sink_hand_over(HTAB *pending, uint64 token, SinkSend *send,
							  dlist_head *done);

#endif							/* EO_SINK_ASYNC_H */
