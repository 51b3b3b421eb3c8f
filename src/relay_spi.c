/*-------------------------------------------------------------------------
 *
 * relay_spi.c
 *	  Helpers for talking SQL through SPI, shared by the relay's files and
 *	  the sinks' SQL functions: saved plans, and reading a message out of
 *	  a result row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "relay.h"

/*
 * eo_relay_prepare
 *		Prepare and keep a plan (the statement text is a constant), for the
 *		relay and for the SQL functions of the sinks (eo.read(), ...);
 *		*plan caches it until eo_relay_free_plans() or the process ends.
 */
SPIPlanPtr
eo_relay_prepare(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "eo_processing: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/* Free kept plans (after an error they may refer to dropped objects). */
void
eo_relay_free_plans(SPIPlanPtr **plans, int nplans)
{
	for (int i = 0; i < nplans; i++)
	{
		if (*plans[i] != NULL)
			SPI_freeplan(*plans[i]);
		*plans[i] = NULL;
	}
}

/*
 * eo_message_read_spi
 *		Read an EoMessage from columns first..first+6 of an SPI row (id,
 *		published_at, topic, key, headers, payload, payload_text).  With
 *		"copy", the jsonb values are copied into the current memory context
 *		(so that the message outlives SPI_finish() when that context does);
 *		without, they may point into the row.  Strings are always palloc'd
 *		in the current context.
 */
void
eo_message_read_spi(EoMessage *msg, HeapTuple tup, TupleDesc desc, int first, bool copy)
{
	bool		isnull;
	Datum		d;

	memset(msg, 0, sizeof(EoMessage));
	msg->id = *DatumGetUUIDP(SPI_getbinval(tup, desc, first, &isnull));
	msg->published_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, first + 1, &isnull));
	msg->topic = TextDatumGetCString(SPI_getbinval(tup, desc, first + 2, &isnull));
	d = SPI_getbinval(tup, desc, first + 3, &isnull);
	msg->key = isnull ? NULL : TextDatumGetCString(d);
	d = SPI_getbinval(tup, desc, first + 4, &isnull);
	msg->headers = isnull ? NULL : copy ? DatumGetJsonbPCopy(d) : DatumGetJsonbP(d);
	d = SPI_getbinval(tup, desc, first + 5, &isnull);
	msg->payload = isnull ? NULL : copy ? DatumGetJsonbPCopy(d) : DatumGetJsonbP(d);
	d = SPI_getbinval(tup, desc, first + 6, &isnull);
	msg->payload_text = isnull ? NULL : TextDatumGetCString(d);
}

/* eo_message_read_spi with copies: the message outlives the SPI row. */
void
eo_message_from_spi(EoMessage *msg, HeapTuple tup, TupleDesc desc, int first)
{
	eo_message_read_spi(msg, tup, desc, first, true);
}
