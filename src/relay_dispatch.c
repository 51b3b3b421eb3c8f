/*-------------------------------------------------------------------------
 *
 * relay_dispatch.c
 *	  Deliveries through asynchronous sinks (http): messages on the wire
 *	  while the relay's loop goes on, no transaction open meanwhile.
 *
 *	  Work comes in windows, one per destination at a time:
 *	  - a log window: the next messages routed to the destination after
 *		its cursor (at most eo.relay_batch_size).  The transaction that
 *		reads it notes its end in the cursor row (sending_seq) and sets
 *		aside, as pending rows of eo.delivery, the messages whose key is
 *		held by an unfinished earlier delivery;
 *	  - a retry window: parked deliveries that are due and first of their
 *		key, marked in flight with their attempt counted.
 *	  After that transaction commits the sends start, at most the
 *	  destination's concurrency at a time.  Within a log window a message
 *	  waits while an earlier message of its key is on the wire, and is set
 *	  aside (pending) if that one failed; messages of different keys, and
 *	  messages without a key, go in parallel.
 *
 *	  Once every send of a window has finished, one transaction records it
 *	  (delivery.c): failures and the set-aside messages get rows of
 *	  eo.delivery, failed attempts (all with log_attempts 'all') go to
 *	  the attempt log, and the cursor moves to the window's end.  The
 *	  success path writes one row per window.  A crash before that
 *	  transaction leaves sending_seq: the next relay sends the window's
 *	  messages again (eo_delivery_reset_interrupted), with the same ids.
 *
 *	  Memory: each window has its own context (its messages, sends and
 *	  outcomes), deleted once it is recorded; nothing here lives in a
 *	  transaction's memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "delivery.h"
#include "message_log.h"
#include "relay.h"
#include "relay_config.h"
#include "relay_dispatch.h"
#include "sink.h"

/* A key's state within a log window (keys are told apart by hash). */
typedef struct KeyState
{
	uint32		hash;			/* hash key */
	int			in_flight;		/* sends of the key on the wire */
	bool		failed;			/* one of them failed: later ones wait */
	uint64		skipped_in_pass;	/* an earlier one still waits to start */
} KeyState;

typedef struct Window
{
	dlist_node	node;			/* in "windows" */
	MemoryContext cxt;			/* everything of the window */
	int32		dest_id;
	const SinkRoutine *sink;
	DestinationConfig *dest;	/* as when the window opened, parsed anew
								 * in cxt: sends start outside any
								 * transaction, after the relay's copy may
								 * have been reloaded */
	bool		retries;		/* a retry window (parked deliveries) */
	bool		committed;		/* the transaction that opened it committed */
	bool		recording;		/* being recorded by the current step */
	bool		stop;			/* start nothing more (destination gone) */
	int			limit;			/* sends in flight at most */
	int64		upto;			/* log windows: the end of the window */
	int64		recorded_seq;	/* log windows: the cursor when it opened */
	dlist_head	queue;			/* sends not started, in log order */
	dlist_head	done;			/* sends finished, or set aside */
	dlist_head	recorded;		/* retries recorded by the current step */
	int			unfinished;		/* queued + in flight */
	HTAB	   *keys;			/* log windows: KeyState by key hash */
} Window;

/* A send and what the relay needs to start and record it. */
typedef struct RelaySend
{
	SinkSend	s;				/* first: the sink sees only this */
	Window	   *window;
	EoMessage	msg;
	bool		held;			/* set aside without an attempt */
} RelaySend;

/* The send a list node belongs to (the SinkSend is a RelaySend's first member). */
static inline RelaySend *
send_of(dlist_node *node)
{
	/* cppcheck-suppress nullPointer ; offsetof() inside dlist_container() */
	return (RelaySend *) dlist_container(SinkSend, node, node);
}

/* The window a list node belongs to. */
static inline Window *
window_of(dlist_node *node)
{
	/* cppcheck-suppress nullPointer ; offsetof() inside dlist_container() */
	return dlist_container(Window, node, node);
}

static MemoryContext dispatch_cxt = NULL;
static ResourceOwner dispatch_owner = NULL;	/* for sinks' resources outside
											 * transactions (HMAC contexts) */
static dlist_head windows = DLIST_STATIC_INIT(windows);
static dlist_head in_flight = DLIST_STATIC_INIT(in_flight);
static bool reset_done = false;
static bool step_wanted = true;
static bool look_all_next = true;	/* the next step looks at every destination */
static uint64 pass_number = 0;
static TimestampTz next_due = DT_NOEND;

static void
dispatch_init(void)
{
	if (dispatch_cxt == NULL)
		dispatch_cxt = AllocSetContextCreate(TopMemoryContext, "eo_processing dispatch",
											 ALLOCSET_DEFAULT_SIZES);
	if (dispatch_owner == NULL)
		dispatch_owner = ResourceOwnerCreate(NULL, "eo_processing sends");
}

/*
 * Sends a destination may have in flight: its "concurrency", capped by its
 * kind's setting if it has one (eo.http_max_concurrency for http).
 */
static int
send_limit(const DestinationConfig *dest)
{
	const int  *cap = dest->sink->concurrency_cap;

	return cap != NULL ? Min(dest->concurrency, *cap) : dest->concurrency;
}

static Window *
window_new(const DestinationConfig *dest, bool retries)
{
	MemoryContext cxt = AllocSetContextCreate(dispatch_cxt, "eo_processing window",
											  ALLOCSET_DEFAULT_SIZES);
	Window	   *w = MemoryContextAllocZero(cxt, sizeof(Window));

	w->cxt = cxt;
	w->dest = MemoryContextAllocZero(cxt, sizeof(DestinationConfig));
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		eo_parse_destination(dest->sink->kind, dest->options, w->dest);
		MemoryContextSwitchTo(old);
	}
	w->dest->id = dest->id;
	w->dest->name = MemoryContextStrdup(cxt, dest->name);
	w->dest->enabled = dest->enabled;
	w->dest->options = NULL;
	w->dest_id = dest->id;
	w->sink = dest->sink;
	w->retries = retries;
	w->limit = send_limit(dest);
	dlist_init(&w->queue);
	dlist_init(&w->done);
	dlist_init(&w->recorded);
	if (!retries)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(uint32);
		ctl.entrysize = sizeof(KeyState);
		ctl.hcxt = cxt;
		w->keys = hash_create("eo_processing window keys", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	return w;
}

/* Free a window whose sends have all finished (or never started). */
static void
window_free(Window *w)
{
	dlist_iter	it;

	dlist_foreach(it, &w->done)
	{
		RelaySend  *rs = send_of(it.cur);

		if (rs->s.private != NULL)
			w->sink->release(&rs->s);
	}
	MemoryContextDelete(w->cxt);
}

/* Add a send for a message to a window's queue (copied into the window). */
static RelaySend *
window_add(Window *w, const EoMessage *msg, int64 seq, int attempt)
{
	RelaySend  *rs = MemoryContextAllocZero(w->cxt, sizeof(RelaySend));

	rs->window = w;
	rs->msg = *msg;
	rs->s.dest_id = w->dest_id;
	rs->s.msg_id = msg->id;
	rs->s.key = msg->key;
	rs->s.seq = seq;
	rs->s.recorded_seq = w->recorded_seq;
	rs->s.attempt = attempt;
	dlist_push_tail(&w->queue, &rs->s.node);
	w->unfinished++;
	return rs;
}

static KeyState *
key_state(Window *w, const char *key)
{
	uint32		h;
	bool		found;
	KeyState   *ks;

	if (key == NULL || w->keys == NULL)
		return NULL;
	h = hash_bytes((const unsigned char *) key, strlen(key));
	ks = hash_search(w->keys, &h, HASH_ENTER, &found);
	if (!found)
	{
		ks->in_flight = 0;
		ks->failed = false;
		ks->skipped_in_pass = 0;
	}
	return ks;
}

/* A send has its outcome (or was set aside): bookkeeping of its window. */
static void
send_finished(RelaySend *rs)
{
	Window	   *w = rs->window;
	KeyState   *ks = key_state(w, rs->s.key);

	if (!rs->held)
	{
		if (ks != NULL)
		{
			ks->in_flight--;
			if (rs->s.outcome.result != SINK_DELIVERED)
				ks->failed = true;
		}
		if (rs->s.outcome.result == SINK_DISABLE)
			w->stop = true;
		if (rs->s.private != NULL)
			w->sink->release(&rs->s);
	}
	dlist_delete(&rs->s.node);
	dlist_push_tail(&w->done, &rs->s.node);
	w->unfinished--;
	/* A retry is recorded at once (its key's next message waits for it). */
	if (w->retries || w->unfinished == 0)
		step_wanted = true;
}

/* Sends of a destination on the wire. */
static int
count_in_flight(int32 dest_id)
{
	dlist_iter	it;
	int			n = 0;

	dlist_foreach(it, &in_flight)
	{
		if (send_of(it.cur)->s.dest_id == dest_id)
			n++;
	}
	return n;
}

/* Start one send (no transaction open). */
static void
send_start(Window *w, RelaySend *rs, const DestinationConfig *dest)
{
	KeyState   *ks = key_state(w, rs->s.key);
	ResourceOwner saved_owner;

	dlist_delete(&rs->s.node);
	dlist_push_tail(&in_flight, &rs->s.node);
	if (ks != NULL)
		ks->in_flight++;
	rs->s.started_at = GetCurrentTimestamp();

	/*
	 * No transaction is open: what the sink allocates with a resource owner
	 * (cryptographic hash contexts) is tracked by the dispatcher's own.
	 */
	saved_owner = CurrentResourceOwner;
	CurrentResourceOwner = dispatch_owner;
	PG_TRY();
	{
		w->sink->start(&rs->s, dest, &rs->msg);
	}
	PG_FINALLY();
	{
		CurrentResourceOwner = saved_owner;
	}
	PG_END_TRY();
	if (rs->s.finished)
		send_finished(rs);
}

/*
 * dispatch_pass
 *		Start what may start: in every committed window, queued sends in log
 *		order while the destination has free slots, keeping each key's
 *		messages one at a time and in order.
 */
static void
dispatch_pass(void)
{
	dlist_iter	wit;

	dlist_foreach(wit, &windows)
	{
		Window	   *w = window_of(wit.cur);
		DestinationConfig *dest;
		dlist_mutable_iter it;
		int			free_slots;

		if (!w->committed || dlist_is_empty(&w->queue))
			continue;
		dest = w->dest;
		free_slots = w->limit - count_in_flight(w->dest_id);
		pass_number++;
		dlist_foreach_modify(it, &w->queue)
		{
			RelaySend  *rs = send_of(it.cur);
			KeyState   *ks = key_state(w, rs->s.key);

			if (w->stop || dest == NULL || (ks != NULL && ks->failed))
			{
				/* Set aside behind its key, or until the destination is back. */
				rs->held = true;
				send_finished(rs);
				continue;
			}
			if (free_slots <= 0)
				break;
			if (ks != NULL && (ks->in_flight > 0 || ks->skipped_in_pass == pass_number))
			{
				ks->skipped_in_pass = pass_number;
				continue;
			}
			send_start(w, rs, dest);
			free_slots--;
		}
	}
}

/* Move what the sinks have finished to their windows. */
static int
collect_finished(void)
{
	int			n;
	const SinkRoutine *const *sinks = eo_sink_all(&n);
	dlist_head	done;
	int			count = 0;

	dlist_init(&done);
	for (int i = 0; i < n; i++)
	{
		if (eo_sink_is_async(sinks[i]))
			sinks[i]->collect(&done);
	}
	while (!dlist_is_empty(&done))
	{
		RelaySend  *rs = send_of(dlist_pop_head_node(&done));

		/* send_finished() moves it from a list: put it on one first. */
		dlist_push_tail(&in_flight, &rs->s.node);
		send_finished(rs);
		count++;
	}
	return count;
}

/*
 * progress
 *		Collect what the sinks finished and start what may start, until
 *		nothing more finishes at once (a fast receiver answers while the
 *		next sends start).  Returns how many finished.
 */
static int
progress(void)
{
	int			total = 0;
	int			n;

	do
	{
		n = collect_finished();
		dispatch_pass();
		total += n;
	} while (n > 0);
	return total;
}

/*
 * record_window
 *		Add a finished window's outcomes to the step's writes.  "dest" is
 *		the destination's current configuration (NULL if it was dropped:
 *		nothing to record).
 */
static void
record_window(DeliveryWrites *writes, Window *w, const DestinationConfig *dest,
			  TimestampTz now)
{
	dlist_iter	it;

	if (dest == NULL)
		return;
	dlist_foreach(it, &w->done)
	{
		RelaySend  *rs = send_of(it.cur);
		DeliveryState state;

		if (rs->held)
		{
			if (w->retries)
				elog(ERROR, "eo_processing relay: a retry was set aside");
			eo_delivery_park(writes, w->dest_id, &rs->s.msg_id, rs->s.key,
							 DELIVERY_PENDING, 0, now, NULL);
			continue;
		}
		eo_delivery_outcome(writes, dest, &rs->s.msg_id, rs->s.key, rs->s.attempt,
							w->retries, rs->s.started_at, &rs->s.outcome, now, &state);
	}
	if (!w->retries)
		eo_delivery_cursor(writes, w->dest_id, w->upto, -1);
}

/*
 * open_log_window
 *		Read the destination's next log window after its cursor; set aside
 *		the messages whose key is held.  Returns the window, or NULL if the
 *		log has nothing for the destination.
 */
static Window *
open_log_window(DeliveryWrites *writes, const DestinationConfig *dest,
				const LogCursor *cursor, int window_size, HTAB **blocked,
				TimestampTz now)
{
	Window	   *w = window_new(dest, false);
	MemoryContext old = MemoryContextSwitchTo(w->cxt);
	LogMessage *msgs;
	int64		covered;
	int			n = eo_log_read(dest->id, cursor->delivered_seq, window_size, &msgs, &covered);

	MemoryContextSwitchTo(old);
	if (n == 0)
	{
		/*
		 * Nothing for it as far as the read looked: move the cursor there,
		 * and look further soon if the log goes on.
		 */
		if (covered > cursor->delivered_seq)
		{
			eo_delivery_cursor(writes, dest->id, covered, -1);
			step_wanted = true;
			look_all_next = true;
		}
		MemoryContextDelete(w->cxt);
		return NULL;
	}
	if (*blocked == NULL)
		*blocked = eo_blocked_keys_load();
	w->recorded_seq = cursor->delivered_seq;
	for (int i = 0; i < n; i++)
	{
		const char *key = msgs[i].msg.key;

		if (eo_blocked_key(*blocked, dest->id, key, false))
			eo_delivery_park(writes, dest->id, &msgs[i].msg.id, key,
							 DELIVERY_PENDING, 0, now, NULL);
		else
			(void) window_add(w, &msgs[i].msg, msgs[i].seq, 1);
	}
	/* A short window ends where the read stopped looking. */
	w->upto = n < window_size ? covered : msgs[n - 1].seq;
	eo_delivery_cursor(writes, dest->id, -1, w->upto);
	return w;
}

/* Open a retry window of the destination's due parked deliveries. */
static Window *
open_retry_window(const DestinationConfig *dest, int limit)
{
	Window	   *w = window_new(dest, true);
	DueDelivery *due;
	int			n = eo_delivery_claim_due(dest->id, false, limit, true, w->cxt, &due);

	if (n == 0)
	{
		MemoryContextDelete(w->cxt);
		return NULL;
	}
	for (int i = 0; i < n; i++)
		(void) window_add(w, &due[i].msg, 0, due[i].attempt);
	return w;
}

/*
 * eo_dispatch_step
 *		The relay's step for asynchronous sinks, in its own transaction with
 *		SPI connected: record the windows that finished, then open new ones
 *		for every enabled destination of an asynchronous sink with free
 *		slots.  The new windows' sends start in eo_dispatch_step_done()
 *		once the transaction has committed.  Each query costs, so a
 *		destination is looked at only when something may have changed for
 *		it: with look_all (new messages were routed, a retry is due, the
 *		relay was woken), or when one of its windows was just recorded
 *		(more of the log, or the next message of a key, may be waiting).
 *		Returns the number of messages in the new windows; *delivered gets
 *		the deliveries recorded.
 */
int
eo_dispatch_step(List *dests, int window_size, bool look_all, int64 *delivered)
{
	DeliveryWrites writes;
	TimestampTz now = GetCurrentTimestamp();
	dlist_iter	it;
	ListCell   *lc;
	List	   *cursors = NIL;
	HTAB	   *blocked = NULL;
	int			opened = 0;

	dispatch_init();
	step_wanted = false;
	look_all |= look_all_next;
	look_all_next = false;
	*delivered = 0;
	if (!reset_done)
	{
		int64		n = eo_delivery_reset_interrupted();

		if (n > 0)
			ereport(LOG,
					(errmsg("eo_processing relay: " INT64_FORMAT " deliveries were interrupted by a stop of the relay; they are sent again",
							n)));
	}
	/*
	 * Record the windows that finished, first: the claims below must see
	 * a retry that succeeded gone, so that the next message of its key is
	 * due.
	 */
	eo_delivery_writes_init(&writes);
	dlist_foreach(it, &windows)
	{
		Window	   *w = window_of(it.cur);

		/*
		 * A log window is recorded once every send finished, even with
		 * none in it: when every message of the window was set aside at
		 * opening (their keys held by earlier deliveries), only its cursor
		 * moves; left unrecorded it would hold the destination's next log
		 * window back for good.
		 */
		if (!w->committed ||
			(w->retries && dlist_is_empty(&w->done)) ||
			(!w->retries && w->unfinished > 0))
			continue;
		w->recording = true;
		record_window(&writes, w, eo_relay_find_destination(dests, w->dest_id), now);
		while (!dlist_is_empty(&w->done))
			dlist_push_tail(&w->recorded, dlist_pop_head_node(&w->done));
	}
	*delivered = eo_delivery_write(&writes);
	if (writes.nparked > 0 || writes.nfailed > 0)
		next_due = Min(next_due, eo_delivery_next_due());
	eo_delivery_writes_init(&writes);

	/* Open new windows. */
	foreach(lc, dests)
	{
		DestinationConfig *dest = lfirst(lc);
		bool		has_log_window = false;
		bool		recorded = false;
		int			free_slots;
		Window	   *w;

		if (!eo_sink_is_async(dest->sink))
			continue;
		dlist_foreach(it, &windows)
		{
			Window	   *x = window_of(it.cur);

			if (x->dest_id != dest->id)
				continue;
			if (!dest->enabled)
				x->stop = true;
			if (!x->retries && !x->recording)
				has_log_window = true;
			if (x->recording)
				recorded = true;
		}
		if (!dest->enabled || (!look_all && !recorded))
			continue;

		free_slots = send_limit(dest) - count_in_flight(dest->id);
		if (free_slots > 0 && (w = open_retry_window(dest, free_slots)) != NULL)
		{
			dlist_push_tail(&windows, &w->node);
			opened += w->unfinished;
		}
		if (!has_log_window)
		{
			LogCursor  *cursor;

			if (cursors == NIL)
				cursors = eo_log_cursors();
			cursor = eo_log_find_cursor(cursors, dest->id);
			if (cursor != NULL && cursor->sending_seq == 0 &&
				(w = open_log_window(&writes, dest, cursor, window_size, &blocked, now)) != NULL)
			{
				dlist_push_tail(&windows, &w->node);
				opened += w->unfinished;
				step_wanted |= (w->unfinished == 0);
			}
		}
	}

	*delivered += eo_delivery_write(&writes);
	return opened;
}

/*
 * eo_dispatch_step_done
 *		After the step's transaction: if it committed, free the recorded
 *		windows and start the new ones; if it was rolled back, keep the
 *		finished windows for the next step and drop the new ones (their
 *		claims were rolled back too).
 */
void
eo_dispatch_step_done(bool committed)
{
	dlist_mutable_iter it;

	if (dispatch_cxt == NULL)
		return;
	if (committed)
		reset_done = true;
	dlist_foreach_modify(it, &windows)
	{
		Window	   *w = window_of(it.cur);
		bool		drop;

		if (w->recording)
		{
			w->recording = false;
			if (!committed)
			{
				/* Record them again next time. */
				while (!dlist_is_empty(&w->recorded))
				{
					dlist_node *node = dlist_tail_node(&w->recorded);

					dlist_delete(node);
					dlist_push_head(&w->done, node);
				}
			}
			else
				dlist_init(&w->recorded);	/* memory goes with the window */
			drop = committed && w->unfinished == 0 && dlist_is_empty(&w->done);
		}
		else
			drop = !w->committed && !committed;
		if (drop)
		{
			dlist_delete(&w->node);
			window_free(w);
			continue;
		}
		w->committed = true;
	}
	(void) progress();
}

/* Should the relay run a step (windows finished, or it has not looked)? */
bool
eo_dispatch_step_wanted(void)
{
	return step_wanted;
}

/* Is anything on the wire or waiting to start? */
bool
eo_dispatch_busy(void)
{
	return !dlist_is_empty(&windows);
}

/* The earliest retry due after the steps since the last call (then forgotten). */
TimestampTz
eo_dispatch_next_due(void)
{
	TimestampTz due = next_due;

	next_due = DT_NOEND;
	return due;
}

/*
 * The relay's wait set, kept between waits: building one costs an epoll
 * instance and a system call per descriptor, and a webhook on a kept-alive
 * connection only switches its socket between writing and reading, which
 * ModifyWaitEvent() does in place.  Rebuilt when a sink opens or closes a
 * descriptor (its generation changes).
 */
#define MAX_ASYNC_SINKS 16

typedef struct WatchedSocket
{
	pgsocket	fd;
	uint32		events;
	int			pos;			/* in wait_set */
} WatchedSocket;

static WaitEventSet *wait_set = NULL;
static WatchedSocket *watched = NULL;
static int	nwatched = 0;
static int	watched_capacity = 0;
static uint64 watched_generation[MAX_ASYNC_SINKS];

/*
 * prepare_wait_set
 *		Make wait_set watch the latch, postmaster death and every socket the
 *		sinks want; lower *timeout_ms to the sinks' timers.  Returns the
 *		number of events the set holds.
 */
static int
prepare_wait_set(long *timeout_ms)
{
	int			nsinks;
	const SinkRoutine *const *sinks = eo_sink_all(&nsinks);
	const SinkSocket *socks[MAX_ASYNC_SINKS];
	int			nsocks[MAX_ASYNC_SINKS];
	uint64		gens[MAX_ASYNC_SINKS];
	bool		rebuild = (wait_set == NULL);
	int			total = 0;
	int			k = 0;

	for (int i = 0; i < nsinks && i < MAX_ASYNC_SINKS; i++)
	{
		nsocks[i] = 0;
		gens[i] = 0;
		if (!eo_sink_is_async(sinks[i]))
			continue;
		nsocks[i] = sinks[i]->wait_sockets(&socks[i], &gens[i], timeout_ms);
		if (gens[i] != watched_generation[i])
			rebuild = true;
		for (int j = 0; j < nsocks[i]; j++)
		{
			if (socks[i][j].events != 0)
				total++;
		}
	}
	if (total != nwatched)
		rebuild = true;

	/* Same descriptors: adjust what is watched on each, in place. */
	if (!rebuild)
	{
		for (int i = 0; i < nsinks && i < MAX_ASYNC_SINKS && !rebuild; i++)
		{
			for (int j = 0; j < nsocks[i] && !rebuild; j++)
			{
				if (socks[i][j].events == 0)
					continue;
				if (watched[k].fd != socks[i][j].fd)
					rebuild = true;
				else if (watched[k].events != socks[i][j].events)
				{
					ModifyWaitEvent(wait_set, watched[k].pos, socks[i][j].events, NULL);
					watched[k].events = socks[i][j].events;
				}
				k++;
			}
		}
		if (!rebuild)
			return nwatched + 2;
	}

	if (wait_set != NULL)
		FreeWaitEventSet(wait_set);
	if (total > watched_capacity)
	{
		watched_capacity = Max(total, 2 * watched_capacity);
		watched = watched == NULL ?
			MemoryContextAlloc(dispatch_cxt, sizeof(WatchedSocket) * watched_capacity) :
			repalloc(watched, sizeof(WatchedSocket) * watched_capacity);
	}
	wait_set = CreateWaitEventSet(dispatch_cxt, total + 2);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	nwatched = 0;
	for (int i = 0; i < nsinks && i < MAX_ASYNC_SINKS; i++)
	{
		watched_generation[i] = gens[i];
		for (int j = 0; j < nsocks[i]; j++)
		{
			if (socks[i][j].events == 0)
				continue;
			watched[nwatched].fd = socks[i][j].fd;
			watched[nwatched].events = socks[i][j].events;
			watched[nwatched].pos = AddWaitEventToSet(wait_set, socks[i][j].events,
													  socks[i][j].fd, NULL,
													  (void *) sinks[i]);
			nwatched++;
		}
	}
	return nwatched + 2;
}

/*
 * eo_dispatch_wait
 *		Wait up to timeout_ms for the latch, postmaster death (exits) or
 *		activity of a sink, let the sinks work, and start what may start.
 *		Replaces the relay's WaitLatch.  Returns how many sends finished;
 *		*latch_set says whether the latch was set (a commit to route, a
 *		signal, eo.wake_relay()).
 */
int
eo_dispatch_wait(long timeout_ms, bool *latch_set)
{
	int			nsinks;
	const SinkRoutine *const *sinks = eo_sink_all(&nsinks);
	WaitEvent  *events;
	int			nevents;
	int			n;

	dispatch_init();
	nevents = prepare_wait_set(&timeout_ms);
	events = palloc(sizeof(WaitEvent) * nevents);
	n = WaitEventSetWait(wait_set, timeout_ms, events, nevents, PG_WAIT_EXTENSION);
	*latch_set = false;
	for (int i = 0; i < n; i++)
	{
		if (events[i].events & WL_LATCH_SET)
			*latch_set = true;
	}
	for (int i = 0; i < nsinks; i++)
	{
		if (eo_sink_is_async(sinks[i]))
			sinks[i]->handle_events(events, n);
	}
	pfree(events);
	return progress();
}
