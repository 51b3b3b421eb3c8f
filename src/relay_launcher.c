/*-------------------------------------------------------------------------
 *
 * relay_launcher.c
 *	  The relay launcher: one background worker per server (registered
 *	  when the library is preloaded) that keeps a relay worker running for
 *	  every database that has the extension.
 *
 *	  - At start, every database that accepts connections gets a worker;
 *		a worker in a database without the extension exits at once and the
 *		launcher forgets the database.  While eo.relay_enabled is off these
 *		first workers ("probes") run too, but only to find out which
 *		databases have the extension: such a worker exits at once, leaving
 *		its slot, so that eo.relay_status shows the database as disabled,
 *		and the launcher starts it again when the relay is turned on.
 *	  - CREATE EXTENSION (eo.wake_relay() at commit) and the first commit
 *		of a publishing transaction ask for a worker through shared memory
 *		and set the launcher's latch: no restart, no polling.
 *	  - A worker that stops is started again after a short pause while its
 *		database still exists and wants one (after a crash, the postmaster
 *		restarts everything and the launcher scans again).
 *	  - The launcher starts only when recovery has finished, so no relay
 *		runs on a standby; on promotion the postmaster starts it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "eo_processing.h"
#include "relay.h"

/* Pause before starting a worker again after it stopped. */
#define RESTART_DELAY_MS	1000

/* Launcher-local: the handle of each slot's worker. */
static BackgroundWorkerHandle **handles = NULL;

/*
 * eo_relay_register_launcher
 *		Register the launcher; called from _PG_init() while preloading.
 */
void
eo_relay_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "eo_processing");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "eo_relay_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "eo_processing relay launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "eo_processing relay launcher");
	RegisterBackgroundWorker(&worker);
}

/* Databases found by the scan that are still waiting for a free slot. */
static List *pending_dbs = NIL;

/*
 * assign_pending
 *		Give free slots to databases of the startup scan (each gets a worker
 *		that exits at once if the database has no extension, freeing the
 *		slot again), as many as there are free slots.
 */
static void
assign_pending(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	while (pending_dbs != NIL)
	{
		Oid			dboid = linitial_oid(pending_dbs);
		bool		placed = true;

		LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
		if (eo_relay_find_slot(dboid) == NULL)
		{
			RelaySlot  *slot = eo_relay_find_slot(InvalidOid);

			if (slot != NULL)
			{
				memset(slot, 0, sizeof(RelaySlot));
				slot->dboid = dboid;
				slot->pgprocno = -1;
				slot->wanted = true;
				slot->probe = true;
			}
			else
				placed = false;
		}
		LWLockRelease(eo_relay->lock);
		if (!placed)
			break;
		pending_dbs = list_delete_first(pending_dbs);
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * scan_databases
 *		Queue every database that accepts connections for a worker.
 */
static void
scan_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dboids = NIL;
	ListCell   *lc;
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
		{
			/* the list must outlive the transaction */
			MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

			dboids = lappend_oid(dboids, db->oid);
			MemoryContextSwitchTo(oldcxt);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		foreach(lc, dboids)
			pending_dbs = list_append_unique_oid(pending_dbs, lfirst_oid(lc));
		MemoryContextSwitchTo(oldcxt);
	}
	list_free(dboids);
}

/* Does the database still exist? (reads the shared catalog) */
static bool
database_exists(Oid dboid)
{
	bool		exists;

	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	exists = SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dboid));
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return exists;
}

/* Start the worker of slot i (caller does not hold eo_relay->lock). */
static void
start_worker(int i)
{
	RelaySlot  *slot = &eo_relay->slots[i];
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	Oid			dboid = slot->dboid;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "eo_processing");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "eo_relay_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "eo_processing relay for database %u", dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "eo_processing relay");
	memcpy(worker.bgw_extra, &dboid, sizeof(Oid));
	worker.bgw_notify_pid = MyProcPid;

	if (RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		handles[i] = handle;
		LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
		slot->running = true;
		LWLockRelease(eo_relay->lock);
	}
	else
	{
		/* No free background worker slot: try again later. */
		LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
		slot->hold_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10000);
		LWLockRelease(eo_relay->lock);
		ereport(LOG,
				(errmsg("eo_processing relay launcher: could not start a worker for database %u", dboid),
				 errhint("Raise max_worker_processes.")));
	}
}

/* before_shmem_exit callback */
static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	eo_relay->launcher_pid = 0;
	eo_relay->launcher_pgprocno = -1;
	LWLockRelease(eo_relay->lock);
}

/*
 * eo_relay_launcher_main
 *		Entry point of the launcher.
 */
void
eo_relay_launcher_main(Datum main_arg)
{
	bool		scanned = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (eo_relay == NULL)
		proc_exit(1);
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	MemoryContextSwitchTo(AllocSetContextCreate(TopMemoryContext,
												"eo_processing relay launcher",
												ALLOCSET_DEFAULT_SIZES));
	handles = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(BackgroundWorkerHandle *) * eo_relay->nslots);
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	eo_relay->launcher_pid = MyProcPid;
	eo_relay->launcher_pgprocno = MyProc->pgprocno;
	/* Workers of a previous launcher life are gone or unknown to us. */
	for (int i = 0; i < eo_relay->nslots; i++)
		eo_relay->slots[i].running = (eo_relay->slots[i].pid != 0);
	LWLockRelease(eo_relay->lock);
	before_shmem_exit(launcher_detach, (Datum) 0);

	for (;;)
	{
		long		timeout_ms = (long) eo_relay_naptime_secs * 1000;
		TimestampTz now;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* Once per launcher life, even with the relay off (probes). */
		if (!scanned)
		{
			scan_databases();
			scanned = true;
		}
		if (pending_dbs != NIL)
			assign_pending();
		now = GetCurrentTimestamp();

		for (int i = 0; i < eo_relay->nslots; i++)
		{
			RelaySlot  *slot = &eo_relay->slots[i];
			pid_t		pid;
			bool		start = false;
			bool		forget = false;

			LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
			if (!OidIsValid(slot->dboid))
			{
				LWLockRelease(eo_relay->lock);
				continue;
			}
			/* Has a worker we started stopped? */
			if (slot->running && handles[i] != NULL &&
				GetBackgroundWorkerPid(handles[i], &pid) == BGWH_STOPPED)
			{
				slot->running = false;
				slot->pid = 0;
				slot->pgprocno = -1;
				pfree(handles[i]);
				handles[i] = NULL;
				if (slot->wanted && slot->hold_until < now)
					slot->hold_until = TimestampTzPlusMilliseconds(now, RESTART_DELAY_MS);
			}
			if (slot->wanted && !slot->running && (eo_relay_enabled || slot->probe))
			{
				if (slot->hold_until <= now)
					start = true;
				else
					timeout_ms = Min(timeout_ms, (long) ((slot->hold_until - now) / 1000) + 1);
			}
			else if (!slot->wanted && !slot->running)
				forget = true;
			LWLockRelease(eo_relay->lock);

			if (start && !database_exists(slot->dboid))
			{
				start = false;
				forget = true;
			}
			if (forget)
			{
				LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
				if (!slot->running)
				{
					memset(slot, 0, sizeof(RelaySlot));
					slot->pgprocno = -1;
				}
				LWLockRelease(eo_relay->lock);
			}
			if (start)
				start_worker(i);
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout_ms, 1), PG_WAIT_EXTENSION);
	}
}
