/*-------------------------------------------------------------------------
 *
 * sink_kafka.c
 *	  The "kafka" sink: records produced with librdkafka while the relay's
 *	  loop goes on.
 *
 *	  A record's key is the message's key (none without one), its value
 *	  the payload (jsonb as JSON text, or the text payload), its headers
 *	  eo-id, eo-topic, eo-published-at and the message's own.  Its topic
 *	  is the destination's option "topic", or the message's topic.  The
 *	  partition is chosen by librdkafka's partitioner: consistent_random
 *	  (CRC32 of the key) unless the property "partitioner" says otherwise
 *	  (murmur2_random is the Java client's).
 *
 *	  Default mode: one idempotent producer per destination
 *	  (enable.idempotence=true, acks=all).  A send is finished by its
 *	  delivery report: delivered once the brokers have it, retried on the
 *	  destination's schedule otherwise, dead for what Kafka refuses for
 *	  good (too large, invalid topic name).  Reports wake the relay
 *	  through librdkafka's queue event (rd_kafka_queue_io_event_enable on
 *	  the main queue writes to the sink's self-pipe) and are served by
 *	  rd_kafka_poll(rk, 0) on the relay's thread.  A fatal error of the
 *	  producer (librdkafka's class) retries its sends and replaces it.
 *
 *	  exactly_once mode: a transactional producer with the
 *	  transactional.id "eo-<system identifier>-<database oid>-<destination
 *	  id>", driven by a thread of its own (kafka_txn.c).  Sends wait in
 *	  the sink until the thread is idle, then go as one batch with the
 *	  position record (kafka_position.c) in one Kafka transaction; they
 *	  finish when it commits (delivered), aborts (retry; dead for a
 *	  record Kafka refuses for good) or fails fatally (retry, producer
 *	  replaced).  Before the first batch the thread reads the position
 *	  back: messages listed there are finished as delivered without
 *	  being produced again.
 *
 *	  Per-key order: the relay puts one message of a key on the wire at a
 *	  time, and the idempotent producer keeps a partition's records in
 *	  order across its own retries; messages of different keys go in
 *	  parallel up to the destination's concurrency.
 *
 *	  Threads: librdkafka's own, and the transaction threads.  The
 *	  delivery report and error callbacks act only when they run on the
 *	  relay's thread (inside rd_kafka_poll) and use no memory allocation
 *	  there; a producer being replaced is purged and destroyed by a
 *	  closer thread.  At exit the producers are purged and destroyed,
 *	  unless a thread of ours still runs (then the process exits with it).
 *
 *	  A producer unused for KAFKA_IDLE_CLOSE_MS (its destination was
 *	  dropped, disabled or is idle) is closed; the next send makes it anew.
 *
 *	  Memory: a send's private state (KafkaPub) and the producers live in
 *	  kafka_cxt; records handed to a transaction thread are malloc'd.  The
 *	  strings of an outcome are allocated in the send's own context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>

#include <librdkafka/rdkafka.h>

#include "access/xlog.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "destination.h"
#include "kafka_position.h"
#include "kafka_sink.h"
#include "kafka_txn.h"
#include "outbox.h"
#include "sink.h"
#include "sink_async.h"

#define KAFKA_DEFAULT_CONCURRENCY	1000
#define KAFKA_MESSAGE_TIMEOUT_MS	"30000"
#define KAFKA_WAIT_SLICE_MS			1000
#define KAFKA_IDLE_CLOSE_MS			(5 * 60 * 1000)	/* close a producer unused this
												 * long (a dropped destination) */
#define KAFKA_NOT_READY_MS			30000	/* exactly_once: longest wait for the
										 * producer to be ready */

/* The producer of one destination. */
typedef struct KafkaProducer
{
	struct KafkaProducer *next;
	int32		dest_id;
	char	   *fingerprint;	/* the options it was made with */
	rd_kafka_t *rk;				/* default mode (exactly_once: the thread's) */
	KafkaTxn   *txn;			/* exactly_once */
	bool		fatal;			/* default mode: replace it */
	int			nsends;			/* its sends in "pending" */
	TimestampTz last_used;		/* the last send started */
	/* exactly_once, on the relay's thread: */
	bool		position_loaded;
	char	   *not_ready;		/* why the thread is not ready yet */
	HTAB	   *position;		/* kafka_position.c's set */
	int64		recorded_upto;	/* highest SinkSend.recorded_seq seen */
	List	   *waiting;		/* KafkaPubs for the next batch */
	List	   *in_batch;		/* KafkaPubs handed over (for the record) */
} KafkaProducer;

/* A send on its way (the send's private state), in kafka_cxt. */
typedef struct KafkaPub
{
	uint64		token;			/* key of "pending" */
	SinkSend   *send;
	KafkaProducer *producer;	/* NULL once its producer was replaced */
	TimestampTz started;
	bool		waiting;		/* in "pending" */
	KafkaRecord *record;		/* exactly_once: built, not yet handed over */
	/* Filled by the delivery report (default mode). */
	bool		reported;
	rd_kafka_resp_err_t err;
	rd_kafka_msg_status_t status;
	int32		partition;
	int64		offset;
	struct KafkaPub *next_reported;
} KafkaPub;

static bool kafka_ready = false;
static MemoryContext kafka_cxt = NULL;
static HTAB *pending = NULL;	/* token -> KafkaPub */
static uint64 next_token = 1;
static KafkaProducer *producers = NULL;
static KafkaPub *reported_head = NULL;	/* reports not yet classified */
static pthread_t relay_thread;
static SinkWakePipe wake_pipe = SINK_WAKE_PIPE_INIT;
static pthread_mutex_t closer_lock = PTHREAD_MUTEX_INITIALIZER;
static int	closers_running = 0;

/*
 * on_delivery
 *		librdkafka's delivery report callback.  Acts only on the relay's
 *		thread (inside rd_kafka_poll): notes the outcome in the send's
 *		state and queues it for collect().  No allocation, never raises.
 */
static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	uint64		token = (uint64) (uintptr_t) m->_private;
	SinkPendingEntry *e;
	KafkaPub   *pub;

	if (!pthread_equal(pthread_self(), relay_thread) || pending == NULL)
		return;
	e = hash_search(pending, &token, HASH_FIND, NULL);
	if (e == NULL)
		return;					/* given up already */
	pub = e->pub;
	if (pub->reported)
		return;
	pub->reported = true;
	pub->err = m->err;
	pub->status = rd_kafka_message_status(m);
	pub->partition = m->partition;
	pub->offset = m->offset;
	pub->next_reported = reported_head;
	reported_head = pub;
}

/* The delivery report callback of transactional producers (their thread). */
static void
on_txn_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	KafkaRecord *r = m->_private;

	if (r != NULL)
		r->err = m->err;
}

/* librdkafka's error callback: a fatal error marks the producer. */
static void
on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	KafkaProducer *p = opaque;

	if (err == RD_KAFKA_RESP_ERR__FATAL && pthread_equal(pthread_self(), relay_thread) &&
		p != NULL)
		p->fatal = true;
}

/* A closer thread: purge and destroy a replaced producer. */
static void *
closer(void *arg)
{
	rd_kafka_t *rk = arg;

	(void) rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	rd_kafka_destroy(rk);
	pthread_mutex_lock(&closer_lock);
	closers_running--;
	pthread_mutex_unlock(&closer_lock);
	return NULL;
}

/* Let go of a default-mode handle without waiting (a leak if no thread). */
static void
retire_handle(rd_kafka_t *rk)
{
	pthread_t	t;
	pthread_attr_t attr;

	rd_kafka_queue_t *q = rd_kafka_queue_get_main(rk);

	rd_kafka_queue_io_event_enable(q, -1, NULL, 0);
	rd_kafka_queue_destroy(q);
	pthread_mutex_lock(&closer_lock);
	closers_running++;
	pthread_mutex_unlock(&closer_lock);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, closer, rk) != 0)
	{
		pthread_mutex_lock(&closer_lock);
		closers_running--;
		pthread_mutex_unlock(&closer_lock);
	}
	pthread_attr_destroy(&attr);
}

/*
 * kafka_cleanup
 *		on_proc_exit callback: purge and destroy the producers, unless a
 *		thread of ours still runs (a transaction may be waiting for an
 *		unreachable cluster): then the process exits with them, and
 *		shutdown stays prompt.
 */
static void
kafka_cleanup(int code, Datum arg)
{
	bool		busy;

	pthread_mutex_lock(&closer_lock);
	busy = closers_running > 0;
	pthread_mutex_unlock(&closer_lock);
	if (busy || eo_kafka_txn_threads_running())
		return;
	for (KafkaProducer *p = producers; p != NULL; p = p->next)
	{
		if (p->rk == NULL)
			continue;
		(void) rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
							  RD_KAFKA_PURGE_F_NON_BLOCKING);
		rd_kafka_destroy_flags(p->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
		p->rk = NULL;
	}
}

/* Set up the self-pipe and the pending table the first time. */
static void
kafka_init(void)
{
	if (kafka_ready)
		return;
	eo_sink_wake_pipe_open(&wake_pipe);
	relay_thread = pthread_self();
	kafka_cxt = AllocSetContextCreate(TopMemoryContext, "eo_processing kafka sends",
									  ALLOCSET_DEFAULT_SIZES);
	pending = eo_sink_pending_create("eo_processing kafka pending", kafka_cxt);
	on_proc_exit(kafka_cleanup, (Datum) 0);
	kafka_ready = true;
}

/* The transactional.id of a destination: stable per cluster, database, id. */
static char *
transactional_id(int32 dest_id)
{
	return psprintf("eo-" UINT64_FORMAT "-%u-%d", GetSystemIdentifier(), MyDatabaseId, dest_id);
}

/*
 * options_fingerprint
 *		Everything a producer is made from, as one string (palloc'd), to
 *		notice that a destination's options changed.
 */
static char *
options_fingerprint(const KafkaOptions *o)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s\n%d\n%s\n", o->bootstrap_servers, (int) o->exactly_once,
					 o->positions_topic);
	for (int i = 0; i < o->nproperties; i++)
		appendStringInfo(&buf, "%s=%s\n", o->properties[i].name, o->properties[i].value);
	return buf.data;
}

/*
 * make_conf
 *		A librdkafka configuration from the options: the relay's defaults,
 *		then the user's properties (checked at create/alter time), then
 *		the settings the guarantees rest on.  NULL with *error (palloc'd,
 *		never quoting a secret) if librdkafka refuses one.
 */
static rd_kafka_conf_t *
make_conf(const KafkaOptions *o, bool reader, char **error)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[512];
	const char *const defaults[][2] = {
		{"client.id", "eo_processing"},
		{"message.timeout.ms", KAFKA_MESSAGE_TIMEOUT_MS},
		{"socket.connection.setup.timeout.ms", "10000"},
		{"log.connection.close", "false"},
	};
	const char *const forced[][2] = {
		{"bootstrap.servers", o->bootstrap_servers},
		{"enable.idempotence", "true"},
		{"acks", "all"},
	};

	for (int i = 0; i < lengthof(defaults); i++)
	{
		if (reader && strcmp(defaults[i][0], "message.timeout.ms") == 0)
			continue;			/* a producer's setting */
		(void) rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], errstr, sizeof(errstr));
	}
	for (int i = 0; i < o->nproperties; i++)
	{
		if (rd_kafka_conf_set(conf, o->properties[i].name, o->properties[i].value,
							  errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			*error = psprintf("librdkafka refused property \"%s\"", o->properties[i].name);
			rd_kafka_conf_destroy(conf);
			return NULL;
		}
	}
	for (int i = 0; i < lengthof(forced); i++)
	{
		if (reader && i > 0)
			break;
		(void) rd_kafka_conf_set(conf, forced[i][0], forced[i][1], errstr, sizeof(errstr));
	}
	if (reader)
	{
		(void) rd_kafka_conf_set(conf, "isolation.level", "read_committed", errstr, sizeof(errstr));
		(void) rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof(errstr));
		(void) rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr));
	}
	return conf;
}

/*
 * producer_open
 *		Make the producer of "dest" (the relay's thread; never waits for
 *		the cluster).  exactly_once: its thread starts initialising.  NULL
 *		with *error if librdkafka refused.
 */
static KafkaProducer *
producer_open(const DestinationConfig *dest, const char *fingerprint, char **error)
{
	KafkaOptions *o = KAFKA_OPTIONS(dest);
	MemoryContext old = MemoryContextSwitchTo(kafka_cxt);
	KafkaProducer *p = palloc0(sizeof(KafkaProducer));
	rd_kafka_conf_t *conf = make_conf(o, false, error);
	char		errstr[512];
	char	   *txn_id = NULL;

	p->dest_id = dest->id;
	p->fingerprint = pstrdup(fingerprint);
	MemoryContextSwitchTo(old);
	if (conf == NULL)
	{
		pfree(p->fingerprint);
		pfree(p);
		return NULL;
	}
	if (o->exactly_once)
	{
		txn_id = transactional_id(dest->id);
		(void) rd_kafka_conf_set(conf, "transactional.id", txn_id, errstr, sizeof(errstr));
		rd_kafka_conf_set_dr_msg_cb(conf, on_txn_delivery);
	}
	else
	{
		rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
		rd_kafka_conf_set_error_cb(conf, on_error);
		rd_kafka_conf_set_opaque(conf, p);
	}
	p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (p->rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		*error = psprintf("could not create the Kafka producer: %s", errstr);
		pfree(p->fingerprint);
		pfree(p);
		return NULL;
	}
	if (o->exactly_once)
	{
		rd_kafka_conf_t *reader = make_conf(o, true, error);
		char	   *terr = NULL;

		if (reader == NULL)
		{
			rd_kafka_destroy(p->rk);
			pfree(p->fingerprint);
			pfree(p);
			return NULL;
		}
		p->txn = eo_kafka_txn_start(p->rk, reader, txn_id, o->positions_topic,
									wake_pipe.fds[1], &terr);
		if (p->txn == NULL)
		{
			*error = pstrdup(terr ? terr : "out of memory");
			free(terr);
			rd_kafka_conf_destroy(reader);
			rd_kafka_destroy(p->rk);
			pfree(p->fingerprint);
			pfree(p);
			return NULL;
		}
		p->rk = NULL;			/* the thread's now */
		p->position = eo_kafka_position_new(kafka_cxt);
	}
	else
	{
		rd_kafka_queue_t *q = rd_kafka_queue_get_main(p->rk);

		rd_kafka_queue_io_event_enable(q, wake_pipe.fds[1], "1", 1);
		rd_kafka_queue_destroy(q);
	}
	return p;
}

/* Finish a send with an outcome (strings copied into the send's context). */
static void
finish(SinkSend *send, SinkResult result, const char *error, const char *response)
{
	KafkaPub   *pub = send->private;

	eo_sink_finish(send, result, error, -1, response, pub ? pub->started : 0);
}

/* A send leaves "pending": its producer has one fewer on the way. */
static void
pub_leave(KafkaPub *pub)
{
	if (pub->waiting && pub->producer != NULL)
		pub->producer->nsends--;
	pub->waiting = false;
}

/* Take a send off "pending" and hand it to the relay. */
static void
to_done(KafkaPub *pub, dlist_head *done)
{
	eo_sink_hand_over(pending, pub->token, pub->send, done);
	pub_leave(pub);
}

/*
 * producer_drop
 *		Forget a producer (options changed, or it failed fatally): its
 *		sends still on the way are finished as retries by collect()
 *		(their producer is NULL), its handle or thread is let go without
 *		waiting.
 */
static void
producer_drop(KafkaProducer *p)
{
	HASH_SEQ_STATUS seq;
	SinkPendingEntry *e;
	KafkaProducer **link = &producers;

	while (*link != NULL && *link != p)
		link = &(*link)->next;
	if (*link == p)
		*link = p->next;
	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		KafkaPub   *pub = e->pub;

		if (pub->producer == p)
			pub->producer = NULL;
	}
	if (p->txn != NULL)
		eo_kafka_txn_retire(p->txn);
	if (p->rk != NULL)
		retire_handle(p->rk);
	if (p->position != NULL)
		hash_destroy(p->position);
	list_free(p->waiting);
	list_free(p->in_batch);
	pfree(p->fingerprint);
	pfree(p);
}

/*
 * producer_for
 *		The producer of "dest", made anew if its options changed or it
 *		failed fatally.  NULL with *error if it cannot be made.
 */
static KafkaProducer *
producer_for(const DestinationConfig *dest, char **error)
{
	char	   *fingerprint = options_fingerprint(KAFKA_OPTIONS(dest));
	KafkaProducer *p;

	for (p = producers; p != NULL; p = p->next)
	{
		if (p->dest_id == dest->id)
			break;
	}
	if (p != NULL && strcmp(p->fingerprint, fingerprint) == 0 && !p->fatal)
		return p;
	if (p != NULL)
		producer_drop(p);
	p = producer_open(dest, fingerprint, error);
	if (p != NULL)
	{
		p->next = producers;
		producers = p;
	}
	return p;
}

/*
 * message_headers
 *		The record's headers: the message's own, then eo-id, eo-topic and
 *		eo-published-at.  NULL with *problem if a message header cannot be
 *		sent (the message is dead then).
 */
static rd_kafka_headers_t *
message_headers(const EoMessage *msg, const char *id, const char **problem)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	char	   *published = eo_iso_timestamp(msg->published_at);

	*problem = NULL;
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
				(k.val.string.len >= 3 && pg_strncasecmp(k.val.string.val, "eo-", 3) == 0))
			{
				rd_kafka_headers_destroy(h);
				*problem = "a message header cannot be sent to Kafka (its value is not a string, "
					"or its name starts with \"eo-\", which the relay's headers use)";
				return NULL;
			}
			rd_kafka_header_add(h, k.val.string.val, k.val.string.len,
								v.val.string.val, v.val.string.len);
		}
	}
	rd_kafka_header_add(h, "eo-id", -1, id, -1);
	rd_kafka_header_add(h, "eo-topic", -1, msg->topic, -1);
	rd_kafka_header_add(h, "eo-published-at", -1, published, -1);
	pfree(published);
	return h;
}

/* Whether librdkafka's error means Kafka will never take the record. */
static bool
permanent_error(rd_kafka_resp_err_t err)
{
	return err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
		err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE ||
		err == RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION ||
		err == RD_KAFKA_RESP_ERR_INVALID_RECORD ||
		err == RD_KAFKA_RESP_ERR__INVALID_ARG;
}

/* The text of a librdkafka error for an outcome; palloc'd. */
static char *
kafka_error_text(const char *what, rd_kafka_resp_err_t err)
{
	return psprintf("%s: %s (%s)", what, rd_kafka_err2str(err), rd_kafka_err2name(err));
}

/*
 * build_record
 *		The record of a message for the transaction thread (malloc'd).
 *		NULL with *problem for a message that cannot be sent.
 */
static KafkaRecord *
build_record(uint64 token, const char *topic, const EoMessage *msg, const char *id,
			 const char **problem)
{
	KafkaRecord *r;
	rd_kafka_headers_t *h = message_headers(msg, id, problem);
	const char *body;

	if (h == NULL)
		return NULL;
	if (msg->payload_text != NULL)
		body = msg->payload_text;
	else
		body = msg->payload ? JsonbToCString(NULL, &msg->payload->root, VARSIZE(msg->payload)) :
			"null";
	r = calloc(1, sizeof(KafkaRecord));
	if (r == NULL)
	{
		rd_kafka_headers_destroy(h);
		*problem = "out of memory";
		return NULL;
	}
	r->token = token;
	r->headers = h;
	r->topic = strdup(topic);
	r->key = msg->key ? strdup(msg->key) : NULL;
	r->value_len = strlen(body);
	r->value = malloc(r->value_len + 1);
	if (r->value != NULL)
		memcpy(r->value, body, r->value_len + 1);
	if (r->topic == NULL || r->value == NULL || (msg->key != NULL && r->key == NULL))
	{
		eo_kafka_record_free(r);
		*problem = "out of memory";
		return NULL;
	}
	return r;
}

/*
 * kafka_start
 *		Produce one message (default mode), or keep its record for the
 *		next transaction (exactly_once; finished at once as delivered if
 *		the position read back from Kafka lists it).  A message that
 *		cannot be sent finishes at once.
 */
static void
kafka_start(SinkSend *send, const DestinationConfig *dest, const EoMessage *msg)
{
	KafkaOptions *o = KAFKA_OPTIONS(dest);
	MemoryContext old;
	KafkaPub   *pub;
	KafkaProducer *p;
	char	   *error = NULL;
	const char *topic = o->topic ? o->topic : msg->topic;
	char	   *id = eo_uuid_to_cstring(&msg->id);
	const char *problem = NULL;
	SinkPendingEntry *e;
	bool		found;

	kafka_init();
	old = MemoryContextSwitchTo(kafka_cxt);
	pub = palloc0(sizeof(KafkaPub));
	MemoryContextSwitchTo(old);
	pub->send = send;
	pub->started = GetCurrentTimestamp();
	send->private = pub;

	if (!eo_kafka_topic_ok(topic))
	{
		finish(send, SINK_PERMANENT,
			   psprintf("topic \"%s\" is not a valid Kafka topic name (set the destination's option \"topic\")",
						msg->topic), NULL);
		return;
	}
	p = producer_for(dest, &error);
	if (p == NULL)
	{
		finish(send, SINK_RETRY, error, NULL);
		return;
	}
	pub->producer = p;
	pub->token = next_token++;
	p->last_used = pub->started;

	if (p->txn != NULL)
	{
		p->recorded_upto = Max(p->recorded_upto, send->recorded_seq);
		if (p->position_loaded && eo_kafka_position_has(p->position, &msg->id))
		{
			finish(send, SINK_DELIVERED, NULL, "already in a committed Kafka transaction");
			return;
		}
		pub->record = build_record(pub->token, topic, msg, id, &problem);
		if (pub->record == NULL)
		{
			bool		oom = (problem == NULL || strcmp(problem, "out of memory") == 0);

			finish(send, oom ? SINK_RETRY : SINK_PERMANENT, oom ? "out of memory" : problem, NULL);
			return;
		}
		old = MemoryContextSwitchTo(kafka_cxt);
		p->waiting = lappend(p->waiting, pub);
		MemoryContextSwitchTo(old);
	}
	else
	{
		rd_kafka_headers_t *h = message_headers(msg, id, &problem);
		const char *body;
		rd_kafka_resp_err_t err;

		if (h == NULL)
		{
			finish(send, SINK_PERMANENT, problem, NULL);
			return;
		}
		if (msg->payload_text != NULL)
			body = msg->payload_text;
		else
			body = msg->payload ? JsonbToCString(NULL, &msg->payload->root, VARSIZE(msg->payload)) :
				"null";
		err = rd_kafka_producev(p->rk,
								RD_KAFKA_V_TOPIC(topic),
								RD_KAFKA_V_KEY(msg->key, msg->key ? strlen(msg->key) : 0),
								RD_KAFKA_V_VALUE((void *) body, strlen(body)),
								RD_KAFKA_V_HEADERS(h),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_OPAQUE((void *) (uintptr_t) pub->token),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			rd_kafka_headers_destroy(h);
			finish(send, permanent_error(err) ? SINK_PERMANENT : SINK_RETRY,
				   kafka_error_text("could not produce the record", err), NULL);
			return;
		}
	}
	e = hash_search(pending, &pub->token, HASH_ENTER, &found);
	e->pub = pub;
	pub->waiting = true;
	p->nsends++;
}

/* Classify a delivery report (default mode). */
static void
classify_report(KafkaPub *pub)
{
	if (pub->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		finish(pub->send, SINK_DELIVERED, NULL,
			   psprintf("partition %d offset " INT64_FORMAT, pub->partition, pub->offset));
	else
		finish(pub->send, permanent_error(pub->err) ? SINK_PERMANENT : SINK_RETRY,
			   kafka_error_text(pub->status == RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED ?
								"Kafka did not acknowledge the record (it may have it: it is sent again with the same eo-id)" :
								"Kafka did not take the record", pub->err),
			   NULL);
}

/*
 * submit_batch
 *		Hand the waiting sends of an idle transaction thread over as one
 *		batch, with the position record listing them and what Kafka has
 *		but the database may not have recorded.
 */
static void
submit_batch(KafkaProducer *p)
{
	int			n = list_length(p->waiting);
	pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * n);
	int64	   *seqs = palloc(sizeof(int64) * n);
	KafkaRecord *head = NULL;
	KafkaRecord **tail = &head;
	char	   *position;
	ListCell   *lc;
	int			i = 0;

	eo_kafka_position_prune(p->position, p->recorded_upto);
	foreach(lc, p->waiting)
	{
		KafkaPub   *pub = lfirst(lc);

		ids[i] = pub->send->msg_id;
		seqs[i] = pub->send->seq;
		i++;
	}
	position = eo_kafka_position_text(p->position, ids, seqs, n);
	pfree(ids);
	pfree(seqs);
	if (position == NULL)
		return;					/* out of memory: try again on the next round */
	foreach(lc, p->waiting)
	{
		KafkaPub   *pub = lfirst(lc);

		*tail = pub->record;
		tail = &pub->record->next;
		pub->record = NULL;
	}
	if (!eo_kafka_txn_submit(p->txn, head, position))
	{
		/* Not idle after all: take the records back. */
		foreach(lc, p->waiting)
		{
			KafkaPub   *pub = lfirst(lc);

			pub->record = head;
			head = head->next;
			pub->record->next = NULL;
		}
		free(position);
		return;
	}
	list_free(p->in_batch);
	p->in_batch = p->waiting;
	p->waiting = NIL;
}

/*
 * batch_finished
 *		A batch's result: delivered and added to the position when
 *		committed; else retried (dead for a record Kafka refuses for good).
 */
static void
batch_finished(KafkaProducer *p, KafkaRecord *batch, KafkaTxnResult result,
			   const char *error, dlist_head *done)
{
	int64		max_seq = 0;

	for (KafkaRecord *r = batch; r != NULL; r = r->next)
	{
		SinkPendingEntry *e = hash_search(pending, &r->token, HASH_FIND, NULL);
		KafkaPub   *pub;

		if (e == NULL)
			continue;			/* released meanwhile */
		pub = e->pub;
		if (result == TXN_COMMITTED)
		{
			eo_kafka_position_add(p->position, &pub->send->msg_id, pub->send->seq, 0);
			max_seq = Max(max_seq, pub->send->seq);
			finish(pub->send, SINK_DELIVERED, NULL, "committed in a Kafka transaction");
		}
		else if (permanent_error(r->err))
			finish(pub->send, SINK_PERMANENT, kafka_error_text("Kafka refused the record", r->err), NULL);
		else
			finish(pub->send, SINK_RETRY,
				   error ? error : "the Kafka transaction was aborted", NULL);
		to_done(pub, done);
	}
	if (result == TXN_COMMITTED)
		eo_kafka_position_tag(p->position, max_seq);
	eo_kafka_record_free(batch);
	list_free(p->in_batch);
	p->in_batch = NIL;
}

/*
 * collect_txn
 *		One transactional producer: take in the position read back, the
 *		finished batch, and hand over the next one.  Returns false if the
 *		producer broke (the caller drops it).
 */
static bool
collect_txn(KafkaProducer *p, dlist_head *done)
{
	char	   *position = NULL;
	char	   *error = NULL;
	KafkaTxnState st = eo_kafka_txn_state(p->txn, &position, &error);
	ListCell   *lc;

	if (p->not_ready != NULL)
		pfree(p->not_ready);
	p->not_ready = NULL;
	if (error != NULL)
	{
		p->not_ready = MemoryContextStrdup(kafka_cxt, error);
		free(error);
	}
	if (st != TXN_STARTING && !p->position_loaded)
	{
		p->position_loaded = true;
		if (position != NULL)
		{
			int			n = eo_kafka_position_load(p->position, position);

			ereport(LOG,
					(errmsg("eo_processing relay: kafka destination %d: %d messages are already in committed Kafka transactions",
							p->dest_id, Max(n, 0))));
			free(position);
		}
		foreach(lc, p->waiting)
		{
			KafkaPub   *pub = lfirst(lc);

			if (eo_kafka_position_has(p->position, &pub->send->msg_id))
			{
				eo_kafka_record_free(pub->record);
				pub->record = NULL;
				finish(pub->send, SINK_DELIVERED, NULL, "already in a committed Kafka transaction");
				to_done(pub, done);
				p->waiting = foreach_delete_current(p->waiting, lc);
			}
		}
	}
	if (st == TXN_DONE)
	{
		KafkaTxnResult result = TXN_ABORTED;
		KafkaRecord *batch = eo_kafka_txn_take_result(p->txn, &result, &error);

		batch_finished(p, batch, result, error, done);
		free(error);
		if (result == TXN_FATAL)
			st = TXN_BROKEN;
		else
			st = TXN_IDLE;
	}
	if (st == TXN_BROKEN)
		return false;
	if (st == TXN_STARTING)
	{
		/* Not ready (the cluster may be unreachable): retry on schedule. */
		TimestampTz limit = GetCurrentTimestamp() - (TimestampTz) KAFKA_NOT_READY_MS * 1000;

		foreach(lc, p->waiting)
		{
			KafkaPub   *pub = lfirst(lc);

			if (pub->started > limit)
				continue;
			eo_kafka_record_free(pub->record);
			pub->record = NULL;
			finish(pub->send, SINK_RETRY,
				   psprintf("the Kafka transactional producer was not ready within %d ms%s%s",
							KAFKA_NOT_READY_MS, p->not_ready ? ": " : "",
							p->not_ready ? p->not_ready : ""), NULL);
			to_done(pub, done);
			p->waiting = foreach_delete_current(p->waiting, lc);
		}
	}
	if (st == TXN_IDLE && p->waiting != NIL)
		submit_batch(p);
	return true;
}

/*
 * kafka_collect
 *		On the relay's thread: drain the self-pipe, serve the default-mode
 *		producers' delivery reports, move transactional batches along,
 *		drop producers that failed fatally, and finish the sends whose
 *		producer is gone.
 */
static void
kafka_collect(dlist_head *done)
{
	KafkaProducer *p;
	KafkaProducer *next;
	HASH_SEQ_STATUS seq;
	SinkPendingEntry *e;

	if (!kafka_ready)
		return;
	eo_sink_wake_drain(&wake_pipe);
	for (p = producers; p != NULL; p = next)
	{
		next = p->next;
		if (p->rk != NULL)
		{
			(void) rd_kafka_poll(p->rk, 0);
			while (reported_head != NULL)
			{
				KafkaPub   *pub = reported_head;

				reported_head = pub->next_reported;
				classify_report(pub);
				to_done(pub, done);
			}
			if (p->fatal)
			{
				char		reason[512];
				rd_kafka_resp_err_t err = rd_kafka_fatal_error(p->rk, reason, sizeof(reason));

				ereport(LOG,
						(errmsg("eo_processing relay: the producer of kafka destination %d failed: %s (%s); it is made anew",
								p->dest_id, reason, rd_kafka_err2name(err))));
				producer_drop(p);
				continue;
			}
		}
		else if (p->txn != NULL && !collect_txn(p, done))
		{
			ereport(LOG,
					(errmsg("eo_processing relay: the transactional producer of kafka destination %d failed: %s; it is made anew",
							p->dest_id, p->not_ready ? p->not_ready : "fatal error")));
			producer_drop(p);
			continue;
		}
		/* Unused for long (its destination dropped or idle): close it. */
		if (p->nsends == 0 && p->waiting == NIL &&
			GetCurrentTimestamp() - p->last_used > (TimestampTz) KAFKA_IDLE_CLOSE_MS * 1000)
			producer_drop(p);
	}
	hash_seq_init(&seq, pending);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		KafkaPub   *pub = e->pub;

		if (pub->producer != NULL)
			continue;
		finish(pub->send, SINK_RETRY,
			   "the Kafka producer was replaced (options changed or a fatal error) while the message was on its way",
			   NULL);
		to_done(e->pub, done);	/* removing the current entry is allowed */
	}
}

/*
 * The self-pipe; while something is on its way, wake at least every
 * KAFKA_WAIT_SLICE_MS (io events are edge-triggered on librdkafka's side).
 * Transactional producers get their next batch here, once the relay has
 * started every send it could: the batch is as large as it gets.
 */
static int
kafka_wait_sockets(const SinkSocket **out, uint64 *generation, long *timeout_ms)
{
	*generation = 1;
	if (!kafka_ready)
	{
		*out = NULL;
		return 0;
	}
	/* Before the relay waits: hand what start() queued to idle threads. */
	for (KafkaProducer *p = producers; p != NULL; p = p->next)
	{
		if (p->txn != NULL && p->position_loaded && p->waiting != NIL)
			submit_batch(p);
	}
	*out = &wake_pipe.socket;
	if (hash_get_num_entries(pending) > 0)
		*timeout_ms = Min(*timeout_ms, KAFKA_WAIT_SLICE_MS);
	return 1;
}

/* Nothing to do on events: collect() drains the pipe and the queues. */
static void
kafka_handle_events(WaitEvent *events, int nevents)
{
}

/* Free a send's state, finished or not (a late report is then dropped). */
static void
kafka_release(SinkSend *send)
{
	KafkaPub   *pub = send->private;

	if (pub == NULL)
		return;
	if (pub->waiting)
		(void) hash_search(pending, &pub->token, HASH_REMOVE, NULL);
	pub_leave(pub);
	if (pub->producer != NULL && pub->record != NULL)
		pub->producer->waiting = list_delete_ptr(pub->producer->waiting, pub);
	if (pub->record != NULL)
		eo_kafka_record_free(pub->record);
	for (KafkaPub **link = &reported_head; *link != NULL; link = &(*link)->next_reported)
	{
		if (*link == pub)
		{
			*link = pub->next_reported;
			break;
		}
	}
	pfree(pub);
	send->private = NULL;
}

/* Only superusers and the extension's owner say where the relay connects. */
static void
kafka_may_configure(void)
{
	eo_check_may_configure_kind("kafka");
}

const SinkRoutine eo_kafka_sink = {
	.kind = "kafka",
	.option_names = "bootstrap_servers, topic, exactly_once, positions_topic, properties, "
	"concurrency, max_attempts and retry_delays",
	.init_options = eo_kafka_init_options,
	.parse_option = eo_parse_kafka_option,
	.check_options = eo_kafka_check_options,
	.may_configure = kafka_may_configure,
	.check_target = NULL,
	.default_retry_delays = NULL,
	.default_concurrency = KAFKA_DEFAULT_CONCURRENCY,
	.logs_attempts = false,
	.deliver = NULL,
	.start = kafka_start,
	.wait_sockets = kafka_wait_sockets,
	.handle_events = kafka_handle_events,
	.collect = kafka_collect,
	.release = kafka_release,
};
