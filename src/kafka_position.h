/*-------------------------------------------------------------------------
 *
 * kafka_position.h
 *	  The set of messages committed in Kafka and perhaps not yet recorded
 *	  by the database, written as the position record of each Kafka
 *	  transaction in exactly_once mode (kafka_position.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_KAFKA_POSITION_H
#define EO_KAFKA_POSITION_H

#include "postgres.h"

#include "utils/hsearch.h"
#include "utils/uuid.h"

extern HTAB *eo_kafka_position_new(MemoryContext cxt);
extern void eo_kafka_position_add(HTAB *set, const pg_uuid_t *id, int64 seq, int64 tag);
extern bool eo_kafka_position_has(HTAB *set, const pg_uuid_t *id);
extern void eo_kafka_position_tag(HTAB *set, int64 log_seq);
extern void eo_kafka_position_prune(HTAB *set, int64 recorded_upto);
extern char *eo_kafka_position_text(HTAB *set, const pg_uuid_t *ids, const int64 *seqs, int n);
extern int	eo_kafka_position_load(HTAB *set, const char *text);

#endif							/* EO_KAFKA_POSITION_H */
