/*-------------------------------------------------------------------------
 *
 * database_guard.c
 *	  Keeps the relay out of the way of commands that need a database to
 *	  themselves: DROP DATABASE (with or without FORCE), ALTER DATABASE
 *	  ... RENAME / SET TABLESPACE, and CREATE DATABASE ... TEMPLATE.
 *
 *	  PostgreSQL refuses those while any other session is connected to the
 *	  database, and a relay worker is such a session.  A ProcessUtility
 *	  hook (installed when the library is preloaded, so it is active in
 *	  every backend) asks the database's worker to stop and waits for it
 *	  before the command runs, and holds the launcher off for a while.  If
 *	  the database still exists afterwards, the launcher starts the relay
 *	  again.
 *
 *	  DROP EXTENSION eo_processing warns about the undelivered messages and
 *	  dead deliveries it discards, and lets the database's relay go at
 *	  commit (it would otherwise notice only at its next wake-up).
 *
 *	  The same hook wakes the relay after COMMIT PREPARED: a prepared
 *	  transaction that published commits in another session, where the
 *	  publisher's commit callback does not run.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/utility.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "eo_processing.h"
#include "relay.h"

/* How long to hold the relay off, and to wait for it to stop. */
#define GUARD_HOLD_MS	5000
#define GUARD_WAIT_MS	10000

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/*
 * stop_relay_of
 *		Stop the relay worker of the named database, if one runs, and keep
 *		the launcher from starting it again for GUARD_HOLD_MS.
 */
static void
stop_relay_of(const char *datname)
{
	Oid			dboid;
	RelaySlot  *slot;
	pid_t		pid = 0;
	int			procno = -1;
	TimestampTz deadline;

	if (eo_relay == NULL || datname == NULL)
		return;
	dboid = get_database_oid(datname, true);
	if (!OidIsValid(dboid))
		return;

	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	slot = eo_relay_find_slot(dboid);
	if (slot != NULL)
	{
		slot->hold_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), GUARD_HOLD_MS);
		pid = slot->pid;
		procno = slot->pgprocno;
		if (pid != 0)
			slot->stop_requested = true;	/* the worker exits when it sees
											 * this; it stays wanted */
	}
	LWLockRelease(eo_relay->lock);
	if (slot == NULL || pid == 0)
		return;

	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), GUARD_WAIT_MS);
	for (;;)
	{
		bool		gone;

		LWLockAcquire(eo_relay->lock, LW_SHARED);
		gone = (slot->dboid != dboid || slot->pid != pid);
		LWLockRelease(eo_relay->lock);
		if (gone || GetCurrentTimestamp() >= deadline)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	/*
	 * The launcher starts a new worker after hold_until if the database
	 * still exists (it forgets the slot otherwise).
	 */
	LWLockAcquire(eo_relay->lock, LW_EXCLUSIVE);
	if (slot->dboid == dboid)
		slot->stop_requested = false;
	LWLockRelease(eo_relay->lock);
}

/*
 * warn_undelivered
 *		DROP EXTENSION eo_processing discards the outbox and every delivery
 *		with it.  Before the drop runs, say how many messages are still to
 *		be delivered (not yet routed, or with an unfinished delivery), how
 *		many wait in queue destinations for an acknowledgement (ready or
 *		leased), and how many deliveries are dead, so the loss is never
 *		silent.  Runs in the dropping transaction with its snapshot; reads
 *		nothing when the extension is not installed in this database.
 *		Objects of versions without an outbox (0.1.0) are skipped; those
 *		without queues (before 0.6.0) count none.
 */
static void
warn_undelivered(void)
{
	bool		pushed = false;
	int64		counts[4] = {0, 0, 0, 0};	/* unrouted, unfinished, queued, dead */
	const char *query;
	Oid			nsp;

	if (!OidIsValid(get_extension_oid("eo_processing", true)))
		return;
	nsp = get_namespace_oid(EO_SCHEMA_NAME, true);
	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("delivery", nsp)) ||
		!OidIsValid(get_relname_relid("outbox", nsp)))
		return;

	/*
	 * Since 0.5.0 a message routed to a destination has no row of its own
	 * until it fails: eo.stats counts the log after each cursor too.  Since
	 * 0.6.0 a queue's messages wait in eo.queue_message; eo.stats counts
	 * its dead ones with the dead deliveries.
	 */
	if (OidIsValid(get_relname_relid("queue_message", nsp)))
		query = "SELECT (SELECT count(*) FROM eo.outbox),"
			"       coalesce(sum(pending + in_flight + retrying), 0)::bigint,"
			"       coalesce(sum(coalesce(ready, 0) + coalesce(leased, 0)), 0)::bigint,"
			"       coalesce(sum(dead), 0)::bigint"
			"  FROM eo.stats";
	else if (OidIsValid(get_relname_relid("message_seq", nsp)))
		query = "SELECT (SELECT count(*) FROM eo.outbox),"
			"       (SELECT coalesce(sum(pending + in_flight + retrying), 0)::bigint"
			"          FROM eo.stats),"
			"       0::bigint,"
			"       (SELECT count(*) FROM eo.delivery WHERE state = 'dead')";
	else
		query = "SELECT (SELECT count(*) FROM eo.outbox),"
			"       (SELECT count(*) FROM eo.delivery WHERE state <> 'dead'),"
			"       0::bigint,"
			"       (SELECT count(*) FROM eo.delivery WHERE state = 'dead')";

	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed = true;
	}
	SPI_connect();
	if (SPI_execute(query, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		for (int i = 0; i < 4; i++)
		{
			bool		isnull;

			counts[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, i + 1, &isnull));
		}
	}
	SPI_finish();
	if (pushed)
		PopActiveSnapshot();

	if (counts[0] + counts[1] + counts[2] + counts[3] > 0)
		ereport(WARNING,
				(errmsg("dropping extension eo_processing discards " INT64_FORMAT " undelivered messages and " INT64_FORMAT " dead deliveries",
						counts[0] + counts[1] + counts[2], counts[3]),
				 counts[2] > 0 ?
				 errdetail("Not yet routed: " INT64_FORMAT "; deliveries pending, retrying or in flight: " INT64_FORMAT "; in queues, not yet acknowledged: " INT64_FORMAT ".",
						   counts[0], counts[1], counts[2]) :
				 errdetail("Not yet routed: " INT64_FORMAT "; deliveries pending, retrying or in flight: " INT64_FORMAT ".",
						   counts[0], counts[1]),
				 errhint("To keep them, roll back; let the relay deliver them (see eo.stats) and redrive or inspect the dead deliveries before dropping.")));
}

/* The template of CREATE DATABASE, if one is named. */
static const char *
createdb_template(CreatedbStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		DefElem    *opt = lfirst(lc);

		if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
			return defGetString(opt);
	}
	return NULL;
}

static void
guard_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			stop_relay_of(((DropdbStmt *) parsetree)->dbname);
			break;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				stop_relay_of(((RenameStmt *) parsetree)->subname);
			break;
		case T_AlterDatabaseStmt:
			stop_relay_of(((AlterDatabaseStmt *) parsetree)->dbname);
			break;
		case T_CreatedbStmt:
			stop_relay_of(createdb_template((CreatedbStmt *) parsetree));
			break;
		case T_DropStmt:
			if (((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
			{
				ListCell   *lc;

				foreach(lc, ((DropStmt *) parsetree)->objects)
				{
					if (strcmp(strVal(lfirst(lc)), "eo_processing") == 0)
					{
						warn_undelivered();
						eo_relay_stop_database_at_commit();
					}
				}
			}
			break;
		default:
			break;
	}

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	/* Cheap and harmless when the prepared transaction published nothing. */
	if (IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED)
		eo_relay_wake_database(MyDatabaseId);
}

void
eo_database_guard_install(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = guard_ProcessUtility;
}
