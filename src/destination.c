/*-------------------------------------------------------------------------
 *
 * destination.c
 *	  Parsing and validation of destination options, shared by
 *	  eo.create_destination() / eo.alter_destination() (through
 *	  eo.check_destination_options()) and by the relay, so that what is
 *	  accepted is exactly what the relay understands.
 *
 *	  Options every kind has:
 *		max_attempts  integer >= 1; default eo.max_attempts
 *		retry_delays  array of interval texts (>= 0), the last repeating;
 *					  default eo.retry_delays, or the sink's own schedule
 *	  Asynchronous sinks (http) also have:
 *		concurrency	  sends in flight, 1..1000; default the sink's (16 for
 *					  http), and at most eo.http_max_concurrency unless
 *					  the sink is uncapped (kafka)
 *	  Sinks that log their attempts in eo.http_attempt also have:
 *		log_attempts  'failures' (default): failed attempts only; 'all'
 *	  Each kind parses its own options in its sink file (sink_notify.c,
 *	  http_options.c for sink_http.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "destination.h"
#include "eo_processing.h"
#include "relay.h"
#include "sink.h"

PG_FUNCTION_INFO_V1(eo_check_destination_options);

#define EO_MAX_RETRY_DELAYS 100

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
	const SinkRoutine *sink;

	memset(cfg, 0, sizeof(DestinationConfig));
	cfg->enabled = true;
	cfg->max_attempts = eo_default_max_attempts;

	if (kind == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("kind must not be null")));
	sink = eo_sink_lookup(kind);
	if (sink == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown destination kind \"%s\"", kind),
				 errhint("The supported kinds are %s.", eo_sink_kind_list())));
	cfg->sink = sink;
	cfg->concurrency = sink->default_concurrency;
	if (sink->init_options)
		sink->init_options(cfg);

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

		if (sink->parse_option && sink->parse_option(name, &v, cfg))
			;
		else if (eo_sink_is_async(sink) && strcmp(name, "concurrency") == 0)
			cfg->concurrency = eo_option_int(name, &v, 1, EO_MAX_CONCURRENCY);
		else if (sink->logs_attempts && strcmp(name, "log_attempts") == 0)
		{
			if (v.type != jbvString)
				eo_bad_option(name, "'failures' or 'all'");
			if (v.val.string.len == 3 && strncmp(v.val.string.val, "all", 3) == 0)
				cfg->log_all_attempts = true;
			else if (v.val.string.len == 8 && strncmp(v.val.string.val, "failures", 8) == 0)
				cfg->log_all_attempts = false;
			else
				eo_bad_option(name, "'failures' or 'all'");
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
					 errhint("Options of kind \"%s\" are %s.", kind, sink->option_names)));

		error_context_stack = errcallback.previous;
	}

	if (sink->check_options)
		sink->check_options(cfg);
	if (!have_delays)
		parse_delay_list(sink->default_retry_delays ? sink->default_retry_delays :
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
	const SinkRoutine *sink;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("kind must not be null")));
	kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	sink = eo_sink_lookup(kind);
	if (sink != NULL && sink->may_configure)
		sink->may_configure();
	eo_parse_destination(kind, PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1), &cfg);
	if (cfg.sink->check_target)
		cfg.sink->check_target(&cfg);
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(PG_GETARG_JSONB_P(1));
}

/* The owner of extension eo_processing (InvalidOid if it is not installed). */
Oid
eo_extension_owner(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			owner = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("eo_processing"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

/*
 * eo_check_may_configure_kind
 *		Raise an error unless the current user is a superuser or a member
 *		of the extension owner's role: the rule for kinds whose options
 *		make the server connect somewhere (http, nats).  Reads pg_extension
 *		(a transaction must be open).
 */
void
eo_check_may_configure_kind(const char *kind)
{
	Oid			owner = eo_extension_owner();

	if (superuser() || (OidIsValid(owner) && has_privs_of_role(GetUserId(), owner)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to configure %s destinations", kind),
			 errdetail("Only superusers and the owner of extension eo_processing may create or alter destinations of kind \"%s\".", kind)));
}
