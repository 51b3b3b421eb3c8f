/*-------------------------------------------------------------------------
 *
 * kafka_txn.h
 *	  The thread of a kafka destination in exactly_once mode (kafka_txn.c):
 *	  it runs librdkafka's blocking transactional calls and reads the
 *	  position back, away from the relay's loop.
 *
 *	  Everything handed to the thread is malloc'd; the relay's thread and
 *	  the transaction thread meet only under KafkaTxn's mutex.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_KAFKA_TXN_H
#define EO_KAFKA_TXN_H

#include "postgres.h"

#include <librdkafka/rdkafka.h>

/* One record of a batch (malloc'd with its strings; headers owned). */
typedef struct KafkaRecord
{
	struct KafkaRecord *next;
	uint64		token;			/* the send it belongs to */
	char	   *topic;
	char	   *key;			/* NULL: no key */
	char	   *value;
	size_t		value_len;
	rd_kafka_headers_t *headers;	/* given to librdkafka when produced */
	rd_kafka_resp_err_t err;	/* the delivery report's */
} KafkaRecord;

/* Where the thread stands. */
typedef enum KafkaTxnState
{
	TXN_STARTING,				/* init_transactions and the position read */
	TXN_IDLE,					/* ready for a batch */
	TXN_BUSY,					/* a batch is being written */
	TXN_DONE,					/* a batch's result waits for the relay */
	TXN_BROKEN					/* fatal: the producer must be replaced */
} KafkaTxnState;

/* How a batch ended. */
typedef enum KafkaTxnResult
{
	TXN_COMMITTED,
	TXN_ABORTED,				/* aborted (or never begun): retry it */
	TXN_FATAL					/* the producer is unusable */
} KafkaTxnResult;

typedef struct KafkaTxn KafkaTxn;

extern KafkaTxn *eo_kafka_txn_start(rd_kafka_t *rk, rd_kafka_conf_t *reader_conf,
									const char *txn_id, const char *positions_topic,
									int wake_fd, char **error);
extern KafkaTxnState eo_kafka_txn_state(KafkaTxn *t, char **position, char **error);
extern bool eo_kafka_txn_submit(KafkaTxn *t, KafkaRecord *records, char *position);
extern KafkaRecord *eo_kafka_txn_take_result(KafkaTxn *t, KafkaTxnResult *result,
											 char **error);
extern void eo_kafka_txn_retire(KafkaTxn *t);
extern bool eo_kafka_txn_threads_running(void);
extern void eo_kafka_record_free(KafkaRecord *r);

#endif							/* EO_KAFKA_TXN_H */
