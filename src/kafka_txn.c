/*-------------------------------------------------------------------------
 *
 * kafka_txn.c
 *	  The transaction thread of a kafka destination in exactly_once mode.
 *
 *	  librdkafka's transactional calls (init, commit, abort) block until
 *	  the transaction coordinator answers, so they never run on the
 *	  relay's thread.  Each transactional producer has one thread of ours
 *	  that:
 *	  1. calls init_transactions (which, on a real cluster, fences an
 *		 older producer with the same transactional.id and finishes its
 *		 open transaction);
 *	  2. if the positions topic is not there, asks for it (1 partition,
 *		 cleanup.policy=compact; an error is ignored: the cluster may
 *		 create it when it is first written);
 *	  3. reads the last position record of its transactional.id back with
 *		 a read_committed reader, and hands it to the relay's thread;
 *	  4. then, for every batch the relay hands it: begin, produce the
 *		 records and the position record, commit; abort on an abortable
 *		 error.  The result goes back to the relay's thread.
 *
 *	  Nothing of PostgreSQL runs here (no palloc, no elog): the batch, its
 *	  records and every string crossing threads are malloc'd.  The relay's
 *	  thread and this one meet only under the KafkaTxn's mutex; the thread
 *	  wakes the relay by writing a byte to the sink's self-pipe.  A retired
 *	  KafkaTxn is freed by its own thread when it leaves, with the
 *	  producer (purged first, so that destroying it does not wait).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "kafka_txn.h"

#define TXN_INIT_TIMEOUT_MS		10000
#define TXN_COMMIT_TIMEOUT_MS	30000
#define TXN_ABORT_TIMEOUT_MS	10000
#define TXN_READ_TIMEOUT_MS		15000
#define TXN_RETRY_WAIT_MS		500
#define TXN_COMMIT_TRIES		3

struct KafkaTxn
{
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Set at start, then read-only. */
	rd_kafka_t *rk;
	rd_kafka_conf_t *reader_conf;	/* consumed by the position read */
	char	   *txn_id;
	char	   *positions_topic;
	int			wake_fd;
	int32_t		position_partition;
	/* Under lock. */
	KafkaTxnState state;
	bool		stop;			/* retired: leave and free everything */
	KafkaRecord *batch;			/* handed over, or the finished batch */
	char	   *position;		/* the batch's position record value */
	KafkaTxnResult result;
	char	   *error;			/* the last failure's text */
	char	   *loaded;			/* the position read back (NULL: none) */
	bool		loaded_taken;
};

static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static int	threads_running = 0;

/* Wake the relay (any thread; a full pipe already holds a wake-up). */
static void
txn_wake(KafkaTxn *t)
{
	char		byte = 0;

	if (write(t->wake_fd, &byte, 1) < 0)
		return;
}

/* Replace t->error with a copy of "text" (lock held). */
static void
set_error(KafkaTxn *t, const char *what, const char *text)
{
	char		buf[1024];

	snprintf(buf, sizeof(buf), "%s: %s", what, text);
	free(t->error);
	t->error = strdup(buf);
}

/* Sleep up to ms, or until retired; true if retired (lock not held). */
static bool
txn_pause(KafkaTxn *t, int ms)
{
	struct timespec until;
	bool		stop;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long) (ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L)
	{
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&t->lock);
	if (!t->stop)
		(void) pthread_cond_timedwait(&t->cond, &t->lock, &until);
	stop = t->stop;
	pthread_mutex_unlock(&t->lock);
	return stop;
}

/* Free a record list (any thread). */
void
eo_kafka_record_free(KafkaRecord *r)
{
	while (r != NULL)
	{
		KafkaRecord *next = r->next;

		if (r->headers != NULL)
			rd_kafka_headers_destroy(r->headers);
		free(r->topic);
		free(r->key);
		free(r->value);
		free(r);
		r = next;
	}
}

/*
 * ensure_positions_topic
 *		Ask the cluster to create the positions topic, compacted, with one
 *		partition; waits up to 3 s.  Errors (it exists, not allowed, not
 *		supported) are ignored: producing to it will tell.
 */
static void
ensure_positions_topic(KafkaTxn *t)
{
	char		errstr[256];
	rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(t->positions_topic, 1, -1,
													errstr, sizeof(errstr));
	rd_kafka_queue_t *q;
	rd_kafka_event_t *ev;

	if (nt == NULL)
		return;
	(void) rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
	q = rd_kafka_queue_new(t->rk);
	rd_kafka_CreateTopics(t->rk, &nt, 1, NULL, q);
	ev = rd_kafka_queue_poll(q, 3000);
	if (ev != NULL)
		rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
	rd_kafka_NewTopic_destroy(nt);
}

/* The partition of the positions topic that holds our records, or -1. */
static int32_t
position_partition(KafkaTxn *t, char *error, size_t errlen)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(t->rk, t->positions_topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err;
	int32_t		p = -1;

	if (rkt == NULL)
	{
		snprintf(error, errlen, "could not use topic \"%s\"", t->positions_topic);
		return -1;
	}
	err = rd_kafka_metadata(t->rk, 0, rkt, &md, 5000);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		snprintf(error, errlen, "%s", rd_kafka_err2str(err));
	else if (md->topic_cnt != 1 || md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR ||
			 md->topics[0].partition_cnt < 1)
		snprintf(error, errlen, "topic \"%s\" is not available: %s", t->positions_topic,
				 md->topic_cnt == 1 ? rd_kafka_err2str(md->topics[0].err) : "no metadata");
	else
		p = rd_kafka_msg_partitioner_consistent(rkt, t->txn_id, strlen(t->txn_id),
												md->topics[0].partition_cnt, NULL, NULL);
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return p;
}

/*
 * read_position
 *		Read our partition of the positions topic with a read_committed
 *		reader (the legacy simple consumer: no group), and keep the value
 *		of the last record whose key is our transactional.id.  Returns
 *		false on failure (error set); *out is NULL when there is none.
 */
static bool
read_position(KafkaTxn *t, char **out, char *error, size_t errlen)
{
	rd_kafka_t *rc;
	rd_kafka_topic_t *rkt;
	int64_t		low = 0;
	int64_t		high = 0;
	rd_kafka_resp_err_t err;
	bool		ok = false;
	struct timespec start;
	struct timespec now;
	char		errstr[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_dup(t->reader_conf);

	*out = NULL;
	rc = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rc == NULL)
	{
		rd_kafka_conf_destroy(conf);
		snprintf(error, errlen, "could not create the position reader: %s", errstr);
		return false;
	}
	err = rd_kafka_query_watermark_offsets(rc, t->positions_topic, t->position_partition,
										   &low, &high, 5000);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		snprintf(error, errlen, "could not read the offsets of topic \"%s\": %s",
				 t->positions_topic, rd_kafka_err2str(err));
		rd_kafka_destroy(rc);
		return false;
	}
	if (high <= low)
	{
		rd_kafka_destroy(rc);
		return true;
	}
	rkt = rd_kafka_topic_new(rc, t->positions_topic, NULL);
	if (rkt == NULL || rd_kafka_consume_start(rkt, t->position_partition, low) != 0)
	{
		snprintf(error, errlen, "could not read topic \"%s\"", t->positions_topic);
		if (rkt != NULL)
			rd_kafka_topic_destroy(rkt);
		rd_kafka_destroy(rc);
		return false;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	snprintf(error, errlen, "topic \"%s\" was not read to its end within %d ms",
			 t->positions_topic, TXN_READ_TIMEOUT_MS);
	for (;;)
	{
		rd_kafka_message_t *m = rd_kafka_consume(rkt, t->position_partition, 200);
		bool		last = false;

		if (m != NULL)
		{
			if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
				last = true;
			else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
			{
				if (m->key_len == strlen(t->txn_id) &&
					memcmp(m->key, t->txn_id, m->key_len) == 0)
				{
					free(*out);
					*out = m->payload ? strndup(m->payload, m->len) : NULL;
				}
				last = (m->offset >= high - 1);
			}
			rd_kafka_message_destroy(m);
		}
		if (last)
		{
			ok = true;
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 >
			TXN_READ_TIMEOUT_MS)
			break;
		pthread_mutex_lock(&t->lock);
		if (t->stop)
		{
			pthread_mutex_unlock(&t->lock);
			break;
		}
		pthread_mutex_unlock(&t->lock);
	}
	rd_kafka_consume_stop(rkt, t->position_partition);
	rd_kafka_topic_destroy(rkt);
	rd_kafka_destroy(rc);
	if (!ok)
	{
		free(*out);
		*out = NULL;
	}
	return ok;
}

/*
 * finish_error
 *		After a failed transactional call: abort if the error asks for it.
 *		Returns the batch's result.  Frees "e".
 */
static KafkaTxnResult
finish_error(KafkaTxn *t, rd_kafka_error_t *e, const char *what)
{
	KafkaTxnResult r = TXN_ABORTED;

	pthread_mutex_lock(&t->lock);
	set_error(t, what, rd_kafka_error_string(e));
	pthread_mutex_unlock(&t->lock);
	if (rd_kafka_error_is_fatal(e))
		r = TXN_FATAL;
	else if (rd_kafka_error_txn_requires_abort(e))
	{
		rd_kafka_error_t *ae = rd_kafka_abort_transaction(t->rk, TXN_ABORT_TIMEOUT_MS);

		if (ae != NULL)
		{
			/* The transaction stays open: only a new producer gets past it. */
			r = TXN_FATAL;
			rd_kafka_error_destroy(ae);
		}
	}
	else
	{
		/* Retriable: the transaction may still be open; abort it. */
		rd_kafka_error_t *ae = rd_kafka_abort_transaction(t->rk, TXN_ABORT_TIMEOUT_MS);

		if (ae != NULL)
		{
			r = rd_kafka_error_is_fatal(ae) ? TXN_FATAL : TXN_ABORTED;
			if (!rd_kafka_error_is_fatal(ae) && !rd_kafka_error_txn_requires_abort(ae))
				r = TXN_FATAL;	/* the state is unknown: start over */
			rd_kafka_error_destroy(ae);
		}
	}
	rd_kafka_error_destroy(e);
	return r;
}

/*
 * abort_after
 *		A record of the open transaction could not be produced: note why
 *		and abort.  TXN_ABORTED, or TXN_FATAL if even the abort failed.
 */
static KafkaTxnResult
abort_after(KafkaTxn *t, const char *what, rd_kafka_resp_err_t err)
{
	rd_kafka_error_t *e;

	pthread_mutex_lock(&t->lock);
	set_error(t, what, rd_kafka_err2str(err));
	pthread_mutex_unlock(&t->lock);
	e = rd_kafka_abort_transaction(t->rk, TXN_ABORT_TIMEOUT_MS);
	if (e != NULL)
	{
		rd_kafka_error_destroy(e);
		return TXN_FATAL;
	}
	return TXN_ABORTED;
}

/*
 * run_batch
 *		One Kafka transaction: the batch's records and the position
 *		record, committed together.  Per-record errors land in the
 *		records (the delivery report callback, on this thread).
 */
static KafkaTxnResult
run_batch(KafkaTxn *t, KafkaRecord *batch, const char *position)
{
	rd_kafka_error_t *e;
	rd_kafka_resp_err_t err;

	e = rd_kafka_begin_transaction(t->rk);
	if (e != NULL)
		return finish_error(t, e, "could not begin a Kafka transaction");
	for (KafkaRecord *r = batch; r != NULL; r = r->next)
	{
		err = rd_kafka_producev(t->rk,
								RD_KAFKA_V_TOPIC(r->topic),
								RD_KAFKA_V_KEY(r->key, r->key ? strlen(r->key) : 0),
								RD_KAFKA_V_VALUE(r->value, r->value_len),
								RD_KAFKA_V_HEADERS(r->headers),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_OPAQUE(r),
								RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			r->headers = NULL;	/* librdkafka owns them now */
		else
		{
			r->err = err;
			return abort_after(t, "could not produce a record", err);
		}
	}
	err = rd_kafka_producev(t->rk,
							RD_KAFKA_V_TOPIC(t->positions_topic),
							RD_KAFKA_V_PARTITION(t->position_partition),
							RD_KAFKA_V_KEY(t->txn_id, strlen(t->txn_id)),
							RD_KAFKA_V_VALUE((void *) position, strlen(position)),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_END);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		return abort_after(t, "could not produce the position record", err);
	for (int tries = 1;; tries++)
	{
		e = rd_kafka_commit_transaction(t->rk, TXN_COMMIT_TIMEOUT_MS);
		if (e == NULL)
			return TXN_COMMITTED;
		if (tries < TXN_COMMIT_TRIES && rd_kafka_error_is_retriable(e))
		{
			rd_kafka_error_destroy(e);
			continue;
		}
		return finish_error(t, e, "could not commit the Kafka transaction");
	}
}

/*
 * txn_exit
 *		Leave the thread once the relay let go (retired): free the producer
 *		and everything else.  A broken thread waits here for that.
 */
static void *
txn_exit(KafkaTxn *t)
{
	pthread_mutex_lock(&t->lock);
	while (!t->stop)
		pthread_cond_wait(&t->cond, &t->lock);
	pthread_mutex_unlock(&t->lock);
	{
		(void) rd_kafka_purge(t->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_destroy(t->rk);
		if (t->reader_conf != NULL)
			rd_kafka_conf_destroy(t->reader_conf);
		eo_kafka_record_free(t->batch);
		free(t->position);
		free(t->error);
		free(t->loaded);
		free(t->txn_id);
		free(t->positions_topic);
		pthread_cond_destroy(&t->cond);
		pthread_mutex_destroy(&t->lock);
		free(t);
	}
	pthread_mutex_lock(&count_lock);
	threads_running--;
	pthread_mutex_unlock(&count_lock);
	return NULL;
}

/*
 * txn_main
 *		The thread: initialise (retrying what can be retried), read the
 *		position back, then run batches until retired or broken.
 */
static void *
txn_main(void *arg)
{
	KafkaTxn   *t = arg;
	char		error[512];
	char	   *loaded = NULL;

	for (;;)
	{
		rd_kafka_error_t *e = rd_kafka_init_transactions(t->rk, TXN_INIT_TIMEOUT_MS);
		bool		broken;

		if (e == NULL)
			break;
		broken = !rd_kafka_error_is_retriable(e);
		pthread_mutex_lock(&t->lock);
		set_error(t, "could not initialise Kafka transactions", rd_kafka_error_string(e));
		if (broken)
			t->state = TXN_BROKEN;
		pthread_mutex_unlock(&t->lock);
		rd_kafka_error_destroy(e);
		if (broken)
		{
			txn_wake(t);
			return txn_exit(t);
		}
		if (txn_pause(t, TXN_RETRY_WAIT_MS))
			return txn_exit(t);
	}
	for (int tries = 0;; tries++)
	{
		t->position_partition = position_partition(t, error, sizeof(error));
		if (t->position_partition < 0 && tries == 0)
		{
			ensure_positions_topic(t);
			continue;
		}
		if (t->position_partition >= 0 && read_position(t, &loaded, error, sizeof(error)))
			break;
		pthread_mutex_lock(&t->lock);
		set_error(t, "could not read the relay's position back from Kafka", error);
		pthread_mutex_unlock(&t->lock);
		if (txn_pause(t, TXN_RETRY_WAIT_MS))
			return txn_exit(t);
	}

	pthread_mutex_lock(&t->lock);
	t->loaded = loaded;
	t->state = TXN_IDLE;
	pthread_mutex_unlock(&t->lock);
	txn_wake(t);

	for (;;)
	{
		KafkaRecord *batch;
		char	   *position;
		KafkaTxnResult r;

		pthread_mutex_lock(&t->lock);
		while (!t->stop && t->state != TXN_BUSY)
			pthread_cond_wait(&t->cond, &t->lock);
		if (t->stop)
		{
			pthread_mutex_unlock(&t->lock);
			break;
		}
		batch = t->batch;
		position = t->position;
		pthread_mutex_unlock(&t->lock);

		r = run_batch(t, batch, position);

		pthread_mutex_lock(&t->lock);
		t->result = r;
		t->state = TXN_DONE;
		pthread_mutex_unlock(&t->lock);
		txn_wake(t);
		if (r == TXN_FATAL)
			break;
	}
	return txn_exit(t);
}

/*
 * eo_kafka_txn_start
 *		Start the transaction thread of a transactional producer (the
 *		relay's thread).  Takes ownership of rk and reader_conf on
 *		success.  NULL with *error (malloc'd) if no thread could start.
 */
KafkaTxn *
eo_kafka_txn_start(rd_kafka_t *rk, rd_kafka_conf_t *reader_conf, const char *txn_id,
				   const char *positions_topic, int wake_fd, char **error)
{
	KafkaTxn   *t = calloc(1, sizeof(KafkaTxn));
	pthread_t	th;
	pthread_attr_t attr;
	bool		ok;

	if (t == NULL)
	{
		*error = strdup("out of memory");
		return NULL;
	}
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	t->rk = rk;
	t->reader_conf = reader_conf;
	t->txn_id = strdup(txn_id);
	t->positions_topic = strdup(positions_topic);
	t->wake_fd = wake_fd;
	t->state = TXN_STARTING;
	if (t->txn_id == NULL || t->positions_topic == NULL)
	{
		free(t->txn_id);
		free(t->positions_topic);
		free(t);
		*error = strdup("out of memory");
		return NULL;
	}
	pthread_mutex_lock(&count_lock);
	threads_running++;
	pthread_mutex_unlock(&count_lock);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	ok = (pthread_create(&th, &attr, txn_main, t) == 0);
	pthread_attr_destroy(&attr);
	if (!ok)
	{
		pthread_mutex_lock(&count_lock);
		threads_running--;
		pthread_mutex_unlock(&count_lock);
		free(t->txn_id);
		free(t->positions_topic);
		free(t);
		*error = strdup("could not start a thread for Kafka transactions");
		return NULL;
	}
	return t;
}

/*
 * eo_kafka_txn_state
 *		Where the thread stands.  The first time it is past TXN_STARTING,
 *		*position gets the position it read back (malloc'd, the caller
 *		frees it; NULL: none), else NULL.  *error gets a malloc'd copy of
 *		the last failure's text, or NULL.
 */
KafkaTxnState
eo_kafka_txn_state(KafkaTxn *t, char **position, char **error)
{
	KafkaTxnState s;

	pthread_mutex_lock(&t->lock);
	s = t->state;
	*position = NULL;
	if (s != TXN_STARTING && !t->loaded_taken)
	{
		*position = t->loaded;
		t->loaded = NULL;
		t->loaded_taken = true;
	}
	*error = t->error ? strdup(t->error) : NULL;
	pthread_mutex_unlock(&t->lock);
	return s;
}

/*
 * eo_kafka_txn_submit
 *		Hand a batch (malloc'd records) and its position record's value
 *		(malloc'd) to an idle thread; false (nothing taken) if it is not
 *		idle.
 */
bool
eo_kafka_txn_submit(KafkaTxn *t, KafkaRecord *records, char *position)
{
	bool		ok;

	pthread_mutex_lock(&t->lock);
	ok = (t->state == TXN_IDLE);
	if (ok)
	{
		t->batch = records;
		t->position = position;
		t->state = TXN_BUSY;
		pthread_cond_signal(&t->cond);
	}
	pthread_mutex_unlock(&t->lock);
	return ok;
}

/*
 * eo_kafka_txn_take_result
 *		The finished batch (the caller owns and frees it) and its result;
 *		the thread is idle again unless the result is fatal.  NULL if no
 *		batch has finished.  *error: a malloc'd copy of the failure's text.
 */
KafkaRecord *
eo_kafka_txn_take_result(KafkaTxn *t, KafkaTxnResult *result, char **error)
{
	KafkaRecord *batch = NULL;

	*error = NULL;
	pthread_mutex_lock(&t->lock);
	if (t->state == TXN_DONE)
	{
		batch = t->batch;
		*result = t->result;
		*error = (t->result != TXN_COMMITTED && t->error) ? strdup(t->error) : NULL;
		t->batch = NULL;
		free(t->position);
		t->position = NULL;
		t->state = t->result == TXN_FATAL ? TXN_BROKEN : TXN_IDLE;
	}
	pthread_mutex_unlock(&t->lock);
	return batch;
}

/*
 * eo_kafka_txn_retire
 *		Let go of a thread and its producer (the relay's thread, never
 *		blocking): the thread frees everything when it leaves, including
 *		a batch it still holds.
 */
void
eo_kafka_txn_retire(KafkaTxn *t)
{
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
}

/* Whether a transaction thread still runs (at exit: leave them be). */
bool
eo_kafka_txn_threads_running(void)
{
	bool		running;

	pthread_mutex_lock(&count_lock);
	running = threads_running > 0;
	pthread_mutex_unlock(&count_lock);
	return running;
}
