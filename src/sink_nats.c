/*-------------------------------------------------------------------------
 *
 * sink_nats.c
 *	  The "nats" sink: JetStream publishes with libnats, acknowledged by
 *	  the stream, while the relay's loop goes on.
 *
 *	  Each message is published to its subject (the destination's, or the
 *	  message's topic) with a reply subject in an inbox of the relay's;
 *	  JetStream answers there once the stream has stored the message
 *	  (replicated, for a stream with replicas).  Headers: Nats-Msg-Id (the
 *	  message id: the stream stores a message once within its duplicate
 *	  window, so a resend after a crash or a lost acknowledgement is
 *	  acknowledged as a duplicate, and counts as delivered), eo-topic,
 *	  eo-key, eo-published-at, the message's headers, and, when the option
 *	  "stream" is set, Nats-Expected-Stream.  The body is the payload.
 *	  Outcomes:
 *		an acknowledgement (a duplicate too)	   delivered
 *		the subject is captured by another stream than "stream" (10060),
 *		the message is larger than the stream or server accepts, a subject
 *		or header that cannot be published		   permanent
 *		no acknowledgement within timeout_ms, no responders (no stream
 *		captures the subject), not connected, any other JetStream error
 *												   retry on the schedule
 *
 *	  Threads: libnats runs its own threads (reading, flushing,
 *	  reconnecting, one per subscription for its callbacks), and the sink
 *	  starts two kinds of its own: a connector per connection (libnats's
 *	  connect can wait a long time for servers that accept a connection and
 *	  never answer) and a closer for a connection replaced by new options.
 *	  Nothing of PostgreSQL runs on any of them: the acknowledgement
 *	  callback copies the answer with malloc into a queue under a pthread
 *	  mutex and writes a byte to a self-pipe; the connector publishes its
 *	  result under the same mutex and writes a byte too.  The pipe's read
 *	  end is the one socket this sink asks the relay's WaitEventSet to
 *	  watch; collect() drains the queue on the relay's thread, matches
 *	  answers to sends, publishes what waited for the connection, and
 *	  classifies.  The credential callbacks (JWT, nonce signature) use only
 *	  malloc'd copies owned by their connection.
 *
 *	  Connections: one per destination, started when its first message
 *	  starts, replaced when its options change or its connect failed.  The
 *	  relay's thread never waits for a server: messages built before the
 *	  connection is ready wait in the sink (their timeout_ms runs), libnats
 *	  reconnects in the background (publishes meanwhile are buffered and
 *	  retried with the same id if their acknowledgement does not come in
 *	  time), and at exit connections that are not connected are left to the
 *	  process's end instead of being closed.
 *
 *	  Memory: a send's private state (NatsPub) lives in nats_cxt until the
 *	  relay releases the send; connections and their copies of secrets are
 *	  malloc'd and freed when replaced and at process exit.  The strings of
 *	  an outcome are allocated in the send's own context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>

#include <nats/nats.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "destination.h"
#include "nats_sink.h"
#include "sink.h"
#include "sink_async.h"

#define NATS_DEFAULT_CONCURRENCY	64
#define NATS_CONNECT_TIMEOUT_MS		1000
#define NATS_RECONNECT_WAIT_MS		250

/* An answer on the relay's inbox, queued by a libnats thread (malloc'd). */
typedef struct NatsAnswer
{
	struct NatsAnswer *next;
	uint64		token;			/* from the reply subject */
	bool		no_responders;
	int			len;
	char		data[FLEXIBLE_ARRAY_MEMBER];	/* NUL-terminated */
} NatsAnswer;

/* Where a connection stands (shared with its connector thread). */
typedef enum NatsConnState
{
	CONN_CONNECTING,			/* the connector thread runs */
	CONN_READY,					/* nc and sub are set */
	CONN_FAILED					/* libnats refused: error says why */
} NatsConnState;

/*
 * The connection of one destination (malloc'd, secrets included).  state,
 * nc, sub, error and retired are written under shared_lock while the
 * connector thread runs; after that only the relay's thread uses them.
 */
typedef struct NatsConn
{
	struct NatsConn *next;
	int32		dest_id;
	char	   *fingerprint;	/* the options it was made with */
	natsOptions *opts;			/* until the connector has used them */
	char	   *inbox;			/* "_INBOX.<nuid>" */
	char	   *inbox_wildcard; /* "_INBOX.<nuid>.*" */
	char	   *jwt;			/* credentials, for the callbacks */
	char	   *seed;
	NatsConnState state;
	bool		retired;		/* replaced: the connector frees it */
	char	   *error;			/* CONN_FAILED */
	natsConnection *nc;
	natsSubscription *sub;
} NatsConn;

/* A send on the wire (the send's private state), in nats_cxt. */
typedef struct NatsPub
{
	uint64		token;			/* key of "pending" */
	SinkSend   *send;
	NatsConn   *conn;			/* NULL once its connection was replaced */
	natsMsg    *msg;			/* built, waiting for the connection */
	TimestampTz started;
	TimestampTz deadline;
	int			timeout_ms;
	bool		waiting;		/* in "pending" */
} NatsPub;

static bool nats_ready = false;
static MemoryContext nats_cxt = NULL;
static HTAB *pending = NULL;	/* token -> NatsPub, on the relay's thread */
static uint64 next_token = 1;
static NatsConn *conns = NULL;

/*
 * Shared with libnats's threads and ours: the answers queue, the states of
 * connections, the count of our threads still running, and the self-pipe.
 */
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static NatsAnswer *answers_head = NULL;
static NatsAnswer *answers_tail = NULL;
static int	threads_running = 0;
static SinkWakePipe wake_pipe = SINK_WAKE_PIPE_INIT;

/*
 * on_answer
 *		libnats callback (a libnats thread): queue an answer on the inbox
 *		for collect() and wake the relay.  malloc only; never raises.
 */
static void
on_answer(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	const char *subject = natsMsg_GetSubject(msg);
	const char *dot = subject ? strrchr(subject, '.') : NULL;
	int			len = natsMsg_GetDataLength(msg);
	NatsAnswer *a;

	if (dot == NULL || len < 0)
	{
		natsMsg_Destroy(msg);
		return;
	}
	a = malloc(offsetof(NatsAnswer, data) + len + 1);
	if (a == NULL)
	{
		natsMsg_Destroy(msg);
		return;					/* the send times out and is retried */
	}
	a->next = NULL;
	a->token = strtoull(dot + 1, NULL, 10);
	a->no_responders = natsMsg_IsNoResponders(msg);
	a->len = len;
	if (len > 0)
		memcpy(a->data, natsMsg_GetData(msg), len);
	a->data[len] = '\0';
	natsMsg_Destroy(msg);

	pthread_mutex_lock(&shared_lock);
	if (answers_tail != NULL)
		answers_tail->next = a;
	else
		answers_head = a;
	answers_tail = a;
	pthread_mutex_unlock(&shared_lock);
	eo_sink_wake(&wake_pipe);
}

/* libnats credential callback (a libnats thread): a copy of the JWT. */
static natsStatus
give_jwt(char **jwt, char **errtxt, void *closure)
{
	NatsConn   *c = closure;

	*jwt = strdup(c->jwt);
	return *jwt != NULL ? NATS_OK : NATS_NO_MEMORY;
}

/* libnats credential callback (a libnats thread): sign the nonce. */
static natsStatus
sign_nonce(char **errtxt, unsigned char **sig, int *siglen, const char *nonce,
		   void *closure)
{
	NatsConn   *c = closure;

	return nats_Sign(c->seed, nonce, sig, siglen);
}

/* Free a connection's memory (any thread; libnats objects already gone). */
static void
conn_free_memory(NatsConn *c)
{
	if (c->opts != NULL)
		natsOptions_Destroy(c->opts);
	natsInbox_Destroy(c->inbox);
	free(c->inbox_wildcard);
	free(c->fingerprint);
	free(c->jwt);
	free(c->seed);
	free(c->error);
	free(c);
}

/* Close a connection's libnats objects and free it (any thread). */
static void
conn_close_and_free(NatsConn *c)
{
	if (c->nc != NULL)
		natsConnection_Close(c->nc);
	if (c->sub != NULL)
		natsSubscription_Destroy(c->sub);
	if (c->nc != NULL)
		natsConnection_Destroy(c->nc);
	conn_free_memory(c);
}

/* Leave a thread of ours: one fewer running. */
static void
thread_done(void)
{
	pthread_mutex_lock(&shared_lock);
	threads_running--;
	pthread_mutex_unlock(&shared_lock);
}

/*
 * connector
 *		Our thread that connects (libnats may wait long for servers that
 *		accept connections and never answer: never on the relay's thread).
 *		Publishes the result under shared_lock and wakes the relay; frees
 *		everything if the connection was replaced meanwhile.  Nothing of
 *		PostgreSQL runs here.
 */
static void *
connector(void *arg)
{
	NatsConn   *c = arg;
	natsConnection *nc = NULL;
	natsSubscription *sub = NULL;
	natsStatus	s;
	bool		retired;
	char		error[512];

	s = natsConnection_Connect(&nc, c->opts);
	if (s == NATS_NOT_YET_CONNECTED)
		s = NATS_OK;			/* libnats goes on trying in the background */
	if (s == NATS_OK)
		s = natsConnection_Subscribe(&sub, nc, c->inbox_wildcard, on_answer, NULL);
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(sub, -1, -1);
	if (s != NATS_OK)
	{
		const char *last = nats_GetLastError(NULL);

		snprintf(error, sizeof(error), "could not connect to the NATS servers: %s",
				 last != NULL && last[0] != '\0' ? last : natsStatus_GetText(s));
	}

	pthread_mutex_lock(&shared_lock);
	retired = c->retired;
	if (!retired && s == NATS_OK)
	{
		c->nc = nc;
		c->sub = sub;
		c->state = CONN_READY;
	}
	else if (!retired)
	{
		c->error = strdup(error);
		c->state = CONN_FAILED;
	}
	pthread_mutex_unlock(&shared_lock);

	if (retired || s != NATS_OK)
	{
		if (nc != NULL)
			natsConnection_Close(nc);
		if (sub != NULL)
			natsSubscription_Destroy(sub);
		if (nc != NULL)
			natsConnection_Destroy(nc);
	}
	if (retired)
		conn_free_memory(c);
	else
		eo_sink_wake(&wake_pipe);
	thread_done();
	return NULL;
}

/* Our thread that closes a replaced connection without holding up the relay. */
static void *
closer(void *arg)
{
	conn_close_and_free(arg);
	thread_done();
	return NULL;
}

/* Start a detached thread of ours; false if it could not be started. */
static bool
start_thread(void *(*fn) (void *), void *arg)
{
	pthread_t	t;
	pthread_attr_t attr;
	bool		ok;

	pthread_mutex_lock(&shared_lock);
	threads_running++;
	pthread_mutex_unlock(&shared_lock);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	ok = (pthread_create(&t, &attr, fn, arg) == 0);
	pthread_attr_destroy(&attr);
	if (!ok)
		thread_done();
	return ok;
}

/*
 * conn_retire
 *		Let go of a connection (the relay's thread, never blocking): the
 *		connector frees it if it still runs, else a closer thread does.
 *		If no thread can be started it is left as it is (a leak, not a
 *		stall).
 */
static void
conn_retire(NatsConn *c)
{
	bool		connecting;

	pthread_mutex_lock(&shared_lock);
	connecting = (c->state == CONN_CONNECTING);
	if (connecting)
		c->retired = true;
	pthread_mutex_unlock(&shared_lock);
	if (connecting)
		return;
	if (c->nc == NULL)
		conn_free_memory(c);
	else
		(void) start_thread(closer, c);
}

/* The state of a connection, read under the lock. */
static NatsConnState
conn_state(NatsConn *c)
{
	NatsConnState st;

	pthread_mutex_lock(&shared_lock);
	st = c->state;
	pthread_mutex_unlock(&shared_lock);
	return st;
}

/*
 * nats_cleanup
 *		on_proc_exit callback: close the connections and let libnats go,
 *		unless a thread of ours still runs or a connection is not connected
 *		(closing it could wait for servers that do not answer): then the
 *		process exits with them, and shutdown stays prompt.
 */
static void
nats_cleanup(int code, Datum arg)
{
	bool		clean = true;

	pthread_mutex_lock(&shared_lock);
	if (threads_running > 0)
		clean = false;
	pthread_mutex_unlock(&shared_lock);
	for (NatsConn *c = conns; c != NULL && clean; c = c->next)
	{
		if (conn_state(c) == CONN_CONNECTING ||
			(c->nc != NULL && natsConnection_Status(c->nc) != NATS_CONN_STATUS_CONNECTED))
			clean = false;
	}
	if (!clean)
		return;
	while (conns != NULL)
	{
		NatsConn   *c = conns;

		conns = c->next;
		conn_close_and_free(c);
	}
	nats_CloseAndWait(1000);
	pthread_mutex_lock(&shared_lock);
	while (answers_head != NULL)
	{
		NatsAnswer *a = answers_head;

		answers_head = a->next;
		free(a);
	}
	answers_tail = NULL;
	pthread_mutex_unlock(&shared_lock);
}

/* Set up libnats, the self-pipe and the pending table the first time. */
static void
nats_init(void)
{
	if (nats_ready)
		return;
	eo_sink_wake_pipe_open(&wake_pipe);
	if (nats_Open(-1) != NATS_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("eo_processing relay: could not initialise libnats")));
	nats_cxt = AllocSetContextCreate(TopMemoryContext, "eo_processing nats sends",
									 ALLOCSET_DEFAULT_SIZES);
	pending = eo_sink_pending_create("eo_processing nats pending", nats_cxt);
	on_proc_exit(nats_cleanup, (Datum) 0);
	nats_ready = true;
}

/* The text of libnats's last error on this thread, or of a status; palloc'd. */
static char *
nats_error_text(const char *what, natsStatus s)
{
	const char *text = nats_GetLastError(NULL);

	if (text == NULL || text[0] == '\0')
		text = natsStatus_GetText(s);
	return psprintf("%s: %s", what, text);
}

/*
 * conn_open
 *		Start connecting "dest" (the relay's thread; returns at once): the
 *		options and the inbox are made here, the connection by a connector
 *		thread.  Returns NULL and sets *error if libnats refused the
 *		options or no thread could be started.
 */
static NatsConn *
conn_open(const DestinationConfig *dest, const char *fingerprint, char **error)
{
	NatsOptions *o = NATS_OPTIONS(dest);
	NatsConn   *c = calloc(1, sizeof(NatsConn));
	natsStatus	s;
	bool		secure = false;

	if (c == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	c->dest_id = dest->id;
	c->state = CONN_CONNECTING;
	c->fingerprint = strdup(fingerprint);
	if (o->jwt != NULL)
	{
		c->jwt = strdup(o->jwt);
		c->seed = strdup(o->seed);
	}
	if (c->fingerprint == NULL || (o->jwt != NULL && (c->jwt == NULL || c->seed == NULL)))
	{
		conn_free_memory(c);
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	}
	for (int i = 0; i < o->nservers; i++)
		secure |= (strncmp(o->servers[i], "tls://", 6) == 0);

	s = natsInbox_Create(&c->inbox);
	if (s == NATS_OK)
	{
		c->inbox_wildcard = malloc(strlen(c->inbox) + 3);
		if (c->inbox_wildcard == NULL)
			s = NATS_NO_MEMORY;
		else
			sprintf(c->inbox_wildcard, "%s.*", c->inbox);
	}
	if (s == NATS_OK)
		s = natsOptions_Create(&c->opts);
	if (s == NATS_OK)
		s = natsOptions_SetServers(c->opts, (const char **) o->servers, o->nservers);
	if (s == NATS_OK)
		s = natsOptions_SetName(c->opts, "eo_processing relay");
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(c->opts, Min(o->timeout_ms, NATS_CONNECT_TIMEOUT_MS));
	if (s == NATS_OK)
		s = natsOptions_SetRetryOnFailedConnect(c->opts, true, NULL, NULL);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(c->opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectWait(c->opts, NATS_RECONNECT_WAIT_MS);
	if (s == NATS_OK && secure)
		s = natsOptions_SetSecure(c->opts, true);
	if (s == NATS_OK && secure && !o->tls_verify)
		s = natsOptions_SkipServerVerification(c->opts, true);
	if (s == NATS_OK && o->token != NULL)
		s = natsOptions_SetToken(c->opts, o->token);
	if (s == NATS_OK && o->user != NULL)
		s = natsOptions_SetUserInfo(c->opts, o->user, o->password);
	if (s == NATS_OK && c->jwt != NULL)
		s = natsOptions_SetUserCredentialsCallbacks(c->opts, give_jwt, c, sign_nonce, c);
	if (s != NATS_OK)
	{
		*error = nats_error_text("could not set up the connection to the NATS servers", s);
		conn_free_memory(c);
		return NULL;
	}
	if (!start_thread(connector, c))
	{
		*error = pstrdup("could not start a thread to connect to the NATS servers");
		conn_free_memory(c);
		return NULL;
	}
	return c;
}

/*
 * options_fingerprint
 *		Everything a connection is made from, as one string (palloc'd), to
 *		notice that a destination's options changed.  Fields are separated
 *		by "\n", which no option used here may contain.
 */
static char *
options_fingerprint(const NatsOptions *o)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < o->nservers; i++)
		appendStringInfo(&buf, "%s,", o->servers[i]);
	appendStringInfo(&buf, "\n%s\n%s\n%s\n%s\n%s\n%s\n%d\n%d",
					 o->jwt ? o->jwt : "", o->seed ? o->seed : "",
					 o->token ? o->token : "", o->user ? o->user : "",
					 o->password ? o->password : "", o->stream ? o->stream : "",
					 (int) o->tls_verify, o->timeout_ms);
	return buf.data;
}

/*
 * conn_for
 *		The connection of "dest", started or restarted if its options
 *		changed, or if the last attempt failed.  Sends still waiting on a
 *		replaced connection are finished by collect() as retries.  NULL
 *		with *error when it cannot be started.
 */
static NatsConn *
conn_for(const DestinationConfig *dest, char **error)
{
	char	   *fingerprint = options_fingerprint(NATS_OPTIONS(dest));
	NatsConn  **link = &conns;
	NatsConn   *c;

	for (c = conns; c != NULL; link = &c->next, c = c->next)
	{
		if (c->dest_id == dest->id)
			break;
	}
	if (c != NULL && strcmp(c->fingerprint, fingerprint) == 0 &&
		conn_state(c) != CONN_FAILED)
		return c;
	if (c != NULL)
	{
		HASH_SEQ_STATUS seq;
		SinkPendingEntry *e;

		/* Its sends will never hear back: let them be retried. */
		hash_seq_init(&seq, pending);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			NatsPub    *pub = e->pub;

			if (pub->conn == c)
			{
				pub->conn = NULL;
				pub->deadline = 0;
			}
		}
		*link = c->next;
		conn_retire(c);
	}
	c = conn_open(dest, fingerprint, error);
	if (c != NULL)
	{
		c->next = conns;
		conns = c;
	}
	return c;
}

/* Finish a send with an outcome (strings copied into the send's context). */
static void
finish(SinkSend *send, SinkResult result, const char *error, int status,
	   const char *response)
{
	NatsPub    *pub = send->private;

	eo_sink_finish(send, result, error, status, response, pub ? pub->started : 0);
}

/*
 * set_headers
 *		The message's headers, then the relay's.  Returns an error text if
 *		a message header cannot be published (the message is dead then).
 */
static const char *
set_headers(natsMsg *m, const DestinationConfig *dest, const EoMessage *msg,
			const char *id)
{
	NatsOptions *o = NATS_OPTIONS(dest);
	natsStatus	s = NATS_OK;

	if (msg->headers != NULL)
	{
		JsonbIterator *it = JsonbIteratorInit(&msg->headers->root);
		JsonbValue	k;
		JsonbValue	v;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			if (tok != WJB_KEY)
				continue;
			if (JsonbIteratorNext(&it, &v, true) != WJB_VALUE || v.type != jbvString ||
				!eo_http_header_name_ok(k.val.string.val, k.val.string.len) ||
				eo_nats_header_reserved(k.val.string.val, k.val.string.len) ||
				!eo_http_header_value_ok(v.val.string.val, v.val.string.len))
				return "a message header cannot be published to NATS (its name is not a token, "
					"its value has a line break, or it is a Nats- header or one the relay sets)";
			s = natsMsgHeader_Add(m, pnstrdup(k.val.string.val, k.val.string.len),
								  pnstrdup(v.val.string.val, v.val.string.len));
			if (s != NATS_OK)
				return "out of memory in libnats";
		}
	}
	s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "eo-topic", msg->topic);
	if (s == NATS_OK && msg->key != NULL)
		s = natsMsgHeader_Set(m, "eo-key", msg->key);
	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "eo-published-at", eo_iso_timestamp(msg->published_at));
	if (s == NATS_OK && o->stream != NULL)
		s = natsMsgHeader_Set(m, "Nats-Expected-Stream", o->stream);
	return s == NATS_OK ? NULL : "out of memory in libnats";
}

/*
 * publish_msg
 *		Publish a built message on its ready connection and destroy it.
 *		Returns false if it could not be published (the send is finished
 *		then: a payload over the servers' max_payload is permanent).
 */
static bool
publish_msg(NatsPub *pub, natsMsg *m)
{
	natsConnection *nc = pub->conn->nc;
	int64		max_payload = natsConnection_GetMaxPayload(nc);
	natsStatus	s;

	if (max_payload > 0 && (int64) natsMsg_GetDataLength(m) > max_payload)
	{
		natsMsg_Destroy(m);
		finish(pub->send, SINK_PERMANENT,
			   psprintf("the payload is larger than the NATS servers accept (max_payload " INT64_FORMAT " bytes)",
						max_payload), -1, NULL);
		return false;
	}
	s = natsConnection_PublishMsg(nc, m);
	natsMsg_Destroy(m);
	if (s != NATS_OK)
	{
		finish(pub->send, s == NATS_MAX_PAYLOAD ? SINK_PERMANENT : SINK_RETRY,
			   nats_error_text("could not publish", s), -1, NULL);
		return false;
	}
	return true;
}

/*
 * nats_start
 *		Publish one message with a reply subject in the connection's inbox
 *		(or keep it built until the connection is ready) and remember it
 *		until its acknowledgement or its deadline.  A message that cannot
 *		be published finishes at once.
 */
static void
nats_start(SinkSend *send, const DestinationConfig *dest, const EoMessage *msg)
{
	NatsOptions *o = NATS_OPTIONS(dest);
	MemoryContext old;
	NatsPub    *pub;
	NatsConn   *conn;
	char	   *error = NULL;
	const char *subject = o->subject ? o->subject : msg->topic;
	char	   *id = eo_uuid_to_cstring(&msg->id);
	char	   *body;
	char	   *reply;
	natsMsg    *m = NULL;
	natsStatus	s;
	const char *problem;
	SinkPendingEntry *e;
	bool		found;

	nats_init();
	old = MemoryContextSwitchTo(nats_cxt);
	pub = palloc0(sizeof(NatsPub));
	MemoryContextSwitchTo(old);
	pub->send = send;
	pub->started = GetCurrentTimestamp();
	pub->timeout_ms = o->timeout_ms;
	pub->deadline = pub->started + (TimestampTz) o->timeout_ms * 1000;
	send->private = pub;

	if (!eo_nats_subject_ok(subject))
	{
		finish(send, SINK_PERMANENT,
			   psprintf("topic \"%s\" is not a NATS subject a message can be published to "
						"(set the destination's option \"subject\")", msg->topic), -1, NULL);
		return;
	}
	conn = conn_for(dest, &error);
	if (conn == NULL)
	{
		finish(send, SINK_RETRY, error, -1, NULL);
		return;
	}
	pub->conn = conn;
	if (msg->payload_text != NULL)
		body = msg->payload_text;
	else
		body = msg->payload ? JsonbToCString(NULL, &msg->payload->root, VARSIZE(msg->payload)) :
			pstrdup("null");

	pub->token = next_token++;
	reply = psprintf("%s." UINT64_FORMAT, conn->inbox, pub->token);
	s = natsMsg_Create(&m, subject, reply, body, (int) strlen(body));
	if (s != NATS_OK)
	{
		finish(send, SINK_RETRY, nats_error_text("could not build the message", s), -1, NULL);
		return;
	}
	problem = set_headers(m, dest, msg, id);
	if (problem != NULL)
	{
		natsMsg_Destroy(m);
		finish(send, strncmp(problem, "a message header", 16) == 0 ? SINK_PERMANENT : SINK_RETRY,
			   problem, -1, NULL);
		return;
	}
	e = hash_search(pending, &pub->token, HASH_ENTER, &found);
	e->pub = pub;
	pub->waiting = true;
	if (conn_state(conn) == CONN_READY)
	{
		if (!publish_msg(pub, m))
		{
			(void) hash_search(pending, &pub->token, HASH_REMOVE, NULL);
			pub->waiting = false;
		}
	}
	else
		pub->msg = m;			/* published once connected (collect) */
}

/* A JSON number or string field of a jsonb object, as text; palloc'd or NULL. */
static char *
json_field(Jsonb *j, JsonbContainer *container, const char *name)
{
	JsonbValue *v = getKeyJsonValueFromContainer(container ? container : &j->root,
												 name, strlen(name), NULL);

	if (v == NULL)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	return NULL;
}

/*
 * classify_answer
 *		Finish a send from JetStream's answer: {"stream": .., "seq": ..,
 *		"duplicate": true} for a stored message, {"error": {"code": ..,
 *		"err_code": .., "description": ..}} for a refusal.
 */
static void
classify_answer(SinkSend *send, const NatsAnswer *a)
{
	MemoryContext old = CurrentMemoryContext;
	Jsonb	   *j = NULL;
	JsonbValue *err;

	if (a->no_responders)
	{
		finish(send, SINK_RETRY,
			   "no stream captures the subject (the NATS server answered: no responders)",
			   503, NULL);
		return;
	}
	PG_TRY();
	{
		j = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(a->data)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		FlushErrorState();
		j = NULL;
	}
	PG_END_TRY();
	if (j == NULL || !JB_ROOT_IS_OBJECT(j))
	{
		finish(send, SINK_RETRY, "the acknowledgement from the NATS server is not a JSON object",
			   -1, pnstrdup(a->data, Min(a->len, 256)));
		return;
	}
	err = getKeyJsonValueFromContainer(&j->root, "error", 5, NULL);
	if (err != NULL && err->type == jbvBinary)
	{
		char	   *code = json_field(j, err->val.binary.data, "code");
		char	   *err_code = json_field(j, err->val.binary.data, "err_code");
		char	   *description = json_field(j, err->val.binary.data, "description");
		int			ec = err_code ? atoi(err_code) : 0;
		/* What retrying cannot fix (libnats's names of JetStream's codes). */
		bool		permanent = (ec == JSStreamNotMatchErr ||
								 ec == JSStreamMessageExceedsMaximumErr);

		finish(send, permanent ? SINK_PERMANENT : SINK_RETRY,
			   psprintf("the stream refused the message: %s (error %s)",
						description ? description : "no description",
						err_code ? err_code : "unknown"),
			   code ? atoi(code) : -1, NULL);
		return;
	}
	{
		char	   *stream = json_field(j, NULL, "stream");
		char	   *seq = json_field(j, NULL, "seq");
		char	   *dup = json_field(j, NULL, "duplicate");

		if (stream == NULL || seq == NULL)
			finish(send, SINK_RETRY, "the acknowledgement from the NATS server names no stream",
				   -1, pnstrdup(a->data, Min(a->len, 256)));
		else
			finish(send, SINK_DELIVERED, NULL, -1,
				   psprintf("stream %s seq %s%s", stream, seq,
							dup && strcmp(dup, "true") == 0 ? " (duplicate)" : ""));
	}
}

/* Take a finished send off "pending" and hand it to the relay. */
static void
to_done(NatsPub *pub, dlist_head *done)
{
	eo_sink_hand_over(pending, pub->token, pub->send, done);
	pub->waiting = false;
}

/*
 * nats_collect
 *		On the relay's thread: drain the self-pipe, match the queued
 *		answers to their sends, and finish the sends whose deadline passed.
 */
static void
nats_collect(dlist_head *done)
{
	NatsAnswer *list;
	HASH_SEQ_STATUS seq;
	SinkPendingEntry *e;
	TimestampTz now;

	if (!nats_ready)
		return;
	eo_sink_wake_drain(&wake_pipe);
	pthread_mutex_lock(&shared_lock);
	list = answers_head;
	answers_head = answers_tail = NULL;
	pthread_mutex_unlock(&shared_lock);
	while (list != NULL)
	{
		NatsAnswer *a = list;

		list = a->next;
		e = hash_search(pending, &a->token, HASH_FIND, NULL);
		if (e != NULL)
		{
			NatsPub    *pub = e->pub;

			classify_answer(pub->send, a);
			to_done(pub, done);
		}
		free(a);				/* a late answer to a send given up is dropped */
	}

	now = GetCurrentTimestamp();
	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		NatsPub    *pub = e->pub;

		/* Built before the connection was ready: publish it now? */
		if (pub->msg != NULL && pub->conn != NULL && now < pub->deadline)
		{
			NatsConnState st = conn_state(pub->conn);
			natsMsg    *m = pub->msg;

			if (st == CONN_READY)
			{
				pub->msg = NULL;
				if (!publish_msg(pub, m))
					to_done(pub, done);
			}
			else if (st == CONN_FAILED)
			{
				finish(pub->send, SINK_RETRY, pub->conn->error, -1, NULL);
				to_done(pub, done);
			}
			continue;
		}
		if (now < pub->deadline)
			continue;
		finish(pub->send, SINK_RETRY,
			   pub->conn == NULL ? "the destination's options changed while the message was on the wire" :
			   pub->msg != NULL ? psprintf("not connected to the NATS servers within %d ms", pub->timeout_ms) :
			   psprintf("no acknowledgement from the stream within %d ms", pub->timeout_ms),
			   -1, NULL);
		to_done(pub, done);		/* removing the current entry is allowed */
	}
}

/* The self-pipe, and the earliest deadline as the wait's timeout. */
static int
nats_wait_sockets(const SinkSocket **out, uint64 *generation, long *timeout_ms)
{
	HASH_SEQ_STATUS seq;
	SinkPendingEntry *e;
	TimestampTz earliest = PG_INT64_MAX;

	*generation = 1;
	if (!nats_ready)
	{
		*out = NULL;
		return 0;
	}
	*out = &wake_pipe.socket;
	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		NatsPub    *pub = e->pub;

		if (pub->deadline < earliest)
			earliest = pub->deadline;
	}
	if (earliest != PG_INT64_MAX)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		until = earliest <= now ? 0 : (long) ((earliest - now + 999) / 1000);

		*timeout_ms = Min(*timeout_ms, until);
	}
	return 1;
}

/* Nothing to do on events: collect() drains the pipe and the queue. */
static void
nats_handle_events(WaitEvent *events, int nevents)
{
}

/* Free a send's state, finished or not (a late answer is then dropped). */
static void
nats_release(SinkSend *send)
{
	NatsPub    *pub = send->private;

	if (pub == NULL)
		return;
	if (pub->waiting)
		(void) hash_search(pending, &pub->token, HASH_REMOVE, NULL);
	if (pub->msg != NULL)
		natsMsg_Destroy(pub->msg);
	pfree(pub);
	send->private = NULL;
}

/* Only superusers and the extension's owner say where the relay connects. */
static void
nats_may_configure(void)
{
	eo_check_may_configure_kind("nats");
}

const SinkRoutine eo_nats_sink = {
	.kind = "nats",
	.option_names = "servers, subject, stream, credentials, token, user, password, "
	"tls_verify, timeout_ms, concurrency, max_attempts and retry_delays",
	.init_options = eo_nats_init_options,
	.parse_option = eo_parse_nats_option,
	.check_options = eo_nats_check_options,
	.may_configure = nats_may_configure,
	.check_target = NULL,
	.default_retry_delays = NULL,
	.default_concurrency = NATS_DEFAULT_CONCURRENCY,
	.logs_attempts = false,
	.deliver = NULL,
	.start = nats_start,
	.wait_sockets = nats_wait_sockets,
	.handle_events = nats_handle_events,
	.collect = nats_collect,
	.release = nats_release,
};
