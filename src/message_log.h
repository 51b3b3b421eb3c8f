/*-------------------------------------------------------------------------
 *
 * message_log.h
 *	  The relay's log of routed messages and the cursors over it: see
 *	  message_log.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_MESSAGE_LOG_H
#define EO_MESSAGE_LOG_H

#include "postgres.h"

#include "executor/spi.h"
#include "nodes/pg_list.h"

#include "outbox.h"
#include "relay_config.h"

/* A message of the log, with its position. */
typedef struct LogMessage
{
	int64		seq;
	EoMessage	msg;
	int			ndests;			/* routing: destinations it goes to */
	int32	   *dests;
} LogMessage;

/* A destination's position in the log (eo.destination_stats). */
typedef struct LogCursor
{
	int32		dest_id;
	int64		delivered_seq;	/* everything up to here is done or parked */
	int64		sending_seq;	/* a window being sent ends here; 0: none */
} LogCursor;

extern Oid	eo_relation_oid(const char *name);
extern bool eo_log_objects_ready(void);
extern bool eo_log_lock(bool wait);
extern int64 eo_log_head(void);
/*
 * The claim's columns (message_log.c): the message at 1 to 7, as
 * eo_message_read_spi() reads it, then these.
 */
#define LOG_CLAIM_CTID 8
#define LOG_CLAIM_PUBLISHED_BY 9

extern int	eo_log_route(int limit, const RelayConfig **config, LogMessage **out);
extern List *eo_log_cursors(void);
extern LogCursor *eo_log_find_cursor(List *cursors, int32 dest_id);
extern int	eo_log_read(int32 dest_id, int64 after, int limit, LogMessage **out,
						int64 *covered);
extern int	eo_log_quarantine_head(const char *error);
extern void eo_log_forget_plans(void);

/* log_write.c: a routing batch into the log's current partition */
extern void eo_log_write(SPITupleTable *claimed, const LogMessage *msgs, int n, int16 slot);

/* outbox_vacuum.c: the relay vacuums the outbox it routes from */
extern void eo_outbox_note_routed(int n);
extern bool eo_outbox_vacuum_due(void);
extern ErrorData *eo_outbox_vacuum(void);

#endif							/* EO_MESSAGE_LOG_H */
