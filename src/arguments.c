/*-------------------------------------------------------------------------
 *
 * arguments.c
 *	  Checking of the arguments every SQL-callable function receives, and
 *	  the conversion of a retention period into an expiry time.
 *
 *	  All checks run before anything is written, so a call with bad input
 *	  raises a clear error (with a SQLSTATE) and leaves no trace.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "eo_processing.h"

/*
 * eo_text_arg
 *		Return argument "argno" as text, refusing NULL, the empty string and
 *		values longer than max_bytes.
 *
 * The functions taking these arguments are not STRICT precisely so that a
 * NULL id is an error rather than a silent NULL result.  The returned
 * pointer may point into the caller's argument (no copy is made).
 */
text *
eo_text_arg(FunctionCallInfo fcinfo, int argno, const char *argname,
			int max_bytes)
{
	text	   *value;
	int			len;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));

	value = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(value);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", argname)));

	if (len > max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", argname),
				 errdetail("It is %d bytes long; the limit is %d bytes.",
						   len, max_bytes)));

	return value;
}

/*
 * eo_is_infinity_text
 *		Is "value" the word infinity (any case, surrounding spaces
 *		allowed)?  The spelling of "forever" for retention periods, since
 *		PostgreSQL 15's interval type has no infinity.
 */
bool
eo_is_infinity_text(const char *value)
{
	size_t		len;

	while (*value == ' ')
		value++;
	len = strlen(value);
	while (len > 0 && value[len - 1] == ' ')
		len--;
	return len == strlen("infinity") &&
		pg_strncasecmp(value, "infinity", len) == 0;
}

/*
 * eo_expiry_from_interval
 *		now + retain, refusing a retention that is not positive.
 *
 * Calendar arithmetic (months, days) follows PostgreSQL's timestamptz +
 * interval, so '1 month' means the same here as in SQL.
 */
TimestampTz
eo_expiry_from_interval(TimestampTz now, const Interval *retain)
{
	TimestampTz expires;

	expires = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													  TimestampTzGetDatum(now),
													  PointerGetDatum(retain)));
	if (expires <= now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retain must be a positive interval"),
				 errhint("Pass NULL to use eo.dedup_retention, or 'infinity' to remember the message forever.")));
	return expires;
}

/*
 * eo_expiry_default
 *		Expiry time given by the eo.dedup_retention setting: now plus the
 *		setting's interval (as eo_expiry_from_interval() adds "retain"), or
 *		DT_NOEND for forever.  The setting's check hook has made sure the
 *		interval is positive and short enough for the sum to exist.
 */
TimestampTz
eo_expiry_default(TimestampTz now)
{
	if (eo_dedup_retention.forever)
		return DT_NOEND;
	return eo_expiry_from_interval(now, &eo_dedup_retention.span);
}
