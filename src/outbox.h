/*-------------------------------------------------------------------------
 *
 * outbox.h
 *	  Messages of the transactional outbox: ids, the in-memory form the
 *	  relay works with, and the JSON envelope sinks deliver.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_OUTBOX_H
#define EO_OUTBOX_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "executor/tuptable.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/* A message, as read from eo.outbox or eo.message_log. */
typedef struct EoMessage
{
	pg_uuid_t	id;
	TimestampTz published_at;
	char	   *topic;
	char	   *key;			/* NULL when the message has no key */
	Jsonb	   *headers;		/* NULL when none */
	Jsonb	   *payload;		/* jsonb payload, or NULL */
	char	   *payload_text;	/* text payload, or NULL */
} EoMessage;

/* outbox.c */
extern void eo_uuidv7(pg_uuid_t *out, const pg_uuid_t *after);
extern void eo_message_from_slot(EoMessage *msg, TupleTableSlot *slot);

/* envelope.c */
extern char *eo_envelope(const EoMessage *msg, int max_bytes);
extern char *eo_uuid_to_cstring(const pg_uuid_t *id);
extern char *eo_iso_timestamp(TimestampTz ts);

#endif							/* EO_OUTBOX_H */
