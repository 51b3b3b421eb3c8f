/*-------------------------------------------------------------------------
 *
 * sink_http.c
 *	  The "http" sink: signed webhooks (Standard Webhooks), sent while the
 *	  relay's loop goes on: https:// (and everything while a proxy is set
 *	  in the environment, or eo.http_client = libcurl) with libcurl's multi
 *	  interface, plain http:// with the relay's own client (http_wire.c).
 *	  Both report to the same collect and the same classification.
 *
 *	  This file is the transport only: it starts requests the relay hands
 *	  it, lets libcurl progress when the relay's wait says a socket is
 *	  ready or libcurl's timer is due, and classifies each answer:
 *		2xx					 delivered
 *		410 Gone			 disable the destination (the message waits)
 *		429, 503 + Retry-After  retry after that many seconds
 *		a request that can never be sent (a message header HTTP cannot
 *		carry)				 permanent
 *		anything else		 retry on the destination's schedule
 *	  What follows (the next attempt, dead, the attempt log) is the relay's
 *	  decision.  Requests are built in http_request.c; options are parsed in
 *	  http_options.c.
 *
 *	  libcurl's sockets are registered through its socket and timer
 *	  callbacks and, with the own client's, added to the relay's
 *	  WaitEventSet, so the relay reacts
 *	  to SIGTERM, SIGHUP and commits while requests are on the wire.
 *	  Connections are reused between requests to the same host.
 *
 *	  Memory: a request lives in its own context under http_cxt (not tied
 *	  to any transaction) until the relay releases its send; its header
 *	  list goes with it.  Easy handles are the sink's, not the requests':
 *	  each request borrows one while it is on its way and gives it back
 *	  reset to a short list of idle handles that the next requests reuse
 *	  (at most eo.http_max_concurrency; the surplus is freed), rather than
 *	  have libcurl build and tear down a handle for every request.  The idle
 *	  handles and the multi handle are freed at process exit.  The strings
 *	  of an outcome are allocated in the send's own context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "destination.h"
#include "http.h"
#include "relay.h"
#include "sink.h"

/* The Standard Webhooks retry schedule (after the immediate first attempt). */
#define HTTP_DEFAULT_RETRY_DELAYS "5s, 5min, 30min, 2h, 5h, 10h, 14h, 20h, 24h"
#define HTTP_DEFAULT_TIMEOUT_MS	15000
#define HTTP_DEFAULT_CONCURRENCY 16

#define HTTP_GONE_REASON \
	"the receiver answered 410 Gone; eo.alter_destination() enables it again"

static CURLM *multi = NULL;
static MemoryContext http_cxt = NULL;

/* libcurl's sockets and timer (plain malloc: the callbacks cannot throw). */
static SinkSocket *sockets = NULL;
static uint64 socket_generation = 0;	/* bumped when a socket comes or goes */
static int	nsockets = 0;
static int	socket_capacity = 0;

/* libcurl's sockets and the own client's, as the relay's wait gets them. */
static SinkSocket *all_sockets = NULL;
static int	all_capacity = 0;
static bool timer_set = false;
static bool handles_added = false;	/* libcurl has new requests to start */
static TimestampTz timer_deadline = 0;

/*
 * Easy handles waiting for the next requests (libcurl's handles in a plain
 * malloc'd array, outside PostgreSQL's memory contexts).  Each was reset
 * with curl_easy_reset() when it was given back, so it keeps no option,
 * header list or pointer of its last request; a reset keeps the handle's
 * TLS session cache (a new connection to a host may resume a session).
 * Connections and the DNS cache are the multi handle's, not the handles'.
 */
static CURL **idle_handles = NULL;
static int	nidle = 0;
static int	idle_capacity = 0;

/* libcurl socket callback: remember what to wait for on a socket. */
static int
socket_changed(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;
	uint32		events = 0;

	for (i = 0; i < nsockets; i++)
	{
		if (sockets[i].fd == fd)
			break;
	}
	if (what == CURL_POLL_REMOVE)
	{
		if (i < nsockets)
		{
			sockets[i] = sockets[--nsockets];
			socket_generation++;
		}
		return 0;
	}
	if (i == nsockets)
	{
		if (nsockets == socket_capacity)
		{
			int			cap = Max(16, socket_capacity * 2);
			SinkSocket *grown = realloc(sockets, sizeof(SinkSocket) * cap);

			if (grown == NULL)
				return -1;		/* libcurl fails the transfer */
			sockets = grown;
			socket_capacity = cap;
		}
		sockets[nsockets++].fd = fd;
		socket_generation++;
	}
	if (what & CURL_POLL_IN)
		events |= WL_SOCKET_READABLE;
	if (what & CURL_POLL_OUT)
		events |= WL_SOCKET_WRITEABLE;
	sockets[i].events = events;
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

/* on_proc_exit callback: give back everything libcurl holds. */
static void
http_cleanup(int code, Datum arg)
{
	while (nidle > 0)
		curl_easy_cleanup(idle_handles[--nidle]);
	free(idle_handles);
	idle_handles = NULL;
	idle_capacity = 0;
	if (multi != NULL)
		curl_multi_cleanup(multi);
	multi = NULL;
	free(sockets);
	sockets = NULL;
	nsockets = socket_capacity = 0;
	curl_global_cleanup();
}

/* Set up libcurl the first time a request starts. */
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

/*
 * classify
 *		Fill a finished send's outcome from its request (strings in the
 *		send's context).
 */
static void
classify(SinkSend *send, HttpRequest *req)
{
	MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(send));
	bool		answered = (req->build_error == NULL && req->result == CURLE_OK &&
							req->transport_error == NULL);
	const char *error = eo_http_request_error(req);
	SinkOutcome *out = &send->outcome;

	out->error = error ? pstrdup(error) : NULL;
	out->status = answered ? (int) req->status : -1;
	out->latency_ms = req->latency_us / 1000.0;
	out->response = answered ? pstrdup(req->snippet) : NULL;
	out->retry_after_us = -1;
	if (error == NULL)
		out->result = SINK_DELIVERED;
	else if (answered && req->status == 410)
	{
		out->result = SINK_DISABLE;
		out->disable_reason = HTTP_GONE_REASON;
	}
	else if (req->permanent)
		out->result = SINK_PERMANENT;
	else
	{
		out->result = SINK_RETRY;
		if (answered && (req->status == 429 || req->status == 503) &&
			req->retry_after_secs >= 0)
			out->retry_after_us = (int64) req->retry_after_secs * USECS_PER_SEC;
	}
	send->finished = true;
	MemoryContextSwitchTo(old);
}

/*
 * handle_take
 *		An easy handle for a request, as curl_easy_init() leaves it: an
 *		idle one if there is one, else a new one; NULL if libcurl cannot
 *		make one.
 */
static CURL *
handle_take(void)
{
	if (nidle > 0)
		return idle_handles[--nidle];
	return curl_easy_init();
}

/*
 * handle_give_back
 *		Take back the easy handle of a request whose transfer is over or
 *		abandoned (no longer in the multi handle): reset, it waits for the
 *		next request, unless eo.http_max_concurrency handles already wait
 *		(more may have been in flight, for several destinations); then it
 *		is freed.  Never raises an error.
 */
static void
handle_give_back(CURL *easy)
{
	int			keep = eo_http_max_concurrency;

	/* The setting may have been lowered since: free the surplus. */
	while (nidle > keep)
		curl_easy_cleanup(idle_handles[--nidle]);
	if (nidle == idle_capacity && nidle < keep)
	{
		CURL	  **grown = realloc(idle_handles, sizeof(CURL *) * keep);

		if (grown != NULL)
		{
			idle_handles = grown;
			idle_capacity = keep;
		}
	}
	if (nidle < Min(keep, idle_capacity))
	{
		curl_easy_reset(easy);
		idle_handles[nidle++] = easy;
	}
	else
		curl_easy_cleanup(easy);
}

/*
 * http_start
 *		Build the request of one send, lend it an easy handle and hand it
 *		to libcurl.  A request that cannot be built or started finishes at
 *		once with its error.
 */
static void
http_start(SinkSend *send, const DestinationConfig *dest, const EoMessage *msg)
{
	HttpRequest *req;
	CURL	   *easy;

	http_init();
	req = eo_http_request_build(http_cxt, dest, msg, send->attempt);
	req->send = send;
	send->private = req;
	if (req->build_error == NULL && eo_http_wire_serves(dest))
	{
		/* Unless it failed at once, it comes back through collect. */
		if (eo_http_wire_start(req, dest))
		{
			eo_http_request_collect(req, CURLE_OK);
			classify(send, req);
		}
		return;
	}
	if (req->build_error == NULL)
	{
		easy = handle_take();
		if (easy == NULL)
			req->build_error = "could not create a libcurl handle";
		else if (!eo_http_request_attach(req, dest, easy))
		{
			req->build_error = "out of memory in libcurl";
			handle_give_back(easy);
		}
		else
		{
			if (curl_multi_add_handle(multi, easy) != CURLM_OK)
			{
				req->build_error = "could not start the request in libcurl";
				req->easy = NULL;
				handle_give_back(easy);
			}
		}
	}
	if (req->build_error != NULL)
		classify(send, req);
	else
		handles_added = true;
}

/*
 * http_wait_sockets
 *		libcurl's sockets, as the relay's wait watches them; its timer
 *		lowers the timeout.
 */
static int
http_wait_sockets(const SinkSocket **out, uint64 *generation, long *timeout_ms)
{
	const SinkSocket *wire;
	uint64		wire_gen;
	int			nwire = eo_http_wire_sockets(&wire, &wire_gen, timeout_ms);
	int			total = nsockets + nwire;

	if (timer_set)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		until = timer_deadline <= now ? 0 :
			(long) ((timer_deadline - now + 999) / 1000);

		*timeout_ms = Min(*timeout_ms, until);
	}
	/* Both generations only grow: their sum changes when either does. */
	*generation = socket_generation + wire_gen;
	if (nwire == 0)
	{
		*out = sockets;
		return nsockets;
	}
	if (total > all_capacity)
	{
		SinkSocket *grown = realloc(all_sockets, sizeof(SinkSocket) * Max(16, 2 * total));

		if (grown == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		all_sockets = grown;
		all_capacity = Max(16, 2 * total);
	}
	if (nsockets > 0)
		memcpy(all_sockets, sockets, sizeof(SinkSocket) * nsockets);
	memcpy(all_sockets + nsockets, wire, sizeof(SinkSocket) * nwire);
	*out = all_sockets;
	return total;
}

/* Let libcurl work on the sockets that are ready, and on its timer. */
static void
http_handle_events(WaitEvent *events, int nevents)
{
	int			running;

	for (int i = 0; i < nevents; i++)
	{
		int			flags = 0;

		if (events[i].user_data != (void *) &eo_http_sink)
			continue;
		if (eo_http_wire_handle_event(events[i].fd, events[i].events) || multi == NULL)
			continue;
		if (events[i].events & WL_SOCKET_READABLE)
			flags |= CURL_CSELECT_IN;
		if (events[i].events & WL_SOCKET_WRITEABLE)
			flags |= CURL_CSELECT_OUT;
		(void) curl_multi_socket_action(multi, events[i].fd, flags, &running);
	}
	eo_http_wire_timers();
	if (multi == NULL)
		return;
	if (timer_set && GetCurrentTimestamp() >= timer_deadline)
	{
		timer_set = false;
		(void) curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
}

/* Move the sends whose transfers libcurl has finished to "done". */
static void
http_collect(dlist_head *done)
{
	CURLMsg    *m;
	int			left;
	int			running;
	HttpRequest *wired;

	while ((wired = eo_http_wire_collect()) != NULL)
	{
		if (wired->send == NULL)
			continue;
		eo_http_request_collect(wired, CURLE_OK);
		classify(wired->send, wired);
		dlist_delete(&wired->send->node);
		dlist_push_tail(done, &wired->send->node);
	}
	if (multi == NULL)
		return;
	/*
	 * Requests just added: let libcurl start them (a fast receiver may
	 * answer at once).  Not on every collect: a full pass over libcurl's
	 * transfers is wasted work when nothing was added.
	 */
	if (handles_added)
	{
		handles_added = false;
		(void) curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	while ((m = curl_multi_info_read(multi, &left)) != NULL)
	{
		HttpRequest *req = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &req);
		curl_multi_remove_handle(multi, m->easy_handle);
		if (req == NULL || req->send == NULL)
			continue;
		eo_http_request_collect(req, m->data.result);
		classify(req->send, req);
		dlist_delete(&req->send->node);
		dlist_push_tail(done, &req->send->node);
	}
}

/*
 * http_release
 *		Free a send's request, finished or not: a transfer still on the
 *		wire is abandoned, and its easy handle taken back.
 */
static void
http_release(SinkSend *send)
{
	HttpRequest *req = send->private;

	if (req == NULL)
		return;
	if (req->wire)
		eo_http_wire_abandon(req);
	if (req->easy != NULL)
	{
		if (multi != NULL)
			curl_multi_remove_handle(multi, req->easy);
		handle_give_back(req->easy);
		req->easy = NULL;
	}
	eo_http_request_free(req);
	send->private = NULL;
}

/* Defaults of an http destination's options. */
static void
http_init_options(DestinationConfig *cfg)
{
	HttpOptions *opts = palloc0(sizeof(HttpOptions));

	opts->timeout_ms = HTTP_DEFAULT_TIMEOUT_MS;
	opts->tls_verify = true;
	cfg->sink_options = opts;
}

/* After parsing: the url is required. */
static void
http_check_options(DestinationConfig *cfg)
{
	if (HTTP_OPTIONS(cfg)->url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("destinations of kind \"http\" need the option \"url\"")));
}

const SinkRoutine eo_http_sink = {
	.kind = "http",
	.option_names = "url, headers, signing_secret, timeout_ms, concurrency, "
	"max_attempts, retry_delays, log_attempts and tls_verify",
	.init_options = http_init_options,
	.parse_option = eo_parse_http_option,
	.check_options = http_check_options,
	.may_configure = eo_check_may_configure_http,
	.check_target = eo_check_http_destination_host,
	.default_retry_delays = HTTP_DEFAULT_RETRY_DELAYS,
	.default_concurrency = HTTP_DEFAULT_CONCURRENCY,
	.concurrency_cap = &eo_http_max_concurrency,
	.logs_attempts = true,
	.deliver = NULL,
	.start = http_start,
	.wait_sockets = http_wait_sockets,
	.handle_events = http_handle_events,
	.collect = http_collect,
	.release = http_release,
};
