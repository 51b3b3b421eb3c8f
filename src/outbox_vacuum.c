/*-------------------------------------------------------------------------
 *
 * outbox_vacuum.c
 *	  The relay vacuums eo.outbox itself while it works off a backlog.
 *
 *	  Routing deletes the messages it moves to the log from the head of
 *	  eo.outbox, and the next claim reads the outbox in id order through
 *	  its primary key: it walks every index entry of the rows deleted
 *	  since the last VACUUM before it reaches a live row.  Autovacuum looks
 *	  at a database once a minute at most (autovacuum_naptime) and waits
 *	  for a fifth of the table to be dead, so during a drain of a large
 *	  backlog, or under sustained publishing, each claim walked a longer
 *	  dead prefix than the one before.  The relay knows how many rows it
 *	  deleted: after every OUTBOX_VACUUM_EVERY of them, while it is
 *	  working off a backlog (its last routing step took a full batch), it
 *	  runs a plain VACUUM of eo.outbox (the same one autovacuum would run),
 *	  which removes those entries.  Not at a steady trickle of messages:
 *	  there few dead entries pile up between autovacuums, and a VACUUM,
 *	  which reads the whole index (large for a while after a backlog),
 *	  would hold routing up for as long as it takes.
 *
 *	  The VACUUM skips the table if a lock on it is not free at once (it
 *	  never waits behind a session), never truncates the table (that would
 *	  need a lock that stops publishers), and always cleans the index (the
 *	  automatic bypass of index cleanup when few pages have dead rows would
 *	  leave exactly the entries the claim walks).  It removes only what
 *	  every snapshot has stopped seeing: while a long transaction is open,
 *	  it can remove nothing, as autovacuum could not either.
 *
 *	  Call eo_outbox_vacuum() outside any transaction: VACUUM runs in
 *	  transactions of its own.  Errors are caught and returned; the relay
 *	  logs them like the errors of its steps.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/vacuum.h"
#include "nodes/makefuncs.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "message_log.h"

/* Rows routed (deleted from eo.outbox) between two vacuums of it. */
#define OUTBOX_VACUUM_EVERY 10000

static int64 routed_since_vacuum = 0;

/* Count rows the relay deleted from eo.outbox (committed). */
void
eo_outbox_note_routed(int n)
{
	routed_since_vacuum += n;
}

/* Whether enough rows were deleted since the last vacuum to run one. */
bool
eo_outbox_vacuum_due(void)
{
	return routed_since_vacuum >= OUTBOX_VACUUM_EVERY;
}

/*
 * eo_outbox_vacuum
 *		VACUUM eo.outbox, outside any transaction (see the file's header).
 *		Returns NULL, or the error that stopped it (allocated in the
 *		caller's context; FreeErrorData() it).  The count starts again either
 *		way, so that a failing vacuum is not retried after every batch.
 */
ErrorData *
eo_outbox_vacuum(void)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext portal;
	ErrorData  *volatile error = NULL;

	Assert(!IsTransactionState());
	routed_since_vacuum = 0;

	/*
	 * vacuum() keeps its working memory under PortalContext, which a
	 * background worker has not got; an error leaves it behind, so the
	 * context is ours to delete.
	 */
	portal = AllocSetContextCreate(TopMemoryContext, "eo_processing outbox vacuum",
								   ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		Oid			relid;

		PortalContext = portal;
		StartTransactionCommand();
		relid = eo_relation_oid("outbox");
		if (OidIsValid(relid))
		{
			VacuumParams params;

			memset(&params, 0, sizeof(params));
			params.options = VACOPT_VACUUM | VACOPT_SKIP_LOCKED | VACOPT_PROCESS_TOAST;
			params.freeze_min_age = -1;
			params.freeze_table_age = -1;
			params.multixact_freeze_min_age = -1;
			params.multixact_freeze_table_age = -1;
			params.is_wraparound = false;
			params.log_min_duration = -1;
			params.index_cleanup = VACOPTVALUE_ENABLED;
			params.truncate = VACOPTVALUE_DISABLED;
			params.nworkers = -1;
			vacuum(list_make1(makeVacuumRelation(NULL, relid, NIL)), &params, NULL, true);
		}
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();

	PortalContext = NULL;
	MemoryContextDelete(portal);
	MemoryContextSwitchTo(caller);
	return error;
}
