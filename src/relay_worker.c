/*-------------------------------------------------------------------------
 *
 * relay_worker.c
 *	  The relay of one database: a background worker that takes committed
 *	  messages out of eo.outbox, routes them into the message log and
 *	  delivers them to the destinations whose subscriptions match.
 *
 *	  The loop, read top-down from eo_relay_worker_main():
 *		claim -> send -> record, as steps, each one short transaction:
 *		1. route: under the routing lock, move a batch from eo.outbox to
 *		   the log (message_log.c) and deliver it at once to destinations
 *		   whose sink delivers inline (NOTIFY, sent at commit); such a
 *		   destination that is behind first catches up from the log;
 *		2. retry: parked deliveries of inline sinks that are due;
 *		3. dispatch: record the finished windows of asynchronous sinks and
 *		   open new ones (relay_dispatch.c); their sends start after the
 *		   commit, outside any transaction;
 *		4. housekeeping now and then, and a VACUUM of eo.outbox after
 *		   every 10,000 messages routed while a backlog is worked off
 *		   (outbox_vacuum.c);
 *		then wait on the latch (set when a publishing transaction commits)
 *		and on the sinks' sockets.
 *	  The loop never names a kind of destination: sinks are reached
 *	  through their SinkRoutine (sink.h).  What is written about each
 *	  delivery is decided in delivery.c.
 *
 *	  Errors are caught per step: the transaction is aborted, the error is
 *	  logged (once per distinct message) and shown in eo.relay_status, the
 *	  batch is halved so that a bad message is isolated, and the worker
 *	  backs off; it never exits because of an error (an uncaught ERROR in a
 *	  background worker would turn into FATAL and a restart loop).
 *
 *	  Ordering: messages are routed in id order; publishers of one key are
 *	  serialised (outbox.c), so ids within a key follow commit order, and
 *	  so do log positions.  A message whose key has an unfinished delivery
 *	  to a destination waits ("pending") behind it; only dead deliveries
 *	  stop holding later ones back.  Messages without a key never wait.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "delivery.h"
#include "eo_processing.h"
#include "message_log.h"
#include "relay.h"
#include "relay_config.h"
#include "relay_dispatch.h"
#include "sink.h"

static RelaySlot *my_slot = NULL;
static Oid	my_dboid = InvalidOid;
static MemoryContext loop_cxt = NULL;
static int	batch_limit = 0;	/* shrinks after errors, grows back */

static int	consecutive_errors = 0;

/*
 * Table statistics not yet flushed (pgstat_report_stat() flushes at most
 * once a second): how long until the next try, 0 if none are pending.  An
 * idle relay wakes up for it, as an idle backend does, so that
 * pg_stat_user_tables shows what it did.
 */
static long stats_flush_ms = 0;
static char last_logged_error[EO_RELAY_ERROR_LEN];
static TimestampTz last_logged_at = 0;

/* What the last route step found (for the loop's decisions). */
static bool route_lock_busy = false;	/* eo.relay_run() holds the lock */
static bool route_parked = false;	/* it set deliveries aside */
static bool route_more = false; /* a destination is still catching up */

/*
 * Under a steady trickle of commits, each waking the relay, the next route
 * step starts no sooner than this after the last one (when that one found
 * fewer messages than a batch): every step costs the same few statements
 * and a transaction however few messages it routes, so the commits of
 * 2 ms share one.  Meanwhile the loop goes on serving the sinks (answers
 * of webhooks, their next windows) and waits at most until the route step
 * is due; the wake-up is remembered in route_wanted.  It adds at most this
 * much to the delivery of a message; a backlog (full batches), retries and
 * a relay that was idle for longer are not paced.
 */
#define RELAY_TRICKLE_PACE_US 2000

/*
 * Positions up to which this worker knows an inline destination has
 * nothing left, without having written its cursor: a routing batch with no
 * message for a destination does not move its cursor (a row update per
 * destination per batch) until it lags far behind.  Kept only for what
 * committed; max(cursor, mark) is where the destination stands.
 */
typedef struct DoneMark
{
	int32		dest_id;
	int64		seq;
} DoneMark;

#define MAX_DONE_MARKS 64
static DoneMark done_marks[MAX_DONE_MARKS];
static int	ndone_marks = 0;
static DoneMark pending_marks[MAX_DONE_MARKS];	/* of the step in progress */
static int	npending_marks = 0;

/* Where this worker knows the destination stands (0 if it does not). */
static int64
done_mark(int32 dest_id)
{
	for (int i = 0; i < ndone_marks; i++)
	{
		if (done_marks[i].dest_id == dest_id)
			return done_marks[i].seq;
	}
	return 0;
}

static void
note_mark(int32 dest_id, int64 seq)
{
	if (my_slot != NULL && npending_marks < MAX_DONE_MARKS)
	{
		pending_marks[npending_marks].dest_id = dest_id;
		pending_marks[npending_marks].seq = seq;
		npending_marks++;
	}
}

/* After the route step committed: its marks hold. */
static void
keep_marks(void)
{
	for (int i = 0; i < npending_marks; i++)
	{
		int			j;

		for (j = 0; j < ndone_marks; j++)
		{
			if (done_marks[j].dest_id == pending_marks[i].dest_id)
				break;
		}
		if (j == ndone_marks)
		{
			if (ndone_marks == MAX_DONE_MARKS)
				continue;
			ndone_marks++;
		}
		done_marks[j] = pending_marks[i];
	}
	npending_marks = 0;
}

static void
set_state(RelayState state)
{
	if (my_slot != NULL)
		my_slot->state = state;
}

/* Does a routed message go to the destination? */
static bool
routed_to(const LogMessage *m, int32 dest_id)
{
	for (int i = 0; i < m->ndests; i++)
	{
		if (m->dests[i] == dest_id)
			return true;
	}
	return false;
}

/*
 * deliver_inline
 *		Deliver log messages to a destination whose sink delivers inline,
 *		in log order, in the current transaction: a message whose key is
 *		held waits (pending); a failure is set aside to be retried (and
 *		then holds its key).  With "routed_only", messages not routed to
 *		the destination are skipped (a routing batch has every message).
 */
static void
deliver_inline(const DestinationConfig *dest, LogMessage *msgs, int n, bool routed_only,
			   HTAB *blocked, DeliveryWrites *writes, TimestampTz now)
{
	for (int i = 0; i < n; i++)
	{
		EoMessage  *msg = &msgs[i].msg;
		SinkOutcome outcome;
		DeliveryState state;

		CHECK_FOR_INTERRUPTS();
		if (routed_only && !routed_to(&msgs[i], dest->id))
			continue;
		if (eo_blocked_key(blocked, dest->id, msg->key, false))
		{
			eo_delivery_park(writes, dest->id, &msg->id, msg->key,
							 DELIVERY_PENDING, 0, now, NULL);
			route_parked = true;
			continue;
		}
		dest->sink->deliver(dest, msg, &outcome);
		eo_delivery_outcome(writes, dest, &msg->id, msg->key, 1, false, now,
							&outcome, now, &state);
		if (outcome.result != SINK_DELIVERED)
		{
			route_parked = true;
			if (state != DELIVERY_DEAD)
				(void) eo_blocked_key(blocked, dest->id, msg->key, true);
		}
	}
}

/*
 * route_step
 *		Claim and send, one transaction: under the routing lock (waiting
 *		for it only with "wait"), let destinations of inline sinks that are
 *		behind catch up from the log, then route up to "limit" messages
 *		and deliver them to the inline destinations that are caught up;
 *		record it all.  Returns the number of messages routed.
 */
static int
route_step(int limit, bool wait)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	const RelayConfig *config;
	DeliveryWrites writes;
	HTAB	   *blocked;
	List	   *cursors;
	List	   *caught_up = NIL;
	ListCell   *lc;
	LogMessage *routed;
	int64		head;
	int			nrouted;

	route_lock_busy = false;
	route_parked = false;
	route_more = false;
	npending_marks = 0;
	if (!eo_log_lock(wait))
	{
		route_lock_busy = true;
		return 0;
	}
	head = eo_log_head();
	cursors = eo_log_cursors();
	blocked = eo_blocked_keys_load();
	eo_delivery_writes_init(&writes);

	/* Inline destinations behind the end of the log catch up first. */
	config = eo_relay_config();
	foreach(lc, config->dests)
	{
		DestinationConfig *dest = lfirst(lc);
		LogCursor  *cursor = eo_log_find_cursor(cursors, dest->id);

		if (eo_sink_is_async(dest->sink) || !dest->enabled || cursor == NULL)
			continue;
		if (Max(cursor->delivered_seq, done_mark(dest->id)) < head)
		{
			LogMessage *msgs;
			int64		covered;
			int64		from = Max(cursor->delivered_seq, done_mark(dest->id));
			int			n = eo_log_read(dest->id, from, limit, &msgs, &covered);

			deliver_inline(dest, msgs, n, false, blocked, &writes, now);
			if (n == limit)
				covered = msgs[n - 1].seq;
			eo_delivery_cursor(&writes, dest->id, covered, -1);
			if (covered < head)
			{
				route_more = true;
				continue;		/* still behind: not this batch */
			}
		}
		caught_up = lappend_int(caught_up, dest->id);
	}

	/* Route a batch; the configuration is read again after the claim. */
	nrouted = eo_log_route(limit, &config, &routed);
	if (nrouted > 0)
	{
		foreach(lc, config->dests)
		{
			DestinationConfig *dest = lfirst(lc);

			LogCursor  *cursor = eo_log_find_cursor(cursors, dest->id);
			int64		last = routed[nrouted - 1].seq;
			bool		any = false;

			if (!list_member_int(caught_up, dest->id))
				continue;		/* behind, disabled, async, or new */
			for (int i = 0; i < nrouted && !any; i++)
				any = routed_to(&routed[i], dest->id);
			if (any)
				deliver_inline(dest, routed, nrouted, true, blocked, &writes, now);
			if (any || last - cursor->delivered_seq > (int64) 8 * limit)
				eo_delivery_cursor(&writes, dest->id, last, -1);
			else
				note_mark(dest->id, last);
		}
	}

	if (my_slot != NULL)
		my_slot->delivered += eo_delivery_write(&writes);
	else
		(void) eo_delivery_write(&writes);
	return nrouted;
}

/*
 * run_sink_timers
 *		Let every sink with timers do what fell due by "now" (in the retry
 *		step's transaction); returns the earliest time one of them wants to
 *		be called again, or DT_NOEND.
 */
static TimestampTz
run_sink_timers(TimestampTz now)
{
	int			nsinks;
	const SinkRoutine *const *sinks = eo_sink_all(&nsinks);
	TimestampTz next = DT_NOEND;
	bool		signalled = false;

	if (my_slot != NULL)
		signalled = eo_relay_take_timer(my_slot, now);
	for (int i = 0; i < nsinks; i++)
	{
		if (sinks[i]->timers)
			next = Min(next, sinks[i]->timers(eo_relay_config()->dests, now, signalled));
	}
	/* A time still ahead in the slot (unlocked read, as in the loop). */
	if (my_slot != NULL)
		next = Min(next, my_slot->timer_due);
	return next;
}

/*
 * retry_step
 *		One transaction: parked deliveries of inline sinks whose time has
 *		come and that are first in line for their key, then the sinks'
 *		timers.  Returns the number attempted, and in *next_retry the
 *		earliest time a retry or a timer is due.
 */
static int
retry_step(int limit, TimestampTz *next_retry)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz timers_due;
	DueDelivery *due;
	int			n = eo_delivery_claim_due(0, true, limit, false, CurrentMemoryContext, &due);

	if (n > 0)
	{
		List	   *dests = eo_relay_config()->dests;
		DeliveryWrites writes;

		eo_delivery_writes_init(&writes);
		for (int i = 0; i < n; i++)
		{
			DestinationConfig *dest = eo_relay_find_destination(dests, due[i].dest_id);
			SinkOutcome outcome;
			DeliveryState state;

			CHECK_FOR_INTERRUPTS();
			if (dest == NULL)
				continue;		/* dropped meanwhile; the row goes with it */
			dest->sink->deliver(dest, &due[i].msg, &outcome);
			eo_delivery_outcome(&writes, dest, &due[i].msg.id, due[i].msg.key,
								due[i].attempt, true, now, &outcome, now, &state);
		}
		if (my_slot != NULL)
			my_slot->delivered += eo_delivery_write(&writes);
		else
			(void) eo_delivery_write(&writes);
	}
	timers_due = run_sink_timers(now);
	if (next_retry != NULL)
		*next_retry = Min(eo_delivery_next_due(), timers_due);
	return n;
}

/* The dispatch step: asynchronous sinks (relay_dispatch.c). */
static bool dispatch_look_all = true;

static int
dispatch_step(void)
{
	int64		delivered;
	int			n = eo_dispatch_step(eo_relay_current_destinations(), batch_limit,
									 dispatch_look_all, &delivered);

	my_slot->delivered += delivered;
	return n;
}

/*
 * Housekeeping: purge expired inbox records and old delivered messages,
 * then let each sink that keeps tables of its own trim them.
 */
static int
housekeeping(void)
{
	int			purged = 0;
	int			nsinks;
	const SinkRoutine *const *sinks = eo_sink_all(&nsinks);

	if (SPI_execute("SELECT eo.purge_expired(10000)", false, 0) == SPI_OK_SELECT)
		purged += SPI_processed;
	if (SPI_execute("SELECT eo.purge_delivered(10000)", false, 0) == SPI_OK_SELECT)
		purged += SPI_processed;
	if (SPI_execute("SELECT eo.purge_keys(10000)", false, 0) == SPI_OK_SELECT)
		purged += SPI_processed;
	for (int i = 0; i < nsinks; i++)
	{
		if (sinks[i]->housekeeping)
			purged += sinks[i]->housekeeping();
	}
	return purged;
}

/*
 * log_error_once
 *		Log an error of a step unless the same text was logged in the last
 *		ten minutes, and show it in eo.relay_status.
 */
static void
log_error_once(const char *step, ErrorData *edata)
{
	char		text[EO_RELAY_ERROR_LEN];
	TimestampTz now = GetCurrentTimestamp();

	snprintf(text, sizeof(text), "%s: %s", step, edata->message ? edata->message : "unknown error");
	if (strcmp(text, last_logged_error) != 0 ||
		TimestampDifferenceExceeds(last_logged_at, now, 10 * 60 * 1000))
	{
		ereport(LOG,
				(errmsg("eo_processing relay of database %u: %s", my_dboid, text),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
		strlcpy(last_logged_error, text, sizeof(last_logged_error));
		last_logged_at = now;
	}
	if (my_slot != NULL)
	{
		strlcpy(my_slot->last_error, text, sizeof(my_slot->last_error));
		my_slot->last_error_at = now;
	}
}

/* Last resort for a message that cannot be routed even alone. */
static int
quarantine_step(void)
{
	int			n;

	if (!eo_log_lock(false))
		return 0;
	n = eo_log_quarantine_head(last_logged_error);
	ereport(LOG,
			(errmsg("eo_processing relay of database %u: moved a message that cannot be routed to the log as dead",
					my_dboid),
			 errdetail("%s", last_logged_error)));
	return n;
}

/* Last resort for a retry that fails even alone. */
static int
give_up_step(void)
{
	int			n = eo_delivery_give_up_head(last_logged_error);

	if (n > 0)
		ereport(LOG,
				(errmsg("eo_processing relay of database %u: marked a delivery that cannot be retried as dead",
						my_dboid),
				 errdetail("%s", last_logged_error)));
	return n;
}

/*
 * Is the extension installed (1), with objects of this library's version
 * (2)?  Between a new library and ALTER EXTENSION UPDATE they are older.
 */
static int
check_extension(void)
{
	if (!OidIsValid(get_extension_oid("eo_processing", true)))
		return 0;
	return eo_log_objects_ready() ? 2 : 1;
}

typedef enum StepKind
{
	STEP_ROUTE,
	STEP_RETRY,
	STEP_DISPATCH,
	STEP_HOUSEKEEPING,
	STEP_CHECK_EXTENSION,
	STEP_QUARANTINE,
	STEP_GIVE_UP
} StepKind;

/*
 * run_step
 *		Run one step in its own transaction, catching any error.  Returns
 *		false after an error (the transaction was rolled back).
 */
static bool
run_step(StepKind kind, int *result, TimestampTz *next_retry)
{
	static const char *const names[] = {"routing", "retrying", "sending",
	"housekeeping", "checking the extension", "quarantining a message",
	"giving up a delivery"};
	volatile bool ok = true;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "eo_processing relay: SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, names[kind]);

		switch (kind)
		{
			case STEP_ROUTE:
				*result = route_step(batch_limit, false);
				break;
			case STEP_RETRY:
				*result = retry_step(batch_limit, next_retry);
				break;
			case STEP_DISPATCH:
				*result = dispatch_step();
				break;
			case STEP_HOUSEKEEPING:
				*result = housekeeping();
				break;
			case STEP_CHECK_EXTENSION:
				*result = check_extension();
				break;
			case STEP_QUARANTINE:
				*result = quarantine_step();
				break;
			case STEP_GIVE_UP:
				*result = give_up_step();
				break;
		}

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(loop_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		log_error_once(names[kind], edata);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(loop_cxt);
	if (kind == STEP_DISPATCH)
		eo_dispatch_step_done(ok);
	stats_flush_ms = pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}

/*
 * Forget saved plans and the cached configuration (after an error they may
 * refer to dropped objects).
 */
static void
forget_plans(void)
{
	eo_log_forget_plans();
	eo_delivery_forget_plans();
	eo_relay_config_forget();
}

/*
 * Exit cleanly if the extension is gone or the launcher let go of us.
 * Returns whether the extension's objects are ready for this library.
 */
static bool
exit_if_unwanted(void)
{
	int			present = 2;
	bool		wanted;

	LWLockAcquire(eo_relay->lock, LW_SHARED);
	wanted = my_slot->wanted && !my_slot->stop_requested;
	LWLockRelease(eo_relay->lock);

	if (wanted && run_step(STEP_CHECK_EXTENSION, &present, NULL) && present > 0)
		return present == 2;
	if (!wanted)
		present = 1;
	if (present == 0)
		eo_relay_release_database(my_dboid);
	ereport(LOG,
			(errmsg("eo_processing relay of database %u stopping: %s", my_dboid,
					present ? "asked to stop" : "the extension is not installed")));
	proc_exit(0);
	return false;				/* keep the compiler quiet */
}

/* before_shmem_exit callback: clear our slot. */
static void
worker_detach(int code, Datum arg)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	my_slot->pid = 0;
	my_slot->pgprocno = -1;
	LWLockRelease(eo_relay->lock);
	eo_relay_wake_launcher();
}

/*
 * eo.relay_run(max_messages integer DEFAULT 1000) RETURNS integer
 *
 * Runs the relay's route step and its retry step for inline sinks in the
 * caller's own transaction (READ COMMITTED), and returns how many messages
 * it routed.  For databases where no relay worker runs (library not
 * preloaded, eo.relay_enabled off) and for tests: NOTIFYs go out when the
 * caller commits.  It waits for the routing lock, which a relay worker
 * holds only for a short transaction, and holds it until the caller's
 * transaction ends.
 *
 * Destinations of asynchronous sinks (http) are never sent to inside a
 * transaction: their messages wait in the log, and the relay worker is
 * woken when the caller commits to send them.
 */
PG_FUNCTION_INFO_V1(eo_relay_run);

Datum
eo_relay_run(PG_FUNCTION_ARGS)
{
	int			limit = PG_ARGISNULL(0) ? eo_relay_batch_size : PG_GETARG_INT32(0);
	int			routed;
	int			retried;
	int			save_nestlevel;

	if (limit < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must be at least 1")));
	PreventCommandIfReadOnly("eo.relay_run()");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("eo.relay_run() must run in a READ COMMITTED transaction"),
				 errdetail("It routes what was committed before each of its statements.")));

	eo_relay_config_init(NULL);	/* no generation counter: always reload */

	/*
	 * As in the worker, the saved plans must read through indexes even if
	 * made while a table was empty: enable_seqscan is off for the call.
	 */
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "eo_processing: SPI_connect failed");
	routed = route_step(limit, true);
	retried = retry_step(limit, NULL);
	SPI_finish();
	AtEOXact_GUC(true, save_nestlevel);

	if (routed > 0 || retried > 0)
		eo_relay_wake_at_commit();

	PG_RETURN_INT32(routed);
}

/*
 * eo_relay_worker_main
 *		Entry point of a database's relay worker (started by the launcher;
 *		the database OID is in bgw_extra).
 */
void
eo_relay_worker_main(Datum main_arg)
{
	TimestampTz next_retry = 0;
	TimestampTz next_housekeeping = 0;
	bool		retry_needed = true;
	bool		woken = true;		/* the latch was set: route */
	bool		route_again = true; /* the last route step left work */
	bool		ready;
	bool		said_not_ready = false;
	TimestampTz last_route_at = 0;
	int			last_routed = 0;
	bool		route_wanted = false;	/* woken since the last route step */
	bool		paced = false;	/* it waits for RELAY_TRICKLE_PACE_US */

	memcpy(&my_dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (eo_relay == NULL)
		proc_exit(1);
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	my_slot = eo_relay_find_slot(my_dboid);
	if (my_slot != NULL)
	{
		my_slot->pid = MyProcPid;
		my_slot->pgprocno = MyProc->pgprocno;
		my_slot->state = RELAY_STARTING;
		my_slot->started_at = GetCurrentTimestamp();
		my_slot->delivered = 0;
		my_slot->last_error[0] = '\0';
		my_slot->last_error_at = 0;
	}
	LWLockRelease(eo_relay->lock);
	if (my_slot == NULL)
		proc_exit(0);
	before_shmem_exit(worker_detach, (Datum) 0);

	BackgroundWorkerInitializeConnectionByOid(my_dboid, InvalidOid, 0);
	pgstat_report_appname("eo_processing relay");

	/*
	 * The relay's statements take arrays whose contents change every batch;
	 * re-planning them each time cost more than running them.  And its
	 * commits need not wait for the WAL flush: if a routing transaction is
	 * lost in a crash, its messages are still in eo.outbox and are simply
	 * delivered again (at least once), never lost; a cursor's move comes
	 * later in the WAL than the routing it passes.
	 */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	/*
	 * Every statement of the relay reads its tables through an index; its
	 * queues swing from empty to a backlog and back, and a plan made while
	 * one was empty must not scan (and sort) the backlog whole.  Where a
	 * statement has no index to use, a sequential scan still runs.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_USERSET, PGC_S_OVERRIDE);

	/*
	 * Its statements are short: compiling them costs more than it saves
	 * (and a disabled sequential scan's cost would trigger it every time).
	 */
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "eo_processing relay loop",
									 ALLOCSET_DEFAULT_SIZES);
	eo_relay_config_init(my_slot);
	MemoryContextSwitchTo(loop_cxt);
	batch_limit = eo_relay_batch_size;

	ready = exit_if_unwanted();

	/*
	 * The database has the extension.  A probe of the launcher's scan
	 * while the relay is off has learnt what it came for: exit, keeping
	 * the slot (eo.relay_status shows the database as disabled); the
	 * launcher starts a worker again when eo.relay_enabled comes on.
	 */
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	my_slot->probe = false;
	LWLockRelease(eo_relay->lock);
	if (!eo_relay_enabled)
	{
		ereport(LOG,
				(errmsg("eo_processing relay of database %u not started: eo.relay_enabled is off",
						my_dboid)));
		proc_exit(0);
	}
	ereport(LOG, (errmsg("eo_processing relay started for database %u", my_dboid)));

	for (;;)
	{
		int			n = 0;
		int			routed = 0;
		bool		more = false;
		TimestampTz now;
		long		timeout_ms;

		/* A latch set since the wait returned still means "route". */
		if (MyLatch->is_set)
			woken = true;
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		/*
		 * A busy relay never waits, so WL_EXIT_ON_PM_DEATH alone would not
		 * stop it: without a postmaster its notifications reach nobody.
		 */
		if (!PostmasterIsAlive())
			proc_exit(1);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			batch_limit = Min(batch_limit, eo_relay_batch_size);
			next_housekeeping = 0;	/* the interval may have changed */
			retry_needed = true;	/* eo.relay_enabled may have come on */
		}
		MemoryContextReset(loop_cxt);
		my_slot->last_wakeup = GetCurrentTimestamp();
		if (stats_flush_ms > 0)
			stats_flush_ms = pgstat_report_stat(false);

		if (!my_slot->wanted || my_slot->stop_requested)
			ready = exit_if_unwanted();
		if (my_slot->retry_requested)
		{
			/* eo.wake_relay(): an update, a redrive, eo.relay_run(), ... */
			my_slot->retry_requested = false;
			retry_needed = true;
		}

		/*
		 * Objects older than this library: look again whenever woken
		 * (ALTER EXTENSION UPDATE ends with eo.wake_relay(), which only
		 * sets the latch).
		 */
		if (!ready && woken)
			ready = exit_if_unwanted();
		if (!ready && !said_not_ready)
		{
			ereport(LOG,
					(errmsg("eo_processing relay of database %u waits: the extension's objects are older than its library",
							my_dboid),
					 errhint("Run ALTER EXTENSION eo_processing UPDATE in the database.")));
			said_not_ready = true;
		}

		if (eo_relay_enabled && ready)
		{
			bool		ok = true;

			/* A consumer made a sink timer fall due sooner (unlocked read). */
			next_retry = Min(next_retry, my_slot->timer_due);
			now = GetCurrentTimestamp();
			if (now >= next_housekeeping)
				retry_needed = true;	/* the safety net: look anyway */

			/*
			 * 1. Route, and deliver inline: when woken (a commit, a signal),
			 * while a backlog lasts, and once per naptime.  Not on every
			 * answer of a webhook: reading an emptied eo.outbox is not free
			 * (its index still has the entries of the rows just deleted).
			 */
			route_wanted |= woken;
			paced = route_wanted && !route_again && !retry_needed &&
				last_routed > 0 && last_routed < batch_limit &&
				now < last_route_at + RELAY_TRICKLE_PACE_US;
			if ((route_wanted || route_again || retry_needed) && !paced)
			{
				set_state(RELAY_ROUTING);
				route_wanted = false;
				last_route_at = now;
				if (run_step(STEP_ROUTE, &routed, NULL))
				{
					keep_marks();
					eo_outbox_note_routed(routed);
					route_again = (routed >= batch_limit) || route_lock_busy || route_more;
					last_routed = routed;
					more |= route_again;
					retry_needed |= route_parked;
				}
				else
					ok = false;
			}

			/* 2. Retries of inline sinks. */
			if (ok && (retry_needed || now >= next_retry))
			{
				set_state(RELAY_RETRYING);
				if (run_step(STEP_RETRY, &n, &next_retry))
					more |= (n > 0);
				else
					ok = false;
			}

			/* 3. Asynchronous sinks: record what finished, open windows. */
			if (ok && eo_relay_config_may_have_async() &&
				(routed > 0 || retry_needed || now >= next_retry ||
				 eo_dispatch_step_wanted()))
			{
				TimestampTz due;

				set_state(RELAY_SENDING);
				dispatch_look_all = routed > 0 || retry_needed || now >= next_retry;
				if (run_step(STEP_DISPATCH, &n, NULL))
				{
					more |= eo_dispatch_step_wanted();
					due = eo_dispatch_next_due();
					next_retry = Min(next_retry, due);
				}
				else
					ok = false;
			}
			if (ok)
				retry_needed = false;

			/*
			 * 4. Housekeeping; and VACUUM eo.outbox after many routings,
			 * while a backlog is worked off (full batches).  Not at a
			 * steady trickle: there the dead entries are few, and the
			 * vacuum's scan of the whole index would only delay routing.
			 */
			if (route_again && eo_outbox_vacuum_due())
			{
				ErrorData  *edata;

				set_state(RELAY_HOUSEKEEPING);
				pgstat_report_activity(STATE_RUNNING, "vacuuming eo.outbox");
				edata = eo_outbox_vacuum();
				if (edata != NULL)
				{
					log_error_once("vacuuming eo.outbox", edata);
					FreeErrorData(edata);
				}
				stats_flush_ms = pgstat_report_stat(false);
				pgstat_report_activity(STATE_IDLE, NULL);
			}

			if (now >= next_housekeeping)
			{
				set_state(RELAY_HOUSEKEEPING);
				ok &= run_step(STEP_HOUSEKEEPING, &n, NULL);
				next_housekeeping = TimestampTzPlusMilliseconds(now,
																(int64) eo_relay_naptime_secs * 1000);
			}

			if (ok)
			{
				consecutive_errors = 0;
				if (batch_limit < eo_relay_batch_size)
					batch_limit = Min(batch_limit * 2, eo_relay_batch_size);
			}
			else
			{
				/*
				 * Isolate a bad message by halving the batch; once a batch of
				 * one has failed three times, set that message (or delivery)
				 * aside.  Back off in any case.
				 */
				consecutive_errors++;
				forget_plans();
				if (batch_limit == 1 && consecutive_errors >= 3)
				{
					if (my_slot->state == RELAY_ROUTING)
						(void) run_step(STEP_QUARANTINE, &n, NULL);
					else if (my_slot->state == RELAY_RETRYING)
						(void) run_step(STEP_GIVE_UP, &n, NULL);
				}
				batch_limit = Max(batch_limit / 2, 1);
				ready = exit_if_unwanted();
				more = false;
				retry_needed = true;
				if (next_retry == DT_NOEND)
					next_retry = 0;
			}
		}

		if (more)
		{
			/* Keep sends moving while a backlog is worked off. */
			(void) eo_dispatch_wait(0, &woken);
			continue;
		}

		set_state(consecutive_errors > 0 ? RELAY_BACKING_OFF : RELAY_IDLE);
		now = GetCurrentTimestamp();
		if (consecutive_errors > 0)
			timeout_ms = Min(100L << Min(consecutive_errors, 8), 30000L);
		else if (!eo_relay_enabled || !ready)
		{
			/*
			 * Nothing to do until woken: by the reload that turns the relay
			 * on, or by the ALTER EXTENSION UPDATE that brings the objects
			 * this library needs (the schedules below are not kept
			 * meanwhile, and a past one would make this a busy wait).
			 */
			timeout_ms = (long) eo_relay_naptime_secs * 1000;
		}
		else
		{
			TimestampTz wake = TimestampTzPlusMilliseconds(now,
														   (int64) eo_relay_naptime_secs * 1000);

			if (next_retry < wake)
				wake = next_retry;
			if (next_housekeeping < wake)
				wake = next_housekeeping;
			timeout_ms = wake <= now ? 1 :
				(long) Min((wake - now) / 1000 + 1, (int64) eo_relay_naptime_secs * 1000);
		}
		if (stats_flush_ms > 0)
			timeout_ms = Min(timeout_ms, stats_flush_ms);
		if (paced && eo_relay_enabled && ready)
		{
			/* Until the paced route step is due (rounded up). */
			int64		until_us = last_route_at + RELAY_TRICKLE_PACE_US - now;

			timeout_ms = Min(timeout_ms, (long) Max((until_us + 999) / 1000, 0));
		}
		(void) eo_dispatch_wait(timeout_ms, &woken);
	}
}
