/*-------------------------------------------------------------------------
 *
 * eo_processing.h
 *	  Declarations shared by the files of the eo_processing extension:
 *	  configuration variables, documented input limits and the argument
 *	  checking helpers every SQL-callable function uses.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_PROCESSING_H
#define EO_PROCESSING_H

#include "postgres.h"

#include "fmgr.h"
#include "utils/timestamp.h"

/* Schema that holds every object of the extension (non-relocatable). */
#define EO_SCHEMA_NAME "eo"

/*
 * Documented input limits, in bytes of the server encoding.  They keep every
 * key well inside the B-tree's per-tuple limit, so a long id is refused up
 * front with a clear message instead of failing inside an index insertion.
 */
#define EO_MAX_MSG_ID_BYTES		1024
#define EO_MAX_NAME_BYTES		256		/* consumer, producer names, topics */
#define EO_MAX_HEADERS_BYTES	4096	/* message headers, as stored */

/*
 * A retention period: "forever", or an interval added to the time a record
 * is written (calendar arithmetic, as timestamptz + interval).
 */
typedef struct EoRetention
{
	bool		forever;
	Interval	span;			/* positive; unused when forever */
} EoRetention;

/* GUC variables (eo_processing.c) */
extern EoRetention eo_dedup_retention;	/* eo.dedup_retention, parsed */

/* arguments.c */
extern text *eo_text_arg(FunctionCallInfo fcinfo, int argno,
						 const char *argname, int max_bytes);
extern bool eo_is_infinity_text(const char *value);
extern TimestampTz eo_expiry_from_interval(TimestampTz now,
										   const Interval *retain);
extern TimestampTz eo_expiry_default(TimestampTz now);

#endif							/* EO_PROCESSING_H */
