/*-------------------------------------------------------------------------
 *
 * destination.c
 *	  Parsing and validation of destination options, shared by
 *	  eo.create_destination() / eo.alter_destination() (through
 *	  eo.check_destination_options()) and by the relay, so that what is
 *	  accepted is exactly what the relay understands.
 *
 *	  Options of kind "notify":
 *		channel		  text, 1..63 bytes; default: the message's topic
 *		max_attempts  integer >= 1; default eo.max_attempts
 *		retry_delays  array of interval texts (>= 0), the last repeating;
 *					  default eo.retry_delays
 *
 *	  Options of kind "http" (parsed in http_options.c; only superusers and
 *	  the extension's owner may set them, since they decide where the
 *	  server connects to):
 *		url			  http:// or https:// URL without user:password (required)
 *		headers		  object of extra request headers (string values)
 *		signing_secret "whsec_<base64>", or an array of them (rotation)
 *		timeout_ms	  1..600000; default 15000
 *		concurrency	  requests in flight, 1..1000; default 16 (and at most
 *					  eo.http_max_concurrency)
 *		max_attempts, retry_delays as above; the default schedule is the
 *					  Standard Webhooks one: 5s, 5min, 30min, 2h, 5h, 10h,
 *					  14h, 20h, 24h after the first attempt
 *		tls_verify	  boolean; default true
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "destination.h"
#include "eo_processing.h"
#include "relay.h"

PG_FUNCTION_INFO_V1(eo_check_destination_options);

#define EO_MAX_RETRY_DELAYS 100

/* The Standard Webhooks retry schedule (after the immediate first attempt). */
#define EO_HTTP_DEFAULT_RETRY_DELAYS "5s, 5min, 30min, 2h, 5h, 10h, 14h, 20h, 24h"
#define EO_HTTP_DEFAULT_TIMEOUT_MS	15000
#define EO_HTTP_DEFAULT_CONCURRENCY 16

/* Longest accepted retry delay. */
#define EO_MAX_RETRY_DELAY_US	((int64) 365 * USECS_PER_DAY)

/*
 * parse_delay
 *		One retry delay in microseconds (a month counts as 30 days); "what"
 *		names it in errors.  Computed in floating point so that absurd
 *		values are refused instead of overflowing.
 */
static int64
parse_delay(const char *text, const char *what)
{
	Datum		d;
	Interval   *iv;
	double		us;

	d = DirectFunctionCall3(interval_in, CStringGetDatum(text),
							ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	iv = DatumGetIntervalP(d);
	us = (double) iv->time + (double) iv->day * USECS_PER_DAY +
		(double) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", what)));
	if (us > (double) EO_MAX_RETRY_DELAY_US)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be longer than 365 days", what)));
	return (int64) us;
}

/* Error context: name the option being checked. */
static void
option_error_context(void *arg)
{
	errcontext("destination option \"%s\"", (const char *) arg);
}

/*
 * parse_delay_list
 *		The eo.retry_delays setting: comma-separated intervals.
 */
static void
parse_delay_list(const char *list, DestinationConfig *cfg)
{
	char	   *copy = pstrdup(list);
	List	   *items;
	ListCell   *lc;
	int			i = 0;

	if (!SplitIdentifierString(copy, ',', &items) || list_length(items) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("eo.retry_delays must be a comma-separated list of intervals")));
	cfg->ndelays = Min(list_length(items), EO_MAX_RETRY_DELAYS);
	cfg->delays_us = palloc(sizeof(int64) * cfg->ndelays);
	foreach(lc, items)
	{
		if (i >= cfg->ndelays)
			break;
		cfg->delays_us[i++] = parse_delay((char *) lfirst(lc), "a retry delay");
	}
}

/* Error for an option of the wrong JSON type. */
void
eo_bad_option(const char *option, const char *expected)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" must be %s", option, expected)));
}

/* An integer option within [min, max]. */
int
eo_option_int(const char *name, const JsonbValue *v, int min, int max)
{
	char	   *text;
	char	   *end;
	long		n;

	if (v->type != jbvNumeric)
		eo_bad_option(name, psprintf("an integer between %d and %d", min, max));
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	errno = 0;
	n = strtol(text, &end, 10);
	if (*end == '.')			/* 15000.0 is the integer 15000 */
		end += strspn(end + 1, "0") + 1;
	if (*end != '\0' || errno != 0 || n < min || n > max)
		eo_bad_option(name, psprintf("an integer between %d and %d", min, max));
	return (int) n;
}

/*
 * eo_parse_destination
 *		Validate "options" for "kind" and fill *cfg (palloc'd in the current
 *		context).  Raises an error naming the first bad option.  Defaults
 *		come from the eo.max_attempts / eo.retry_delays settings.
 */
void
eo_parse_destination(const char *kind, Jsonb *options, DestinationConfig *cfg)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		have_delays = false;

	memset(cfg, 0, sizeof(DestinationConfig));
	cfg->enabled = true;
	cfg->max_attempts = eo_default_max_attempts;

	if (kind == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("kind must not be null")));
	if (strcmp(kind, "notify") == 0)
		cfg->kind = DEST_NOTIFY;
	else if (strcmp(kind, "http") == 0)
	{
		cfg->kind = DEST_HTTP;
		cfg->timeout_ms = EO_HTTP_DEFAULT_TIMEOUT_MS;
		cfg->concurrency = EO_HTTP_DEFAULT_CONCURRENCY;
		cfg->tls_verify = true;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown destination kind \"%s\"", kind),
				 errhint("The supported kinds are \"notify\" and \"http\".")));

	if (options == NULL || !JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("destination options must be a JSON object")));

	it = JsonbIteratorInit(&options->root);
	(void) JsonbIteratorNext(&it, &v, true);	/* WJB_BEGIN_OBJECT */
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *name;
		ErrorContextCallback errcallback;

		if (tok != WJB_KEY)
			continue;
		name = pnstrdup(v.val.string.val, v.val.string.len);
		if (JsonbIteratorNext(&it, &v, true) != WJB_VALUE)
			elog(ERROR, "eo_processing: malformed jsonb object");

		errcallback.callback = option_error_context;
		errcallback.arg = name;
		errcallback.previous = error_context_stack;
		error_context_stack = &errcallback;

		if (cfg->kind == DEST_HTTP && eo_parse_http_option(name, &v, cfg))
			;
		else if (cfg->kind == DEST_NOTIFY && strcmp(name, "channel") == 0)
		{
			if (v.type != jbvString)
				eo_bad_option(name, "a string");
			if (v.val.string.len == 0 || v.val.string.len >= NAMEDATALEN)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"channel\" must be 1 to %d bytes long", NAMEDATALEN - 1)));
			cfg->channel = pnstrdup(v.val.string.val, v.val.string.len);
		}
		else if (strcmp(name, "max_attempts") == 0)
			cfg->max_attempts = eo_option_int(name, &v, 1, 1000000);
		else if (strcmp(name, "retry_delays") == 0)
		{
			JsonbIterator *ait;
			JsonbValue	av;
			int			n = 0;

			if (v.type != jbvBinary ||
				!JsonContainerIsArray(v.val.binary.data) ||
				JsonContainerSize(v.val.binary.data) == 0)
				eo_bad_option(name, "a non-empty array of intervals");
			if (JsonContainerSize(v.val.binary.data) > EO_MAX_RETRY_DELAYS)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"retry_delays\" has more than %d entries", EO_MAX_RETRY_DELAYS)));
			cfg->ndelays = JsonContainerSize(v.val.binary.data);
			cfg->delays_us = palloc(sizeof(int64) * cfg->ndelays);
			ait = JsonbIteratorInit(v.val.binary.data);
			while ((tok = JsonbIteratorNext(&ait, &av, true)) != WJB_DONE)
			{
				if (tok != WJB_ELEM)
					continue;
				if (av.type != jbvString)
					eo_bad_option(name, "an array of interval strings, such as [\"1s\", \"1min\"]");
				cfg->delays_us[n++] = parse_delay(pnstrdup(av.val.string.val, av.val.string.len),
												  "every entry of \"retry_delays\"");
			}
			have_delays = true;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown option \"%s\" for destinations of kind \"%s\"", name, kind),
					 cfg->kind == DEST_HTTP ?
					 errhint("Options of kind \"http\" are url, headers, signing_secret, timeout_ms, "
							 "concurrency, max_attempts, retry_delays and tls_verify.") :
					 errhint("Options of kind \"notify\" are channel, max_attempts and retry_delays.")));

		error_context_stack = errcallback.previous;
	}

	if (cfg->kind == DEST_HTTP && cfg->url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("destinations of kind \"http\" need the option \"url\"")));
	if (!have_delays)
		parse_delay_list(cfg->kind == DEST_HTTP ? EO_HTTP_DEFAULT_RETRY_DELAYS :
						 eo_default_retry_delays, cfg);
}

/*
 * eo_retry_delay_us
 *		How long to wait before the next attempt, after "attempts" failed
 *		ones: the schedule's entry (the last repeats), with +-20% jitter so
 *		that messages that failed together do not retry in lockstep.
 */
int64
eo_retry_delay_us(const DestinationConfig *cfg, int attempts)
{
	int			i = Min(Max(attempts, 1), cfg->ndelays) - 1;
	int64		base = cfg->delays_us[i];
	double		factor = 0.8 + 0.4 * pg_prng_double(&pg_global_prng_state);

	return (int64) (base * factor);
}

/*
 * eo.check_destination_options(kind text, options jsonb) RETURNS jsonb
 *
 * Raises an error for invalid options; returns the options unchanged.
 */
Datum
eo_check_destination_options(PG_FUNCTION_ARGS)
{
	DestinationConfig cfg;
	char	   *kind;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("kind must not be null")));
	kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strcmp(kind, "http") == 0)
		eo_check_may_configure_http();
	eo_parse_destination(kind, PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1), &cfg);
	if (cfg.kind == DEST_HTTP)
		eo_check_http_destination_host(&cfg);
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(PG_GETARG_JSONB_P(1));
}
