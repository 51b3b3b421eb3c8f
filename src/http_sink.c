/*-------------------------------------------------------------------------
 *
 * http_sink.c
 *	  The relay's HTTP dispatcher: keeps webhook requests in flight with
 *	  libcurl's multi interface while the relay's loop goes on, and records
 *	  their outcomes.
 *
 *	  A delivery to an http destination goes through three transactions
 *	  and no transaction is open while a request is on the wire:
 *		1. routing (relay_worker.c) inserts it into eo.delivery, pending;
 *		2. an "http step" claims due deliveries, marks them in_flight and
 *		   counts the attempt; the requests start after that commits;
 *		3. a later http step records each outcome: a 2xx deletes the
 *		   delivery; a failure schedules the next attempt (Retry-After for
 *		   429/503) or marks it dead; 410 Gone also disables the
 *		   destination.  Every attempt is logged in eo.http_attempt.
 *	  A crash between 2 and 3 leaves deliveries in_flight; the first step
 *	  of the next worker puts them back to retrying, so they are sent again
 *	  with the same message id (at least once; the receiver deduplicates),
 *	  and logs each interrupted attempt in eo.http_attempt (no status
 *	  code, error EO_HTTP_INTERRUPTED).  The claim of step 2 commits
 *	  asynchronously, like every relay transaction, and the requests start
 *	  without waiting for its WAL flush: a clean stop (pg_ctl stop or
 *	  restart, any mode but immediate) flushes it, but a crash of the
 *	  server can lose the claims of the last few hundred milliseconds
 *	  (up to 3 x wal_writer_delay).  Such an attempt has no row, and the
 *	  request sent again carries the same attempt number.  Flushing each
 *	  claim before its requests closes that window but made the commit ->
 *	  request latency of test/bench/http_bench.sh part 2 some 6 ms worse.
 *
 *	  Concurrency: at most min(concurrency option, eo.http_max_concurrency)
 *	  requests per destination, so a destination with a large backlog uses
 *	  a bounded number of sockets and a slow one cannot hold back the
 *	  others.  Within a key, only the first undelivered message is claimed.
 *
 *	  Waiting: eo_http_wait() replaces the relay's WaitLatch: it waits for
 *	  the latch, postmaster death and every socket libcurl watches at once
 *	  (registered through libcurl's socket and timer callbacks), so the
 *	  worker reacts to SIGTERM, SIGHUP and commits during network I/O.
 *
 *	  Memory: requests live in child contexts of http_cxt (not tied to any
 *	  transaction); libcurl's allocations are freed with each request and
 *	  at process exit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "http.h"
#include "relay.h"
#include "relay_config.h"

/* A socket libcurl asked us to watch. */
typedef struct WatchedSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / _OUT / _INOUT */
} WatchedSocket;

static CURLM *multi = NULL;
static MemoryContext http_cxt = NULL;
static dlist_head starting = DLIST_STATIC_INIT(starting);	/* claimed by the
															 * current step */
static dlist_head in_flight = DLIST_STATIC_INIT(in_flight);
static dlist_head finished = DLIST_STATIC_INIT(finished);	/* outcome not yet
															 * recorded */
static dlist_head recording = DLIST_STATIC_INIT(recording);	/* recorded by the
															 * current step */
static bool in_flight_reset = false;	/* a previous run's in_flight rows */
static TimestampTz next_due = DT_NOEND;	/* earliest retry scheduled by a step */

/* libcurl's sockets and timer (plain malloc: the callbacks cannot throw). */
static WatchedSocket *sockets = NULL;
static int	nsockets = 0;
static int	socket_capacity = 0;
static bool timer_set = false;
static TimestampTz timer_deadline = 0;

static SPIPlanPtr plan_reset = NULL;
static SPIPlanPtr plan_claim = NULL;
static SPIPlanPtr plan_attempts = NULL;
static SPIPlanPtr plan_disable = NULL;

static int	collect_finished(void);

/* The request a list node belongs to. */
static inline HttpRequest *
request_of(dlist_node *node)
{
	/* cppcheck-suppress nullPointer ; offsetof() inside dlist_container() */
	return dlist_container(HttpRequest, node, node);
}

/* libcurl socket callback: remember what to wait for on a socket. */
static int
socket_changed(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < nsockets; i++)
	{
		if (sockets[i].fd == fd)
			break;
	}
	if (what == CURL_POLL_REMOVE)
	{
		if (i < nsockets)
			sockets[i] = sockets[--nsockets];
		return 0;
	}
	if (i == nsockets)
	{
		if (nsockets == socket_capacity)
		{
			int			cap = Max(16, socket_capacity * 2);
			WatchedSocket *grown = realloc(sockets, sizeof(WatchedSocket) * cap);

			if (grown == NULL)
				return -1;		/* libcurl fails the transfer */
			sockets = grown;
			socket_capacity = cap;
		}
		sockets[nsockets++].fd = fd;
	}
	sockets[i].what = what;
	return 0;
}

/* libcurl timer callback: when to call it back without socket activity. */
static int
timer_changed(CURLM *m, long timeout_ms, void *userp)
{
	if (timeout_ms < 0)
		timer_set = false;
	else
	{
		timer_set = true;
		timer_deadline = GetCurrentTimestamp() + (TimestampTz) timeout_ms * 1000;
	}
	return 0;
}

/* Free every request of a list. */
static void
free_requests(dlist_head *list)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, list)
	{
		HttpRequest *req = request_of(it.cur);

		dlist_delete(&req->node);
		if (req->easy != NULL && multi != NULL)
			curl_multi_remove_handle(multi, req->easy);
		eo_http_request_free(req);
	}
}

/* Move every request of "from" to the end of "to". */
static void
move_all(dlist_head *to, dlist_head *from)
{
	while (!dlist_is_empty(from))
		dlist_push_tail(to, dlist_pop_head_node(from));
}

/* on_proc_exit callback: give back everything libcurl holds. */
static void
http_cleanup(int code, Datum arg)
{
	free_requests(&starting);
	free_requests(&in_flight);
	free_requests(&finished);
	free_requests(&recording);
	if (multi != NULL)
		curl_multi_cleanup(multi);
	multi = NULL;
	free(sockets);
	sockets = NULL;
	nsockets = socket_capacity = 0;
	curl_global_cleanup();
}

/* Set up libcurl the first time an http step runs. */
static void
http_init(void)
{
	if (multi != NULL)
		return;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(ERROR, "eo_processing relay: could not initialise libcurl");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "eo_processing relay: could not create a libcurl multi handle");
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_changed);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_changed);
	/* Keep idle connections for reuse, up to what may be in flight. */
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) (4 * eo_http_max_concurrency));
	http_cxt = AllocSetContextCreate(TopMemoryContext, "eo_processing http requests",
									 ALLOCSET_DEFAULT_SIZES);
	on_proc_exit(http_cleanup, (Datum) 0);
}

/* Forget saved plans (after an error they may refer to dropped objects). */
void
eo_http_forget_plans(void)
{
	SPIPlanPtr *plans[] = {&plan_reset, &plan_claim, &plan_attempts, &plan_disable};

	eo_relay_free_plans(plans, lengthof(plans));
}

/* Requests of a destination that are in flight. */
static int
count_in_flight(int32 dest_id)
{
	dlist_iter	it;
	int			n = 0;

	dlist_foreach(it, &in_flight)
	{
		if (request_of(it.cur)->dest_id == dest_id)
			n++;
	}
	return n;
}

static void
run_plan(SPIPlanPtr plan, Datum *values, int expected, const char *what)
{
	if (SPI_execute_plan(plan, values, NULL, false, 0) != expected)
		elog(ERROR, "eo_processing relay: could not %s", what);
}

/*
 * run_planned_now
 *		Run a statement that finds eo.delivery rows by the arrays it is
 *		given, planned for this execution (not a saved generic plan).
 *		eo.delivery swings from empty to a backlog and back: a generic plan
 *		made while it was nearly empty (a hash join over a sequential or
 *		bitmap scan) stays while a backlog fills it, and then reads the
 *		whole table for a handful of rows at every step (400 µs for 16 rows
 *		at 20,000 deliveries).  Planned with the arrays' real lengths and
 *		the table's current size, it is an index lookup per row; planning
 *		costs a few tens of microseconds per step.
 */
static void
run_planned_now(const char *sql, int nargs, Oid *types, Datum *values, int expected,
				const char *what)
{
	if (SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0) != expected)
		elog(ERROR, "eo_processing relay: could not %s", what);
}

/* Arrays of what the outcomes of a step change. */
typedef struct Outcomes
{
	ArrayBuildState *a_time, *a_dest, *a_msg, *a_attempt, *a_status, *a_error,
			   *a_latency, *a_body;	/* eo.http_attempt rows */
	ArrayBuildState *d_dest, *d_msg;	/* delivered */
	ArrayBuildState *f_dest, *f_msg, *f_state, *f_next, *f_error;	/* failed */
	ArrayBuildState *gone;		/* destinations to disable */
	ArrayBuildState *s_dest, *s_count, *s_error;	/* statistics */
	int			n_done,
				n_failed,
				n_gone;
} Outcomes;

#define NEW_ARRAY(type) initArrayResult(type, CurrentMemoryContext, false)
#define ADD(a, d, isnull, type) accumArrayResult(a, d, isnull, type, CurrentMemoryContext)
#define ARR(a) makeArrayResult(a, CurrentMemoryContext)

static void
outcomes_init(Outcomes *o)
{
	o->a_time = NEW_ARRAY(TIMESTAMPTZOID);
	o->a_dest = NEW_ARRAY(INT4OID);
	o->a_msg = NEW_ARRAY(UUIDOID);
	o->a_attempt = NEW_ARRAY(INT4OID);
	o->a_status = NEW_ARRAY(INT4OID);
	o->a_error = NEW_ARRAY(TEXTOID);
	o->a_latency = NEW_ARRAY(FLOAT8OID);
	o->a_body = NEW_ARRAY(TEXTOID);
	o->d_dest = NEW_ARRAY(INT4OID);
	o->d_msg = NEW_ARRAY(UUIDOID);
	o->f_dest = NEW_ARRAY(INT4OID);
	o->f_msg = NEW_ARRAY(UUIDOID);
	o->f_state = NEW_ARRAY(TEXTOID);
	o->f_next = NEW_ARRAY(TIMESTAMPTZOID);
	o->f_error = NEW_ARRAY(TEXTOID);
	o->gone = NEW_ARRAY(INT4OID);
	o->s_dest = NEW_ARRAY(INT4OID);
	o->s_count = NEW_ARRAY(INT8OID);
	o->s_error = NEW_ARRAY(TEXTOID);
	o->n_done = o->n_failed = o->n_gone = 0;
}

/*
 * decide
 *		Add one finished request's outcome to the arrays.  "dest" is the
 *		destination's current configuration (its schedule decides the next
 *		attempt).
 */
static void
decide(Outcomes *o, const HttpRequest *req, const DestinationConfig *dest,
	   TimestampTz now, int64 *delivered, const char **last_error)
{
	const char *error = eo_http_request_error(req);
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	bool		answered = (req->easy != NULL && req->result == CURLE_OK);

	*id = req->msg_id;
	ADD(o->a_time, TimestampTzGetDatum(req->started_at), false, TIMESTAMPTZOID);
	ADD(o->a_dest, Int32GetDatum(req->dest_id), false, INT4OID);
	ADD(o->a_msg, UUIDPGetDatum(id), false, UUIDOID);
	ADD(o->a_attempt, Int32GetDatum(req->attempt), false, INT4OID);
	ADD(o->a_status, Int32GetDatum((int32) req->status), !answered, INT4OID);
	ADD(o->a_error, error ? CStringGetTextDatum(error) : (Datum) 0, error == NULL, TEXTOID);
	ADD(o->a_latency, Float8GetDatum(req->latency_us / 1000.0), false, FLOAT8OID);
	ADD(o->a_body, answered ? CStringGetTextDatum(req->snippet) : (Datum) 0, !answered, TEXTOID);

	if (error == NULL)
	{
		ADD(o->d_dest, Int32GetDatum(req->dest_id), false, INT4OID);
		ADD(o->d_msg, UUIDPGetDatum(id), false, UUIDOID);
		(*delivered)++;
		o->n_done++;
		return;
	}

	*last_error = error;
	ADD(o->f_dest, Int32GetDatum(req->dest_id), false, INT4OID);
	ADD(o->f_msg, UUIDPGetDatum(id), false, UUIDOID);
	if (answered && req->status == 410)
	{
		/* Gone: stop sending; the delivery waits for the destination. */
		ADD(o->gone, Int32GetDatum(req->dest_id), false, INT4OID);
		o->n_gone++;
		ADD(o->f_state, CStringGetTextDatum("retrying"), false, TEXTOID);
		ADD(o->f_next, TimestampTzGetDatum(now), false, TIMESTAMPTZOID);
	}
	else if (req->permanent || req->attempt >= dest->max_attempts)
	{
		ADD(o->f_state, CStringGetTextDatum("dead"), false, TEXTOID);
		ADD(o->f_next, TimestampTzGetDatum(DT_NOEND), false, TIMESTAMPTZOID);
	}
	else
	{
		int64		delay = eo_retry_delay_us(dest, req->attempt);

		if (answered && (req->status == 429 || req->status == 503) &&
			req->retry_after_secs >= 0)
			delay = (int64) req->retry_after_secs * USECS_PER_SEC;
		ADD(o->f_state, CStringGetTextDatum("retrying"), false, TEXTOID);
		ADD(o->f_next, TimestampTzGetDatum(now + delay), false, TIMESTAMPTZOID);
		next_due = Min(next_due, now + delay);
	}
	ADD(o->f_error, CStringGetTextDatum(error), false, TEXTOID);
	o->n_failed++;
}

/*
 * record_outcomes
 *		Write the outcomes of the requests in "recording": attempts, deleted
 *		or rescheduled deliveries, disabled destinations, statistics.
 */
static void
record_outcomes(List *dests)
{
	Outcomes	o;
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	int64		total = 0;
	int			nstats = 0;

	if (dlist_is_empty(&recording))
		return;
	outcomes_init(&o);
	foreach(lc, dests)
	{
		DestinationConfig *dest = lfirst(lc);
		dlist_iter	it;
		int64		delivered = 0;
		const char *last_error = NULL;
		bool		seen = false;

		dlist_foreach(it, &recording)
		{
			HttpRequest *req = request_of(it.cur);

			if (req->dest_id != dest->id)
				continue;		/* a dropped destination's rows went with it */
			decide(&o, req, dest, now, &delivered, &last_error);
			seen = true;
		}
		if (!seen)
			continue;
		ADD(o.s_dest, Int32GetDatum(dest->id), false, INT4OID);
		ADD(o.s_count, Int64GetDatum(delivered), false, INT8OID);
		ADD(o.s_error, last_error ? CStringGetTextDatum(last_error) : (Datum) 0,
			last_error == NULL, TEXTOID);
		total += delivered;
		nstats++;
	}
	if (nstats == 0)
		return;

	{
		Oid			types[8] = {TIMESTAMPTZARRAYOID, INT4ARRAYOID, UUIDARRAYOID, INT4ARRAYOID,
		INT4ARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID};
		Datum		values[8] = {ARR(o.a_time), ARR(o.a_dest), ARR(o.a_msg), ARR(o.a_attempt),
		ARR(o.a_status), ARR(o.a_error), ARR(o.a_latency), ARR(o.a_body)};

		eo_relay_prepare(&plan_attempts,
				"INSERT INTO eo.http_attempt (attempted_at, destination_id, message_id, attempt,"
				"                             status_code, error, latency_ms, response_body)"
				" SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8)",
				8, types);
		run_plan(plan_attempts, values, SPI_OK_INSERT, "record HTTP attempts");
	}
	if (o.n_done > 0)
	{
		Oid			types[2] = {INT4ARRAYOID, UUIDARRAYOID};
		Datum		values[2] = {ARR(o.d_dest), ARR(o.d_msg)};

		run_planned_now("DELETE FROM eo.delivery d USING unnest($1, $2) AS t(dest, msg)"
						" WHERE d.destination_id = t.dest AND d.message_id = t.msg"
						"   AND d.state = 'in_flight'",
						2, types, values, SPI_OK_DELETE, "record HTTP deliveries");
	}
	if (o.n_failed > 0)
	{
		Oid			types[5] = {INT4ARRAYOID, UUIDARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID};
		Datum		values[5] = {ARR(o.f_dest), ARR(o.f_msg), ARR(o.f_state), ARR(o.f_next),
		ARR(o.f_error)};

		run_planned_now("UPDATE eo.delivery d SET state = t.s, next_attempt_at = t.n, last_error = t.e"
						"  FROM unnest($1, $2, $3, $4, $5) AS t(dest, msg, s, n, e)"
						" WHERE d.destination_id = t.dest AND d.message_id = t.msg"
						"   AND d.state = 'in_flight'",
						5, types, values, SPI_OK_UPDATE, "record failed HTTP deliveries");
	}
	if (o.n_gone > 0)
	{
		Oid			types[1] = {INT4ARRAYOID};
		Datum		values[1] = {ARR(o.gone)};

		eo_relay_prepare(&plan_disable,
				"UPDATE eo.destination SET enabled = false,"
				"       disabled_reason = 'the receiver answered 410 Gone; eo.alter_destination() enables it again'"
				" WHERE id = ANY ($1) AND enabled",
				1, types);
		run_plan(plan_disable, values, SPI_OK_UPDATE, "disable a destination");
		if (SPI_processed > 0)
			ereport(LOG,
					(errmsg("eo_processing relay: disabled an http destination that answered 410 Gone")));
	}
	eo_relay_update_stats(ARR(o.s_dest), ARR(o.s_count), ARR(o.s_error), total);
}

/*
 * claim
 *		Mark up to "limit" due deliveries of one destination in_flight
 *		(counting the attempt) and build their requests into "starting".
 *		Only the first undelivered message of a key is due.
 */
static int
claim(const DestinationConfig *dest, int limit)
{
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		values[2] = {Int32GetDatum(dest->id), Int32GetDatum(limit)};
	SPITupleTable *rows;
	uint64		n;

	eo_relay_prepare(&plan_claim,
			"WITH c AS ("
			"  SELECT x.destination_id, x.message_id FROM eo.delivery x"
			"   WHERE x.destination_id = $1"
			"     AND x.state = ANY (ARRAY['pending', 'retrying'])"
			"     AND x.next_attempt_at <= now()"
			"     AND (x.key IS NULL OR NOT EXISTS ("
			"          SELECT 1 FROM eo.delivery e"
			"           WHERE e.destination_id = x.destination_id AND e.key = x.key"
			"             AND e.state <> 'dead' AND e.message_id < x.message_id))"
			"     AND EXISTS (SELECT 1 FROM eo.destination t WHERE t.id = $1 AND t.enabled)"
			"   ORDER BY x.next_attempt_at, x.message_id LIMIT $2"
			"   FOR UPDATE OF x SKIP LOCKED)"
			" UPDATE eo.delivery d SET state = 'in_flight', attempts = d.attempts + 1,"
			"        last_attempt_at = now()"
			"   FROM c, eo.message_log m"
			"  WHERE d.destination_id = c.destination_id AND d.message_id = c.message_id"
			"    AND m.id = d.message_id"
			" RETURNING d.attempts, m.id, m.published_at, m.topic, m.key, m.headers,"
			"           m.payload, m.payload_text",
			2, types);
	run_plan(plan_claim, values, SPI_OK_UPDATE_RETURNING, "claim HTTP deliveries");
	rows = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		EoMessage	msg;
		bool		isnull;
		int			attempt = DatumGetInt32(SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull));
		HttpRequest *req;

		eo_message_from_spi(&msg, rows->vals[i], rows->tupdesc, 2);
		req = eo_http_request_build(http_cxt, dest, &msg, attempt);
		dlist_push_tail(&starting, &req->node);
	}
	return (int) n;
}

/*
 * eo_http_step
 *		The http step of the relay, run in its own transaction with SPI
 *		connected: record finished requests, then claim due deliveries for
 *		every enabled http destination with free slots.  The claimed
 *		requests start in eo_http_step_done() once the transaction has
 *		committed.  Returns the number claimed.
 */
int
eo_http_step(void)
{
	List	   *dests = eo_relay_current_destinations();
	ListCell   *lc;
	int			claimed = 0;
	bool		any_http = false;

	foreach(lc, dests)
	{
		if (((DestinationConfig *) lfirst(lc))->kind == DEST_HTTP)
			any_http = true;
	}
	if (!any_http && dlist_is_empty(&finished) && in_flight_reset)
		return 0;
	http_init();

	if (!in_flight_reset)
	{
		/*
		 * What a previous worker had in flight is sent again.  Its attempt
		 * was counted when it was claimed but its outcome never recorded:
		 * log it in eo.http_attempt as interrupted, with no status code
		 * and, as latency, the time from its start until now (an attempt
		 * that timed out also counts its wait).
		 */
		eo_relay_prepare(&plan_reset,
				"WITH r AS ("
				"  UPDATE eo.delivery d SET state = 'retrying', next_attempt_at = now(),"
				"         last_error = 'the relay stopped while the request was in flight'"
				"    FROM eo.destination t"
				"   WHERE t.id = d.destination_id AND t.kind = 'http' AND d.state = 'in_flight'"
				"  RETURNING d.destination_id, d.message_id, d.attempts, d.last_attempt_at)"
				" INSERT INTO eo.http_attempt (attempted_at, destination_id, message_id, attempt,"
				"                             status_code, error, latency_ms, response_body)"
				" SELECT coalesce(r.last_attempt_at, now()), r.destination_id, r.message_id,"
				"        r.attempts, NULL, '" EO_HTTP_INTERRUPTED "',"
				"        greatest(extract(epoch FROM now() - coalesce(r.last_attempt_at, now())) * 1000, 0),"
				"        NULL"
				"   FROM r",
				0, NULL);
		run_plan(plan_reset, NULL, SPI_OK_INSERT, "reset deliveries left in flight");
		if (SPI_processed > 0)
			ereport(LOG,
					(errmsg("eo_processing relay: " UINT64_FORMAT " webhook requests were interrupted by a stop of the relay; they are sent again",
							SPI_processed)));
	}

	move_all(&recording, &finished);
	record_outcomes(dests);

	foreach(lc, dests)
	{
		DestinationConfig *dest = lfirst(lc);
		int			free_slots;

		if (dest->kind != DEST_HTTP || !dest->enabled)
			continue;
		free_slots = Min(dest->concurrency, eo_http_max_concurrency) - count_in_flight(dest->id);
		if (free_slots > 0)
			claimed += claim(dest, free_slots);
	}
	return claimed;
}

/*
 * eo_http_step_done
 *		After the http step's transaction: if it committed, forget the
 *		recorded requests and start the claimed ones; if it was rolled
 *		back, keep the outcomes for the next step and drop the claimed
 *		requests (their deliveries were never marked in flight).  Requests
 *		that could not be sent, or finished at once, are left in
 *		"finished": eo_http_work_waiting() is then true.
 */
void
eo_http_step_done(bool committed)
{
	dlist_mutable_iter it;
	int			running;

	if (!committed)
	{
		move_all(&finished, &recording);
		free_requests(&starting);
		return;
	}
	free_requests(&recording);
	in_flight_reset = true;
	if (multi == NULL)
		return;
	dlist_foreach_modify(it, &starting)
	{
		HttpRequest *req = request_of(it.cur);

		dlist_delete(&req->node);
		if (req->easy == NULL)
			dlist_push_tail(&finished, &req->node);	/* not sendable */
		else if (curl_multi_add_handle(multi, req->easy) != CURLM_OK)
		{
			req->build_error = "could not start the request in libcurl";
			curl_easy_cleanup(req->easy);
			req->easy = NULL;
			dlist_push_tail(&finished, &req->node);
		}
		else
		{
			req->started_at = GetCurrentTimestamp();
			dlist_push_tail(&in_flight, &req->node);
		}
	}
	(void) curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	/* A fast receiver may have answered already: no socket will say so. */
	(void) collect_finished();
}

/*
 * eo_http_next_due
 *		The earliest retry the steps since the last call scheduled (DT_NOEND
 *		if none), so that the relay wakes up for it.
 */
TimestampTz
eo_http_next_due(void)
{
	TimestampTz due = next_due;

	next_due = DT_NOEND;
	return due;
}

/* Are there outcomes waiting to be recorded? */
bool
eo_http_work_waiting(void)
{
	return !dlist_is_empty(&finished);
}

/* Move transfers libcurl has finished to the "finished" list. */
static int
collect_finished(void)
{
	CURLMsg    *m;
	int			left;
	int			n = 0;

	while ((m = curl_multi_info_read(multi, &left)) != NULL)
	{
		CURL	   *easy = m->easy_handle;
		CURLcode	result = m->data.result;
		HttpRequest *req = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &req);
		curl_multi_remove_handle(multi, easy);
		if (req == NULL)
			continue;
		eo_http_request_collect(req, result);
		dlist_delete(&req->node);
		dlist_push_tail(&finished, &req->node);
		n++;
	}
	return n;
}

/*
 * eo_http_wait
 *		Wait up to timeout_ms for the latch, postmaster death (exits) or
 *		network activity of the requests in flight, and let libcurl do its
 *		work.  Returns how many requests finished.
 */
int
eo_http_wait(long timeout_ms)
{
	WaitEventSet *set;
	WaitEvent  *events;
	int			nevents;
	int			running;
	TimestampTz now;

	if (multi == NULL || (nsockets == 0 && !timer_set))
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout_ms, PG_WAIT_EXTENSION);
		return 0;
	}

	now = GetCurrentTimestamp();
	if (timer_set)
	{
		long		until = timer_deadline <= now ? 0 :
			(long) ((timer_deadline - now + 999) / 1000);

		timeout_ms = Min(timeout_ms, until);
	}

	set = CreateWaitEventSet(CurrentMemoryContext, nsockets + 2);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < nsockets; i++)
	{
		uint32		ev = 0;

		if (sockets[i].what & CURL_POLL_IN)
			ev |= WL_SOCKET_READABLE;
		if (sockets[i].what & CURL_POLL_OUT)
			ev |= WL_SOCKET_WRITEABLE;
		if (ev != 0)
			AddWaitEventToSet(set, ev, sockets[i].fd, NULL, NULL);
	}
	events = palloc(sizeof(WaitEvent) * (nsockets + 2));
	nevents = WaitEventSetWait(set, timeout_ms, events, nsockets + 2, PG_WAIT_EXTENSION);
	FreeWaitEventSet(set);

	for (int i = 0; i < nevents; i++)
	{
		int			flags = 0;

		if (events[i].fd == PGINVALID_SOCKET)
			continue;
		if (events[i].events & WL_SOCKET_READABLE)
			flags |= CURL_CSELECT_IN;
		if (events[i].events & WL_SOCKET_WRITEABLE)
			flags |= CURL_CSELECT_OUT;
		(void) curl_multi_socket_action(multi, events[i].fd, flags, &running);
	}
	pfree(events);
	if (timer_set && GetCurrentTimestamp() >= timer_deadline)
	{
		timer_set = false;
		(void) curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	return collect_finished();
}
