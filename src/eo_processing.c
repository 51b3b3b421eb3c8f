/*-------------------------------------------------------------------------
 *
 * eo_processing.c
 *	  Module entry point of eo_processing: the PG_MODULE_MAGIC block and
 *	  the definition of the extension's configuration variables (GUCs).
 *
 *	  The library works both when listed in shared_preload_libraries and
 *	  when loaded on first use by a backend that calls one of the SQL
 *	  functions; everything done here is safe in either case.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "destination.h"
#include "eo_processing.h"
#include "relay.h"

PG_MODULE_MAGIC;

/*
 * How long eo.process() remembers a message when no "retain" is given:
 * eo.dedup_retention as written (SHOW prints it) and as parsed by its
 * check hook (set by the assign hook; this initial value is the default's).
 */
static char *dedup_retention_text = NULL;
EoRetention eo_dedup_retention = {false, {7 * USECS_PER_DAY, 0, 0}};

/* Longest eo.dedup_retention short of 'infinity'. */
#define DEDUP_RETENTION_MAX_YEARS 1000

/* The relay (see relay.h) */
bool		eo_relay_enabled = true;
int			eo_relay_batch_size = 1000;
int			eo_relay_naptime_secs = 60;
int			eo_outbox_retention_secs = 24 * 60 * 60;
int			eo_default_max_attempts = 10;
char	   *eo_default_retry_delays = NULL;
char	   *eo_http_allowed_hosts = NULL;
bool		eo_http_allow_link_local = false;
int			eo_http_max_concurrency = 64;
int			eo_http_client = EO_HTTP_CLIENT_BUILTIN;

static const struct config_enum_entry http_client_options[] = {
	{"builtin", EO_HTTP_CLIENT_BUILTIN, false},
	{"libcurl", EO_HTTP_CLIENT_LIBCURL, false},
	{NULL, 0, false}
};

/* How long completed idempotency keys are kept. */
int			eo_key_retention_secs = 24 * 60 * 60;

void		_PG_init(void);

/*
 * parse_interval_text
 *		Read "value" as interval input (as interval_in would, including the
 *		ISO 8601 form), without raising an error: returns false for text
 *		that is not an interval or one out of range.
 *
 * Check hooks must report bad values by returning false, not by raising
 * an error (they also run in the postmaster and outside transactions), and
 * PostgreSQL 15's interval_in can only raise one, so this calls the same
 * parsing routines, which return error codes.
 */
static bool
parse_interval_text(const char *value, Interval *result)
{
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype = 0;
	int			dterr;
	struct pg_itm_in itm_in;

	memset(&itm_in, 0, sizeof(itm_in));
	dterr = ParseDateTime(value, workbuf, sizeof(workbuf), field, ftype,
						  MAXDATEFIELDS, &nf);
	if (dterr == 0)
		dterr = DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE,
							   &dtype, &itm_in);
	if (dterr == DTERR_BAD_FORMAT)
	{
		char	   *copy = pstrdup(value);

		memset(&itm_in, 0, sizeof(itm_in));
		dterr = DecodeISO8601Interval(copy, &dtype, &itm_in);
		pfree(copy);
	}
	if (dterr != 0 || dtype != DTK_DELTA)
		return false;
	return itmin2interval(&itm_in, result) == 0;
}

/*
 * parse_dedup_retention
 *		Read a value of eo.dedup_retention into *result; false (with the
 *		GUC error detail set) when it is not acceptable.
 *
 * Accepted, in this order:
 *	- what the setting accepted when it was an integer number of seconds:
 *	  a number with an optional unit ('604800', '7d', '36h', '90min',
 *	  '3600s'), read by the server's own integer-setting parser so that
 *	  every old value keeps its exact meaning; -1 means forever;
 *	- 'infinity' (any case): forever, as eo.process()'s retain;
 *	- any interval ('2 days', '1 week', '1 day 2 hours', 'P1W'), with the
 *	  calendar meaning eo.process()'s retain gives it.
 * The retention must be positive (no negative part, not zero) and at most
 * DEDUP_RETENTION_MAX_YEARS years, so that an expiry time can always be
 * computed.
 */
static bool
parse_dedup_retention(const char *value, EoRetention *result)
{
	int			secs;
	const char *hint = NULL;
	Interval	span;
	double		approx_days;

	memset(result, 0, sizeof(EoRetention));

	if (parse_int(value, &secs, GUC_UNIT_S, &hint))
	{
		if (secs == -1)
		{
			result->forever = true;
			return true;
		}
		if (secs <= 0)
		{
			GUC_check_errdetail("eo.dedup_retention must be positive; 'infinity' (or -1) remembers messages forever.");
			return false;
		}
		result->span.time = (int64) secs * USECS_PER_SEC;
		return true;
	}

	if (eo_is_infinity_text(value))
	{
		result->forever = true;
		return true;
	}

	if (!parse_interval_text(value, &span))
	{
		GUC_check_errdetail("eo.dedup_retention must be an interval such as '7 days', '36 hours', '1 week' or '7d', or 'infinity' to remember messages forever.");
		return false;
	}
	if (span.month < 0 || span.day < 0 || span.time < 0 ||
		(span.month == 0 && span.day == 0 && span.time == 0))
	{
		GUC_check_errdetail("eo.dedup_retention must be positive, with no negative part; 'infinity' (or -1) remembers messages forever.");
		return false;
	}
	approx_days = (double) span.month * (DAYS_PER_YEAR / MONTHS_PER_YEAR) +
		span.day + (double) span.time / USECS_PER_DAY;
	if (approx_days > DEDUP_RETENTION_MAX_YEARS * DAYS_PER_YEAR)
	{
		GUC_check_errdetail("eo.dedup_retention must be at most %d years; 'infinity' remembers messages forever.",
							DEDUP_RETENTION_MAX_YEARS);
		return false;
	}
	result->span = span;
	return true;
}

/*
 * check_dedup_retention
 *		Parse eo.dedup_retention once, into a malloc'd EoRetention that the
 *		GUC machinery keeps with the value (and frees with it).
 */
static bool
check_dedup_retention(char **newval, void **extra, GucSource source)
{
	EoRetention parsed;
	EoRetention *copy;

	if (*newval == NULL || !parse_dedup_retention(*newval, &parsed))
		return false;
	copy = (EoRetention *) malloc(sizeof(EoRetention));
	if (copy == NULL)
		return false;
	*copy = parsed;
	*extra = copy;
	return true;
}

/* assign_dedup_retention: publish the parsed value to eo_expiry_default(). */
static void
assign_dedup_retention(const char *newval, void *extra)
{
	eo_dedup_retention = *(EoRetention *) extra;
}

/* eo.retry_delays must be a non-empty list of non-negative intervals. */
static bool
check_retry_delays(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	List	   *items;
	ListCell   *lc;
	bool		ok = true;

	if (*newval == NULL)
		return true;
	copy = pstrdup(*newval);
	if (!SplitIdentifierString(copy, ',', &items) || items == NIL)
	{
		GUC_check_errdetail("eo.retry_delays must be a comma-separated list of intervals, such as '1s, 10s, 1min'.");
		return false;
	}
	foreach(lc, items)
	{
		Interval   *iv = NULL;

		PG_TRY();
		{
			iv = DatumGetIntervalP(DirectFunctionCall3(interval_in,
													   CStringGetDatum((char *) lfirst(lc)),
													   ObjectIdGetDatum(InvalidOid),
													   Int32GetDatum(-1)));
		}
		PG_CATCH();
		{
			FlushErrorState();
			iv = NULL;
		}
		PG_END_TRY();
		if (iv == NULL || iv->time < 0 || iv->day < 0 || iv->month < 0)
		{
			GUC_check_errdetail("\"%s\" is not a non-negative interval.", (char *) lfirst(lc));
			ok = false;
			break;
		}
	}
	pfree(copy);
	list_free(items);
	return ok;
}

/*
 * While _PG_init defines the GUCs, a bad eo.http_allowed_hosts from the
 * configuration files is kept (and reported once defined) instead of being
 * refused: refused, it would fall back to its default, empty, which allows
 * every host.  Kept, its bad entries match nothing, as they did before they
 * were checked, so a server upgraded with such a setting stays closed.
 */
static bool defining_gucs = false;
static char allowed_hosts_problem[512];

/*
 * eo.http_allowed_hosts: a comma-separated list of entries that
 * eo_http_host_allowed() can match (http_options.c says which); an entry
 * that would silently match nothing ("*", "host:port", a URL) is refused,
 * except while the GUCs are being defined (see above).
 */
static bool
check_allowed_hosts(char **newval, void **extra, GucSource source)
{
	char	   *copy;
	List	   *items;
	ListCell   *lc;
	const char *problem = NULL;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	copy = pstrdup(*newval);
	if (!SplitGUCList(copy, ',', &items))
		problem = "eo.http_allowed_hosts must be a comma-separated list: "
			"it has an empty entry, or white space inside an entry.";
	else
	{
		foreach(lc, items)
		{
			problem = eo_http_allowed_host_problem(lfirst(lc));
			if (problem != NULL)
				break;
		}
		list_free(items);
	}
	pfree(copy);
	if (problem == NULL)
		return true;
	if (defining_gucs)
	{
		strlcpy(allowed_hosts_problem, problem, sizeof(allowed_hosts_problem));
		return true;
	}
	GUC_check_errdetail("%s", problem);
	GUC_check_errhint("Entries are host names (\"hooks.example.com\"), \"*.\" and a domain "
					  "(\"*.example.net\"), or IPv4 or IPv6 addresses, without scheme, port or path.");
	return false;
}

/*
 * Module load: define the GUCs and reserve the "eo." prefix so that a
 * misspelled setting is reported instead of silently ignored.  When
 * preloaded, also set up the relay: shared memory, the launcher, and the
 * hook that keeps the relay out of the way of DROP DATABASE.
 */
void
_PG_init(void)
{
	DefineCustomStringVariable("eo.dedup_retention",
							   "How long eo.process() remembers a processed message by default.",
							   "Used when eo.process() is called without \"retain\". "
							   "An interval ('7 days', '36h'), a number of seconds, "
							   "or 'infinity' (or -1) to remember messages forever.",
							   &dedup_retention_text,
							   "7d",
							   PGC_USERSET, 0,
							   check_dedup_retention, assign_dedup_retention,
							   NULL);

	DefineCustomBoolVariable("eo.relay_enabled",
							 "Whether the relay delivers outbox messages.",
							 "When off, messages stay in eo.outbox until it is turned on again.",
							 &eo_relay_enabled,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("eo.relay_batch_size",
							"How many messages the relay routes, or deliveries it retries, per transaction.",
							NULL,
							&eo_relay_batch_size,
							1000,
							1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eo.relay_naptime",
							"Longest time the relay sleeps without being woken by a commit.",
							"A safety net: commits of publishing transactions wake the relay at once. "
							"Also the interval of the relay's housekeeping.",
							&eo_relay_naptime_secs,
							60,
							1, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eo.outbox_retention",
							"How long routed messages are kept in eo.message_log (audit, replay).",
							NULL,
							&eo_outbox_retention_secs,
							24 * 60 * 60,
							0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eo.max_attempts",
							"Default number of delivery attempts before a delivery is dead.",
							"Used for destinations without a max_attempts option.",
							&eo_default_max_attempts,
							10,
							1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("eo.retry_delays",
							   "Default delays between delivery attempts; the last one repeats.",
							   "Used for destinations without a retry_delays option. "
							   "A comma-separated list of intervals.",
							   &eo_default_retry_delays,
							   "1s, 5s, 30s, 2min, 10min, 30min, 1h",
							   PGC_SIGHUP, 0,
							   check_retry_delays, NULL, NULL);

	defining_gucs = true;
	allowed_hosts_problem[0] = '\0';
	DefineCustomStringVariable("eo.http_allowed_hosts",
							   "Hosts the relay may send HTTP requests to (empty: any).",
							   "A comma-separated list of host names or addresses; "
							   "\"*.example.com\" allows every host below example.com.",
							   &eo_http_allowed_hosts,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   check_allowed_hosts, NULL, NULL);
	defining_gucs = false;
	if (allowed_hosts_problem[0] != '\0')
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("eo.http_allowed_hosts has an entry that matches no host"),
				 errdetail("%s", allowed_hosts_problem),
				 errhint("Correct eo.http_allowed_hosts and reload the configuration; "
						 "until then the relay sends only to the hosts its valid entries match.")));

	DefineCustomBoolVariable("eo.http_allow_link_local",
							 "Whether the relay may connect to link-local and cloud metadata addresses.",
							 "When off, connections to 169.254.0.0/16, fe80::/10 (also written as IPv4-mapped "
							 "IPv6), fd00:ec2::254 and 100.100.100.200 are refused, whatever host name "
							 "resolved to them, and destinations with such an address cannot be created.",
							 &eo_http_allow_link_local,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("eo.http_max_concurrency",
							"Most HTTP requests the relay keeps in flight per destination.",
							"Caps the \"concurrency\" option of http destinations.",
							&eo_http_max_concurrency,
							64,
							1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("eo.http_client",
							 "Which HTTP client sends the relay's plain http:// requests.",
							 "builtin: the relay's own HTTP/1.1 client (keep-alive, no pipelining); "
							 "libcurl: libcurl, as https:// requests always are, and every request "
							 "while a proxy is set in the server's environment.",
							 &eo_http_client,
							 EO_HTTP_CLIENT_BUILTIN,
							 http_client_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("eo.key_retention",
							"How long completed idempotency keys are remembered.",
							"The relay's housekeeping deletes them afterwards.",
							&eo_key_retention_secs,
							24 * 60 * 60,
							1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("eo");

	if (process_shared_preload_libraries_in_progress)
	{
		eo_preloaded = true;
		eo_relay_shmem_request();
		eo_relay_register_launcher();
		eo_database_guard_install();
	}
}
