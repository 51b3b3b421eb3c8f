/*-------------------------------------------------------------------------
 *
 * relay.h
 *	  Shared state of the relay: one launcher per server, one worker per
 *	  database that has the extension, and the slots in shared memory that
 *	  connect them with the backends that publish.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_RELAY_H
#define EO_RELAY_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "storage/lwlock.h"
#include "utils/guc.h"

#include "outbox.h"

#define EO_RELAY_ERROR_LEN	256

/* What a worker slot's worker is doing (shown in eo.relay_status). */
typedef enum RelayState
{
	RELAY_STARTING = 0,
	RELAY_IDLE,
	RELAY_ROUTING,
	RELAY_RETRYING,
	RELAY_HOUSEKEEPING,
	RELAY_SENDING,
	RELAY_BACKING_OFF
} RelayState;

/*
 * One database's relay.  A slot is in use when dboid is valid.  "wanted"
 * says the launcher should keep a worker running for the database; it is
 * cleared when the worker finds the extension gone or the database is
 * about to be dropped.  Everything here is plain data: no pointers, no
 * file descriptors (a worker's latch is found through its pgprocno).
 */
typedef struct RelaySlot
{
	Oid			dboid;
	bool		wanted;
	bool		running;		/* a worker was started for this slot */
	bool		retry_requested;	/* eo.wake_relay(), eo.relay_run(): look
									 * at deliveries */
	bool		probe;			/* found by the launcher's scan: start a
								 * worker even while eo.relay_enabled is
								 * off, to learn whether the database has
								 * the extension (it then exits) */
	bool		stop_requested; /* database_guard.c: exit now, but stay
								 * wanted (the launcher restarts it later) */
	uint32		config_generation;	/* bumped when destinations or
									 * subscriptions change */
	pid_t		pid;			/* worker's pid once it runs, else 0 */
	int			pgprocno;		/* worker's PGPROC number, or -1 */
	RelayState	state;
	TimestampTz started_at;
	TimestampTz last_wakeup;
	TimestampTz hold_until;		/* launcher waits before restarting */
	TimestampTz timer_due;		/* a sink timer falls due (eo.read() and
								 * eo.nack() lower it; the worker takes it
								 * in its retry step); 0 at first: look */
	uint64		delivered;
	TimestampTz last_error_at;
	char		last_error[EO_RELAY_ERROR_LEN];
} RelaySlot;

typedef struct RelayShared
{
	LWLock	   *lock;			/* protects everything below */
	pid_t		launcher_pid;
	int			launcher_pgprocno;
	int			nslots;
	RelaySlot	slots[FLEXIBLE_ARRAY_MEMBER];
} RelayShared;

/* relay_shmem.c */
extern RelayShared *eo_relay;
extern bool eo_preloaded;
extern void eo_relay_shmem_request(void);
extern void eo_relay_shmem_startup(void);
extern RelaySlot *eo_relay_find_slot(Oid dboid);
extern void eo_relay_request(Oid dboid);
extern void eo_relay_wake_database(Oid dboid);
extern void eo_relay_wake_launcher(void);
extern void eo_relay_release_database(Oid dboid);
extern void eo_relay_config_changed(Oid dboid);
extern void eo_relay_stop_database_at_commit(void);
extern void eo_relay_wake_at_commit(void);
extern void eo_relay_timer_at(TimestampTz when);
extern bool eo_relay_take_timer(RelaySlot *slot, TimestampTz now);

/* relay GUCs (eo_processing.c) */
extern bool eo_relay_enabled;
extern int	eo_relay_batch_size;
extern int	eo_relay_naptime_secs;
extern int	eo_outbox_retention_secs;
extern int	eo_default_max_attempts;
extern char *eo_default_retry_delays;
extern char *eo_http_allowed_hosts;
extern bool eo_http_allow_link_local;
extern int	eo_http_max_concurrency;

/* eo.http_client: who sends plain http:// requests. */
typedef enum EoHttpClient
{
	EO_HTTP_CLIENT_BUILTIN,		/* the relay's own (http_wire.c) */
	EO_HTTP_CLIENT_LIBCURL
} EoHttpClient;
extern int	eo_http_client;
extern int	eo_key_retention_secs;

/* relay_launcher.c / relay_worker.c */
extern void eo_relay_register_launcher(void);
extern PGDLLEXPORT void eo_relay_launcher_main(Datum main_arg);
extern PGDLLEXPORT void eo_relay_worker_main(Datum main_arg);
extern SPIPlanPtr eo_relay_prepare(SPIPlanPtr *plan, const char *sql, int nargs,
								   Oid *argtypes);
extern void eo_relay_free_plans(SPIPlanPtr **plans, int nplans);
extern void eo_message_from_spi(EoMessage *msg, HeapTuple tup, TupleDesc desc, int first);
extern void eo_message_read_spi(EoMessage *msg, HeapTuple tup, TupleDesc desc, int first,
								bool copy);

/* database_guard.c */
extern void eo_database_guard_install(void);

#endif							/* EO_RELAY_H */
