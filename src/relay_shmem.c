/*-------------------------------------------------------------------------
 *
 * relay_shmem.c
 *	  The relay's shared memory: a slot per database whose relay runs, the
 *	  functions backends use to start and wake relays, and the
 *	  eo.relay_status() view function.
 *
 *	  Backends never wait on the relay: waking it is setting a latch.  A
 *	  publishing transaction wakes its database's worker when it commits
 *	  (outbox.c registers the commit callback); CREATE EXTENSION asks the
 *	  launcher to start a worker for the database (eo.wake_relay()).
 *
 *	  Shared memory exists only when the library is preloaded; without it
 *	  every function here degrades to "no relay runs".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/trigger.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "eo_processing.h"
#include "relay.h"

PG_FUNCTION_INFO_V1(eo_wake_relay);
PG_FUNCTION_INFO_V1(eo_config_changed);
PG_FUNCTION_INFO_V1(eo_relay_status);

RelayShared *eo_relay = NULL;
bool		eo_preloaded = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool wake_at_commit_registered = false;
static bool start_at_commit = false;
static bool config_changed_at_commit = false;
static bool stop_at_commit = false;

/* One slot per possible background worker is always enough. */
static int
relay_nslots(void)
{
	return Max(max_worker_processes, 1);
}

static Size
relay_shmem_size(void)
{
	return add_size(offsetof(RelayShared, slots),
					mul_size(relay_nslots(), sizeof(RelaySlot)));
}

/* shmem_request_hook: reserve our memory and our LWLock tranche. */
static void
relay_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(relay_shmem_size());
	RequestNamedLWLockTranche("eo_processing relay", 1);
}

/* shmem_startup_hook: create or attach to the shared state. */
static void
relay_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	eo_relay = ShmemInitStruct("eo_processing relay", relay_shmem_size(), &found);
	if (!found)
	{
		memset(eo_relay, 0, relay_shmem_size());
		eo_relay->lock = &(GetNamedLWLockTranche("eo_processing relay"))->lock;
		eo_relay->launcher_pgprocno = -1;
		eo_relay->nslots = relay_nslots();
		for (int i = 0; i < eo_relay->nslots; i++)
			eo_relay->slots[i].pgprocno = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Install the hooks; called from _PG_init() when preloading. */
void
eo_relay_shmem_request(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = relay_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = relay_shmem_startup;
}

void
eo_relay_shmem_startup(void)
{
	/* nothing: kept for symmetry with the request side */
}

/*
 * eo_relay_find_slot
 *		The slot of a database, or NULL.  Caller holds eo_relay->lock.
 */
RelaySlot *
eo_relay_find_slot(Oid dboid)
{
	for (int i = 0; i < eo_relay->nslots; i++)
	{
		if (eo_relay->slots[i].dboid == dboid)
			return &eo_relay->slots[i];
	}
	return NULL;
}

/* Set the latch of a process by PGPROC number (no-op for -1). */
static void
set_proc_latch(int pgprocno)
{
	if (pgprocno >= 0)
		SetLatch(&ProcGlobal->allProcs[pgprocno].procLatch);
}

void
eo_relay_wake_launcher(void)
{
	if (eo_relay == NULL)
		return;
	set_proc_latch(eo_relay->launcher_pgprocno);
}

/*
 * eo_relay_request
 *		Ask the launcher to keep a worker running for the database, and
 *		wake the worker if it runs already.
 */
void
eo_relay_request(Oid dboid)
{
	RelaySlot  *slot;
	int			procno = -1;

	if (eo_relay == NULL)
		return;

	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	slot = eo_relay_find_slot(dboid);
	if (slot == NULL)
		slot = eo_relay_find_slot(InvalidOid);
	if (slot != NULL)
	{
		if (slot->dboid != dboid)
		{
			memset(slot, 0, sizeof(RelaySlot));
			slot->dboid = dboid;
			slot->pgprocno = -1;
		}
		slot->wanted = true;
		slot->retry_requested = true;
		slot->hold_until = 0;
		procno = slot->pgprocno;
	}
	LWLockRelease(eo_relay->lock);

	if (slot == NULL)
		ereport(WARNING,
				(errmsg("no relay slot left for database %u", dboid),
				 errhint("Raise max_worker_processes.")));
	set_proc_latch(procno);
	eo_relay_wake_launcher();
}

/*
 * eo_relay_wake_database
 *		Set the latch of the database's worker; called at commit of a
 *		transaction that published.  Takes no lock: reading a stale
 *		pgprocno at worst sets the latch of a process that ignores it, and
 *		the worker's fallback naptime covers a missed wake-up.
 */
void
eo_relay_wake_database(Oid dboid)
{
	if (eo_relay == NULL)
		return;

	for (int i = 0; i < eo_relay->nslots; i++)
	{
		RelaySlot  *slot = &eo_relay->slots[i];

		if (slot->dboid == dboid)
		{
			int			procno = slot->pgprocno;

			if (procno >= 0)
				set_proc_latch(procno);
			else
				eo_relay_wake_launcher();
			return;
		}
	}
	/* No slot: the relay has not heard of this database yet. */
	eo_relay_request(dboid);
}

/*
 * eo_relay_release_database
 *		Stop wanting a worker for the database (the extension was dropped),
 *		and wake the worker so that it exits now.
 */
void
eo_relay_release_database(Oid dboid)
{
	RelaySlot  *slot;
	int			procno = -1;

	if (eo_relay == NULL)
		return;
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	slot = eo_relay_find_slot(dboid);
	if (slot != NULL)
	{
		slot->wanted = false;
		procno = slot->pgprocno;
	}
	LWLockRelease(eo_relay->lock);
	set_proc_latch(procno);
}

/*
 * eo_relay_config_changed
 *		Tell the database's relay to reload destinations and subscriptions.
 */
void
eo_relay_config_changed(Oid dboid)
{
	RelaySlot  *slot;

	if (eo_relay == NULL)
		return;
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	slot = eo_relay_find_slot(dboid);
	if (slot != NULL)
		slot->config_generation++;
	LWLockRelease(eo_relay->lock);
}

/*
 * Commit callback of eo.wake_relay() and eo.config_changed(): start or wake
 * the relay, and have it reload its configuration.  Runs after the commit
 * is visible to other transactions.
 */
static void
wake_relay_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* first of two bumps: see relay_config.c */
			if (config_changed_at_commit)
				eo_relay_config_changed(MyDatabaseId);
			break;
		case XACT_EVENT_COMMIT:
			if (stop_at_commit)
				eo_relay_release_database(MyDatabaseId);
			else
			{
				if (config_changed_at_commit)
					eo_relay_config_changed(MyDatabaseId);
				if (start_at_commit)
					eo_relay_request(MyDatabaseId);
			}
			start_at_commit = false;
			config_changed_at_commit = false;
			stop_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			start_at_commit = false;
			config_changed_at_commit = false;
			stop_at_commit = false;
			break;
		default:
			break;
	}
}

static void register_wake_callback(void);

/*
 * eo_relay_stop_database_at_commit
 *		DROP EXTENSION eo_processing: when (if) the transaction commits, the
 *		database's relay is let go and woken, so it exits at once.
 */
void
eo_relay_stop_database_at_commit(void)
{
	if (eo_relay == NULL)
		return;
	register_wake_callback();
	stop_at_commit = true;
}

static void
register_wake_callback(void)
{
	if (!wake_at_commit_registered)
	{
		RegisterXactCallback(wake_relay_xact_callback, NULL);
		wake_at_commit_registered = true;
	}
}

/*
 * eo_relay_wake_at_commit
 *		When (if) the transaction commits, start or wake the relay of the
 *		current database and have it look at eo.delivery: for callers that
 *		inserted or changed deliveries the relay cannot know about
 *		(eo.relay_run(), eo.redrive() through eo.wake_relay()).  A no-op
 *		when the library is not preloaded.
 */
void
eo_relay_wake_at_commit(void)
{
	if (eo_relay == NULL)
		return;
	register_wake_callback();
	start_at_commit = true;
}

/*
 * eo_relay_timer_at
 *		Something falls due at "when" that only the relay will notice (a
 *		queue's lease runs out, the delay of eo.nack() passes): lower the
 *		current database's relay timer to it, and wake the worker if that
 *		moved the timer earlier, so that its wait ends in time.  Leases of
 *		one length, taken one after the other, leave the timer alone after
 *		the first.  Called before the caller commits: a rollback leaves a
 *		timer that finds nothing.  A no-op without the preloaded library or
 *		a relay slot for the database.
 */
void
eo_relay_timer_at(TimestampTz when)
{
	RelaySlot  *slot;
	int			procno = -1;

	if (eo_relay == NULL)
		return;
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	slot = eo_relay_find_slot(MyDatabaseId);
	if (slot != NULL && when < slot->timer_due)
	{
		slot->timer_due = when;
		procno = slot->pgprocno;
	}
	LWLockRelease(eo_relay->lock);
	set_proc_latch(procno);
}

/*
 * eo_relay_take_timer
 *		The worker's retry step takes its timer if it has fallen due by
 *		"now" (the sinks' timers then work out what is readable from the
 *		tables): returns true and leaves DT_NOEND, so that a later
 *		eo_relay_timer_at() wakes the worker again.  A time still ahead
 *		stays in the slot (its cause may not be committed yet, so the
 *		tables may not show it): the worker's loop waits for it.
 */
bool
eo_relay_take_timer(RelaySlot *slot, TimestampTz now)
{
	bool		due;

	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	due = (slot->timer_due <= now);
	if (due)
		slot->timer_due = DT_NOEND;
	LWLockRelease(eo_relay->lock);
	return due;
}

/*
 * eo.wake_relay() RETURNS void
 *
 * Start (or wake) the relay of the current database when the transaction
 * commits.  Warns when the library is not preloaded, since then no relay
 * can run.
 */
Datum
eo_wake_relay(PG_FUNCTION_ARGS)
{
	if (!eo_preloaded)
	{
		ereport(WARNING,
				(errmsg("eo_processing is not loaded through shared_preload_libraries: no relay runs"),
				 errdetail("Published messages are kept in eo.outbox until a relay runs."),
				 errhint("Add eo_processing to shared_preload_libraries and restart the server.")));
		PG_RETURN_VOID();
	}
	eo_relay_wake_at_commit();
	PG_RETURN_VOID();
}

/*
 * eo.config_changed(): statement trigger on eo.destination and
 * eo.subscription.  At commit, the relay is told to reload them (it keeps
 * them in memory between batches) and woken, since held deliveries may now
 * be deliverable.
 */
Datum
eo_config_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eo.config_changed() must be called as a trigger")));
	if (eo_relay != NULL)
	{
		register_wake_callback();
		config_changed_at_commit = true;
		start_at_commit = true;
	}
	return PointerGetDatum(NULL);
}

static const char *
relay_state_name(RelayState state, bool running)
{
	if (!eo_relay_enabled)
		return "disabled: eo.relay_enabled is off";
	if (!running)
		return "stopped";
	switch (state)
	{
		case RELAY_STARTING:
			return "starting";
		case RELAY_IDLE:
			return "idle";
		case RELAY_ROUTING:
			return "routing";
		case RELAY_RETRYING:
			return "retrying";
		case RELAY_HOUSEKEEPING:
			return "housekeeping";
		case RELAY_SENDING:
			return "sending";
		case RELAY_BACKING_OFF:
			return "backing off after an error";
	}
	return "unknown";
}

/*
 * eo.relay_status(): one row per database the relay knows, or a single
 * row saying that no relay runs when the library is not preloaded.
 */
Datum
eo_relay_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[8];
	bool		nulls[8];

	InitMaterializedSRF(fcinfo, 0);

	if (eo_relay == NULL)
	{
		memset(nulls, true, sizeof(nulls));
		values[2] = CStringGetTextDatum("not running: eo_processing is not in shared_preload_libraries");
		nulls[2] = false;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		PG_RETURN_VOID();
	}

	LWLockAcquire(eo_relay->lock, LW_SHARED);
	for (int i = 0; i < eo_relay->nslots; i++)
	{
		RelaySlot  *slot = &eo_relay->slots[i];
		RelaySlot	copy;
		char	   *datname;

		if (!OidIsValid(slot->dboid))
			continue;
		copy = *slot;
		LWLockRelease(eo_relay->lock);

		memset(nulls, false, sizeof(nulls));
		datname = get_database_name(copy.dboid);
		if (datname == NULL)
			nulls[0] = true;
		else
		{
			NameData   *name = palloc(sizeof(NameData));

			namestrcpy(name, datname);
			values[0] = NameGetDatum(name);
		}
		values[1] = Int32GetDatum(copy.pid);
		nulls[1] = (copy.pid == 0);
		values[2] = CStringGetTextDatum(copy.wanted || copy.running ?
										relay_state_name(copy.state, copy.pid != 0) :
										"stopped: extension not installed");
		values[3] = TimestampTzGetDatum(copy.started_at);
		nulls[3] = (copy.started_at == 0);
		values[4] = TimestampTzGetDatum(copy.last_wakeup);
		nulls[4] = (copy.last_wakeup == 0);
		values[5] = Int64GetDatum((int64) copy.delivered);
		values[6] = CStringGetTextDatum(copy.last_error);
		nulls[6] = (copy.last_error[0] == '\0');
		values[7] = TimestampTzGetDatum(copy.last_error_at);
		nulls[7] = (copy.last_error_at == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);

		LWLockAcquire(eo_relay->lock, LW_SHARED);
	}
	LWLockRelease(eo_relay->lock);
	PG_RETURN_VOID();
}
