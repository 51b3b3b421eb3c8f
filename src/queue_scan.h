/*-------------------------------------------------------------------------
 *
 * queue_scan.h
 *	  The candidate scan of eo.read(): see queue_scan.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_QUEUE_SCAN_H
#define EO_QUEUE_SCAN_H

#include "postgres.h"

#include "storage/itemptr.h"
#include "utils/timestamp.h"

extern int	eo_queue_pick(int32 dest_id, TimestampTz now, int wanted, ItemPointerData *tids);

#endif							/* EO_QUEUE_SCAN_H */
