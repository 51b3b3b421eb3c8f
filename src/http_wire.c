/*-------------------------------------------------------------------------
 *
 * http_wire.c
 *	  The relay's own HTTP/1.1 client for plain http:// webhooks: keep-alive
 *	  connections, one request at a time on each, driven by the relay's
 *	  wait like the libcurl transfers of sink_http.c.
 *
 *	  Why not libcurl here: measured in the same run against the same
 *	  nginx, libcurl's multi interface spent about 30 us of CPU per request
 *	  (its per-transfer state machine, header generation, a liveness poll
 *	  of every reused connection), a client that writes the request and
 *	  reads the answer about 11 us; the relay drains webhooks on one core,
 *	  so this is most of its cost per message.  libcurl still sends every
 *	  https:// request, every request when a proxy is configured in the
 *	  server's environment, and all of them when eo.http_client = libcurl.
 *
 *	  What it does, and nothing more: resolve the host (getaddrinfo_a, so a
 *	  slow DNS server never stops the relay's loop), connect to its
 *	  addresses in turn (non-blocking, each checked by http_address.c
 *	  before a packet is sent to it), write the request in one send, read
 *	  the answer with the strict parser of http_response.c, and keep the
 *	  connection for the next request to the same host and port only when
 *	  the answer's end was known exactly.  No pipelining: a request is
 *	  written only on a connection with nothing outstanding, and bytes that
 *	  arrive on an idle connection close it.  A request on a reused
 *	  connection that the receiver closed before answering any byte (it
 *	  timed the connection out as the request left) is sent once more on a
 *	  new connection, as libcurl does; the receiver deduplicates by
 *	  webhook-id.  Timeouts: the destination's timeout_ms for the whole
 *	  request, and at most 10 s of it for resolving and connecting.
 *
 *	  Memory: connections live in wire_cxt (under TopMemoryContext) for the
 *	  process's lifetime; a request's buffers are in the request's own
 *	  context (http_request.c).  Nothing here raises an error on the
 *	  network's account: every failure becomes the request's
 *	  transport_error.  Called only from the relay's main loop (the
 *	  resolver's threads are glibc's and run no code of ours).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "destination.h"
#include "http.h"
#include "relay.h"

/* An idle connection older than this is closed rather than reused. */
#define WIRE_IDLE_MAX_US		(118 * USECS_PER_SEC)
/* Resolving and connecting take at most this much of timeout_ms. */
#define WIRE_CONNECT_MAX_MS		10000
/* How often a pending name resolution is looked at. */
#define WIRE_RESOLVE_POLL_MS	2

typedef enum WireState
{
	WIRE_RESOLVING,				/* waiting for getaddrinfo_a */
	WIRE_CONNECTING,			/* connect() in progress on fd */
	WIRE_SENDING,				/* part of the request written */
	WIRE_RECEIVING,				/* request written, reading the answer */
	WIRE_IDLE					/* kept for the next request */
} WireState;

typedef struct WireConn
{
	bool		used;			/* the slot holds a connection */
	WireState	state;
	char	   *host;			/* to resolve (no brackets), wire_cxt */
	int			port;
	char	   *origin;			/* "host:port", the reuse key, wire_cxt */
	pgsocket	fd;				/* PGINVALID_SOCKET while resolving */
	struct gaicb *gai;			/* pending resolution (malloc'd) */
	struct addrinfo *addrs;		/* resolved addresses */
	struct addrinfo *next_addr; /* the next one to try */
	char		peer[64];		/* the address connected to */
	int			served;			/* answers read on this connection */
	TimestampTz idle_since;
	HttpRequest *req;			/* the request it carries, or NULL */
} WireConn;

/* A resolution that could not be cancelled: freed once glibc is done. */
typedef struct OrphanLookup
{
	struct gaicb *gai;
	struct OrphanLookup *next;
} OrphanLookup;

static MemoryContext wire_cxt = NULL;
static WireConn **conns = NULL; /* never moved: requests point to them */
static int	nconns = 0;			/* connections allocated, used or not */
static SinkSocket *wire_sockets = NULL;
static uint64 wire_generation = 0;
static dlist_head finished = DLIST_STATIC_INIT(finished);
static OrphanLookup *orphans = NULL;
static bool proxy_configured = false;

static void conn_close(WireConn *c);
static void conn_try_next_address(WireConn *c);
static void request_restart(HttpRequest *req, WireConn *c);
static void conn_fail(WireConn *c, const char *fmt,...) pg_attribute_printf(2, 3);

/* on_proc_exit callback: close every connection. */
static void
wire_cleanup(int code, Datum arg)
{
	for (int i = 0; i < nconns; i++)
	{
		if (conns[i]->used && conns[i]->fd != PGINVALID_SOCKET)
			close(conns[i]->fd);
	}
}

/* Set up the client the first time a request uses it. */
static void
wire_init(void)
{
	const char *vars[] = {"http_proxy", "all_proxy", "ALL_PROXY"};

	if (wire_cxt != NULL)
		return;
	wire_cxt = AllocSetContextCreate(TopMemoryContext, "eo_processing http client",
									 ALLOCSET_SMALL_SIZES);
	for (int i = 0; i < lengthof(vars); i++)
	{
		const char *v = getenv(vars[i]);

		if (v != NULL && v[0] != '\0')
			proxy_configured = true;
	}
	on_proc_exit(wire_cleanup, (Datum) 0);
}

/*
 * eo_http_wire_serves
 *		Whether a request to this destination goes through this client:
 *		plain http://, eo.http_client = builtin and no proxy in the
 *		server's environment (libcurl knows how to use one).
 */
bool
eo_http_wire_serves(const DestinationConfig *dest)
{
	wire_init();
	return eo_http_client == EO_HTTP_CLIENT_BUILTIN && !proxy_configured &&
		HTTP_OPTIONS(dest)->wire_host != NULL;
}

/* The request is over (answered or failed): hand it to collect. */
static void
request_finish(HttpRequest *req)
{
	req->latency_us = GetCurrentTimestamp() - req->started_at;
	req->wire_conn = NULL;
	dlist_push_tail(&finished, &req->wire_node);
}

/*
 * conn_slot
 *		A free connection struct: one closed before, or a new one.  The
 *		structs are never moved or freed (requests point to them); the
 *		array of pointers grows by 16.
 */
static WireConn *
conn_slot(void)
{
	for (int i = 0; i < nconns; i++)
	{
		if (!conns[i]->used)
			return conns[i];
	}
	if (nconns % 16 == 0)
	{
		conns = conns == NULL ?
			MemoryContextAlloc(wire_cxt, sizeof(WireConn *) * 16) :
			repalloc(conns, sizeof(WireConn *) * (nconns + 16));
		wire_sockets = wire_sockets == NULL ?
			MemoryContextAlloc(wire_cxt, sizeof(SinkSocket) * 16) :
			repalloc(wire_sockets, sizeof(SinkSocket) * (nconns + 16));
	}
	conns[nconns] = MemoryContextAllocZero(wire_cxt, sizeof(WireConn));
	return conns[nconns++];
}

/* Free a resolution request that glibc does not hold (any more). */
static void
lookup_free(struct gaicb *gai)
{
	if (gai->ar_result != NULL)
		freeaddrinfo(gai->ar_result);
	free((void *) gai->ar_name);
	free((void *) gai->ar_service);
	free((void *) gai->ar_request);
	free(gai);
}

/*
 * Give up a resolution that may still be running: cancel it, or, if glibc
 * is working on it, keep it until it has finished (orphans_reap).
 */
static void
lookup_release(struct gaicb *gai)
{
	if (gai_cancel(gai) == EAI_NOTCANCELED)
	{
		OrphanLookup *o = MemoryContextAlloc(wire_cxt, sizeof(OrphanLookup));

		o->gai = gai;
		o->next = orphans;
		orphans = o;
		return;
	}
	lookup_free(gai);
}

/* Free the orphaned resolutions that have finished since. */
static void
orphans_reap(void)
{
	OrphanLookup **p = &orphans;

	while (*p != NULL)
	{
		OrphanLookup *o = *p;

		if (gai_error(o->gai) == EAI_INPROGRESS)
		{
			p = &o->next;
			continue;
		}
		*p = o->next;
		lookup_free(o->gai);
		pfree(o);
	}
}

/* Close a connection and free its slot; its request is not touched. */
static void
conn_close(WireConn *c)
{
	if (c->fd != PGINVALID_SOCKET)
	{
		close(c->fd);
		c->fd = PGINVALID_SOCKET;
		wire_generation++;
	}
	if (c->gai != NULL)
		lookup_release(c->gai);
	c->gai = NULL;
	if (c->addrs != NULL)
		freeaddrinfo(c->addrs);
	c->addrs = c->next_addr = NULL;
	if (c->req != NULL)
		c->req->wire_conn = NULL;
	c->req = NULL;
	pfree(c->host);
	pfree(c->origin);
	c->used = false;
}

/* Close the connection of a request and fail the request with a text. */
static void
conn_fail(WireConn *c, const char *fmt,...)
{
	HttpRequest *req = c->req;
	va_list		args;

	/* Formatted first: the arguments may point into c. */
	if (req != NULL)
	{
		va_start(args, fmt);
		vsnprintf(req->errbuf, sizeof(req->errbuf), fmt, args);
		va_end(args);
		req->transport_error = req->errbuf;
	}
	conn_close(c);
	if (req != NULL)
		request_finish(req);
}

/* Start resolving the connection's host. */
static void
conn_resolve(WireConn *c)
{
	struct gaicb *gai = calloc(1, sizeof(struct gaicb));
	struct addrinfo *hints = calloc(1, sizeof(struct addrinfo));
	char		port[16];
	unsigned char probe[sizeof(struct in6_addr)];
	sigset_t	all;
	sigset_t	old;
	int			rc;

	snprintf(port, sizeof(port), "%d", c->port);
	if (gai == NULL || hints == NULL ||
		(gai->ar_name = strdup(c->host)) == NULL ||
		(gai->ar_service = strdup(port)) == NULL)
	{
		if (gai != NULL)
		{
			free((void *) gai->ar_name);
			free(gai);
		}
		free(hints);
		conn_fail(c, "%s", "out of memory");
		return;
	}
	hints->ai_family = AF_UNSPEC;
	hints->ai_socktype = SOCK_STREAM;
	hints->ai_protocol = IPPROTO_TCP;
	hints->ai_flags = AI_NUMERICSERV;
	gai->ar_request = hints;
	c->gai = gai;
	c->state = WIRE_RESOLVING;

	/* A literal address resolves at once, without a thread. */
	if (inet_pton(AF_INET, c->host, probe) == 1 || inet_pton(AF_INET6, c->host, probe) == 1)
	{
		hints->ai_flags |= AI_NUMERICHOST;
		rc = getaddrinfo(gai->ar_name, gai->ar_service, hints, &gai->ar_result);
		c->addrs = gai->ar_result;
		gai->ar_result = NULL;
		lookup_free(gai);
		c->gai = NULL;
		if (rc != 0)
			conn_fail(c, "could not resolve host %s: %s", c->host, gai_strerror(rc));
		else
		{
			c->next_addr = c->addrs;
			conn_try_next_address(c);
		}
		return;
	}

	/* glibc's resolver threads must not take the relay's signals. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = getaddrinfo_a(GAI_NOWAIT, &c->gai, 1, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
	{
		lookup_free(c->gai);
		c->gai = NULL;
		conn_fail(c, "could not resolve host %s: %s", c->host, gai_strerror(rc));
	}
}

/* A resolution has finished: connect, or fail. */
static void
conn_resolved(WireConn *c)
{
	int			rc = gai_error(c->gai);

	if (rc == EAI_INPROGRESS)
		return;
	if (rc != 0)
	{
		lookup_free(c->gai);
		c->gai = NULL;
		conn_fail(c, "could not resolve host %s: %s", c->host, gai_strerror(rc));
		return;
	}
	c->addrs = c->gai->ar_result;
	c->gai->ar_result = NULL;
	lookup_free(c->gai);
	c->gai = NULL;
	c->next_addr = c->addrs;
	conn_try_next_address(c);
}

/*
 * conn_try_next_address
 *		Open a non-blocking connection to the next resolved address that
 *		http_address.c allows; fail the request when none is left (with
 *		the refusal, if every address was refused).
 */
static void
conn_try_next_address(WireConn *c)
{
	HttpRequest *req = c->req;
	int			last_errno = 0;

	if (c->fd != PGINVALID_SOCKET)
	{
		close(c->fd);
		c->fd = PGINVALID_SOCKET;
		wire_generation++;
	}
	while (c->next_addr != NULL)
	{
		struct addrinfo *ai = c->next_addr;
		const char *why;
		int			one = 1;
		pgsocket	fd;

		c->next_addr = ai->ai_next;
		why = eo_http_sockaddr_refused(ai->ai_addr, c->peer, sizeof(c->peer));
		if (why != NULL)
		{
			if (req != NULL && req->refused_why == NULL)
			{
				req->refused_why = why;
				strlcpy(req->refused_addr, c->peer, sizeof(req->refused_addr));
			}
			continue;
		}
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
		{
			last_errno = errno;
			continue;
		}
		(void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		(void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)
		{
			/* The address, checked again before each reuse (conn_take). */
			if (getnameinfo(ai->ai_addr, ai->ai_addrlen, c->peer, sizeof(c->peer),
							NULL, 0, NI_NUMERICHOST) != 0)
				c->peer[0] = '\0';
			c->fd = fd;
			c->state = WIRE_CONNECTING;
			wire_generation++;
			return;
		}
		last_errno = errno;
		close(fd);
	}
	if (req != NULL && req->refused_why != NULL && last_errno == 0)
	{
		req->transport_error = "refused";	/* eo_http_request_error() words it */
		conn_close(c);
		request_finish(req);
		return;
	}
	if (req != NULL)
		req->refused_why = NULL;
	conn_fail(c, "could not connect to %s: %s", c->origin,
			  last_errno ? strerror(last_errno) : "no address");
}

/* Write what is left of the request; then read the answer. */
static void
conn_send(WireConn *c)
{
	HttpRequest *req = c->req;

	while (req->out_sent < req->out_len)
	{
		ssize_t		n = send(c->fd, req->out + req->out_sent, req->out_len - req->out_sent,
							 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		{
			c->state = WIRE_SENDING;
			return;
		}
		if (n < 0)
		{
			int			e = errno;

			if (c->served > 0 && !req->wire_retried && req->out_sent == 0)
			{
				/* A reused connection the receiver had closed: once more. */
				request_restart(req, c);
				return;
			}
			conn_fail(c, "could not send the request: %s", strerror(e));
			return;
		}
		req->out_sent += n;
	}
	c->state = WIRE_RECEIVING;
}

/* The answer is complete: keep the connection or close it. */
static void
conn_answered(WireConn *c, bool extra_bytes)
{
	HttpRequest *req = c->req;

	req->status = req->resp.status;
	req->retry_after_secs = req->resp.retry_after_secs;
	memcpy(req->snippet, req->resp.snippet, req->resp.snippet_len);
	req->snippet_len = req->resp.snippet_len;
	c->req = NULL;
	c->served++;
	if (req->resp.close || extra_bytes)
		conn_close(c);
	else
	{
		c->state = WIRE_IDLE;
		c->idle_since = GetCurrentTimestamp();
	}
	request_finish(req);
}

/* Read what the receiver sent. */
static void
conn_receive(WireConn *c)
{
	HttpRequest *req = c->req;
	char		buf[8192];

	for (;;)
	{
		ssize_t		n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
		const char *error;
		int			used;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0)
		{
			int			e = (n < 0) ? errno : 0;
			bool		nothing = (req->resp.part == RESP_STATUS_LINE &&
								   req->resp.header_bytes == 0 && req->resp.line_len == 0);

			if (nothing && c->served > 0 && !req->wire_retried)
			{
				/* A reused connection the receiver had closed: once more. */
				request_restart(req, c);
				return;
			}
			if (n == 0 && (error = eo_http_response_at_eof(&req->resp)) == NULL)
			{
				req->resp.close = true;
				conn_answered(c, false);
				return;
			}
			if (n == 0)
				conn_fail(c, "%s", error);
			else
				conn_fail(c, "could not read the response: %s", strerror(e));
			return;
		}
		used = eo_http_response_feed(&req->resp, buf, (int) n, &error);
		if (used < 0)
		{
			conn_fail(c, "%s", error);
			return;
		}
		if (req->resp.part == RESP_DONE)
		{
			conn_answered(c, used < n);
			return;
		}
	}
}

/*
 * Bytes or an end on an idle connection: it cannot be reused.  (An event
 * with nothing to read is one the wait reported for an earlier connection
 * on the same descriptor, closed meanwhile: nothing to do.)
 */
static void
conn_idle_event(WireConn *c)
{
	char		byte;
	ssize_t		n = recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	conn_close(c);
}

/* A connection attempt has finished: send, or try the next address. */
static void
conn_connected(WireConn *c)
{
	int			err = 0;
	socklen_t	len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err == EINPROGRESS || err == EALREADY)
		return;
	if (err == 0)
	{
		struct sockaddr_storage peer;
		socklen_t	plen = sizeof(peer);

		/* Not connected yet (an event for an earlier descriptor). */
		if (getpeername(c->fd, (struct sockaddr *) &peer, &plen) < 0 && errno == ENOTCONN)
			return;
	}
	if (err != 0)
	{
		if (c->next_addr != NULL)
		{
			conn_try_next_address(c);
			return;
		}
		c->req->refused_why = NULL;
		conn_fail(c, "could not connect to %s: %s", c->origin, strerror(err));
		return;
	}
	conn_send(c);
}

/*
 * conn_take
 *		A connection for a request to "origin": an idle one (not too old,
 *		its address still allowed), or a new one.  Returns NULL if the
 *		request failed on the way (its address is now refused).
 */
static WireConn *
conn_take(HttpRequest *req, const char *host, int port, const char *origin, bool fresh)
{
	TimestampTz now = GetCurrentTimestamp();
	WireConn   *c;

	for (int i = 0; !fresh && i < nconns; i++)
	{
		c = conns[i];
		if (!c->used || c->state != WIRE_IDLE || strcmp(c->origin, origin) != 0)
			continue;
		if (now - c->idle_since > WIRE_IDLE_MAX_US)
		{
			conn_close(c);
			continue;
		}
		/* Opened while eo.http_allow_link_local was on, say. */
		{
			const char *why = eo_http_ip_text_refused(c->peer);

			if (why != NULL)
			{
				req->refused_why = why;
				strlcpy(req->refused_addr, c->peer, sizeof(req->refused_addr));
				conn_close(c);
				req->transport_error = "refused";
				request_finish(req);
				return NULL;
			}
		}
		return c;
	}
	c = conn_slot();
	c->used = true;
	c->fd = PGINVALID_SOCKET;
	c->host = MemoryContextStrdup(wire_cxt, host);
	c->port = port;
	c->origin = MemoryContextStrdup(wire_cxt, origin);
	c->state = WIRE_RESOLVING;
	return c;
}

/* Close idle connections beyond what may be useful. */
static void
idle_trim(void)
{
	int			keep = 4 * eo_http_max_concurrency;
	int			idle = 0;

	for (int i = 0; i < nconns; i++)
		idle += (conns[i]->used && conns[i]->state == WIRE_IDLE);
	for (int i = 0; i < nconns && idle > keep; i++)
	{
		if (conns[i]->used && conns[i]->state == WIRE_IDLE)
		{
			conn_close(conns[i]);
			idle--;
		}
	}
}

/* Put a request on connection c and get it going. */
static void
request_launch(HttpRequest *req, WireConn *c)
{
	c->req = req;
	req->wire_conn = c;
	req->out_sent = 0;
	eo_http_response_init(&req->resp);
	if (c->state == WIRE_IDLE)
		conn_send(c);
	else
		conn_resolve(c);
}

/*
 * eo_http_wire_start
 *		Send a built request (no build_error) through this client.  Returns
 *		true if it failed at once (a refused literal address, say): its
 *		error is set and it is not handed to eo_http_wire_collect().
 *		Otherwise it comes back from eo_http_wire_collect() when it is
 *		over.
 */
bool
eo_http_wire_start(HttpRequest *req, const DestinationConfig *dest)
{
	const HttpOptions *opts = HTTP_OPTIONS(dest);
	WireConn   *c;

	wire_init();
	req->wire = true;
	req->timeout_ms = opts->timeout_ms;
	req->deadline = req->started_at + (TimestampTz) opts->timeout_ms * 1000;
	req->connect_deadline = req->started_at +
		(TimestampTz) Min(opts->timeout_ms, WIRE_CONNECT_MAX_MS) * 1000;
	eo_http_request_wire_bytes(req, dest);
	idle_trim();
	c = conn_take(req, opts->wire_host, opts->port, opts->wire_origin, false);
	if (c != NULL)
		request_launch(req, c);
	if (req->wire_node.next == NULL)
		return false;
	dlist_delete(&req->wire_node);
	req->wire_node.next = req->wire_node.prev = NULL;
	return true;
}

/*
 * request_restart
 *		The receiver closed a reused connection before answering any byte
 *		of the request: close it and send the request once more on a new
 *		connection.
 */
static void
request_restart(HttpRequest *req, WireConn *c)
{
	WireConn   *fresh = conn_take(req, c->host, c->port, c->origin, true);

	c->req = NULL;
	conn_close(c);
	req->wire_retried = true;
	request_launch(req, fresh);
}

/*
 * eo_http_wire_abandon
 *		The relay gives up a request still on its way (a stop, a reset):
 *		its connection is closed, the answer would arrive on it later.
 */
void
eo_http_wire_abandon(HttpRequest *req)
{
	WireConn   *c = req->wire_conn;

	if (c != NULL)
		conn_close(c);
	req->wire_conn = NULL;
	if (req->wire_node.next != NULL)
		dlist_delete(&req->wire_node);
	req->wire_node.next = req->wire_node.prev = NULL;
}

/*
 * eo_http_wire_sockets
 *		What the relay's wait must watch for this client; lowers
 *		*timeout_ms to the nearest deadline (and to a short poll while a
 *		name is being resolved).  The array is valid until the next call.
 */
int
eo_http_wire_sockets(const SinkSocket **out, uint64 *generation, long *timeout_ms)
{
	int			n = 0;
	TimestampTz now = 0;
	TimestampTz nearest = DT_NOEND;

	for (int i = 0; i < nconns; i++)
	{
		WireConn   *c = conns[i];
		uint32		events;

		if (!c->used)
			continue;
		if (c->req != NULL)
			nearest = Min(nearest, c->state <= WIRE_CONNECTING ?
						  Min(c->req->connect_deadline, c->req->deadline) :
						  c->req->deadline);
		if (c->state == WIRE_RESOLVING)
		{
			*timeout_ms = Min(*timeout_ms, WIRE_RESOLVE_POLL_MS);
			continue;
		}
		events = (c->state == WIRE_CONNECTING || c->state == WIRE_SENDING) ?
			WL_SOCKET_WRITEABLE : WL_SOCKET_READABLE;
		wire_sockets[n].fd = c->fd;
		wire_sockets[n].events = events;
		n++;
	}
	if (orphans != NULL)
		*timeout_ms = Min(*timeout_ms, 1000);
	if (nearest != DT_NOEND)
	{
		long		until;

		now = GetCurrentTimestamp();
		until = nearest <= now ? 0 : (long) ((nearest - now + 999) / 1000);
		*timeout_ms = Min(*timeout_ms, until);
	}
	*out = wire_sockets;
	*generation = wire_generation;
	return n;
}

/* Is fd one of this client's connections?  Then it is returned. */
static WireConn *
conn_of(pgsocket fd)
{
	for (int i = 0; i < nconns; i++)
	{
		if (conns[i]->used && conns[i]->fd == fd)
			return conns[i];
	}
	return NULL;
}

/*
 * eo_http_wire_handle_event
 *		Let the connection on fd progress; false if fd is not this
 *		client's.
 */
bool
eo_http_wire_handle_event(pgsocket fd, uint32 events)
{
	WireConn   *c = (wire_cxt != NULL) ? conn_of(fd) : NULL;

	if (c == NULL)
		return false;
	switch (c->state)
	{
		case WIRE_CONNECTING:
			conn_connected(c);
			break;
		case WIRE_SENDING:
			conn_send(c);
			break;
		case WIRE_RECEIVING:
			conn_receive(c);
			break;
		case WIRE_IDLE:
			conn_idle_event(c);
			break;
		case WIRE_RESOLVING:
			break;
	}
	return true;
}

/*
 * eo_http_wire_timers
 *		Finished resolutions, expired deadlines, and idle connections to
 *		close (idle too long, or eo.http_client turned to libcurl), looked
 *		at after each wait.
 */
void
eo_http_wire_timers(void)
{
	TimestampTz now;

	if (wire_cxt == NULL)
		return;
	if (orphans != NULL)
		orphans_reap();
	now = GetCurrentTimestamp();
	for (int i = 0; i < nconns; i++)
	{
		WireConn   *c = conns[i];
		HttpRequest *req = c->req;

		/* Idle too long, or the client is no longer wanted: close. */
		if (c->used && c->state == WIRE_IDLE &&
			(now - c->idle_since > WIRE_IDLE_MAX_US ||
			 eo_http_client != EO_HTTP_CLIENT_BUILTIN))
		{
			conn_close(c);
			continue;
		}
		if (!c->used || req == NULL)
			continue;
		if (c->state == WIRE_RESOLVING && c->gai != NULL)
		{
			conn_resolved(c);
			if (!c->used || c->req != req)
				continue;
		}
		if (c->state <= WIRE_CONNECTING && now >= req->connect_deadline)
			conn_fail(c, "could not connect to %s within %d ms", c->origin,
					  Min(req->timeout_ms, WIRE_CONNECT_MAX_MS));
		else if (now >= req->deadline)
			conn_fail(c, "no complete answer within %d ms (timeout_ms)", req->timeout_ms);
	}
}

/* The next finished request, or NULL. */
HttpRequest *
eo_http_wire_collect(void)
{
	dlist_node *n;

	if (dlist_is_empty(&finished))
		return NULL;
	n = dlist_pop_head_node(&finished);
	n->next = n->prev = NULL;
	/* cppcheck-suppress nullPointer ; offsetof() inside dlist_container() */
	return dlist_container(HttpRequest, wire_node, n);
}
