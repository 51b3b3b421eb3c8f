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
 *	  Options of kind "http" (only superusers and the extension's owner may
 *	  set them, since they decide where the server connects to):
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

#include <curl/curl.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "common/base64.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/formatting.h"
#include "utils/rel.h"
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

/* Standard Webhooks secrets: "whsec_" then base64 of 24 to 64 bytes. */
#define EO_SECRET_PREFIX "whsec_"
#define EO_SECRET_MIN_BYTES 24
#define EO_SECRET_MAX_BYTES 64

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
static void
bad_option(const char *option, const char *expected)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" must be %s", option, expected)));
}

/* An integer option within [min, max]. */
static int
option_int(const char *name, const JsonbValue *v, int min, int max)
{
	char	   *text;
	char	   *end;
	long		n;

	if (v->type != jbvNumeric)
		bad_option(name, psprintf("an integer between %d and %d", min, max));
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	errno = 0;
	n = strtol(text, &end, 10);
	if (*end == '.')			/* 15000.0 is the integer 15000 */
		end += strspn(end + 1, "0") + 1;
	if (*end != '\0' || errno != 0 || n < min || n > max)
		bad_option(name, psprintf("an integer between %d and %d", min, max));
	return (int) n;
}

/*
 * parse_url
 *		Check an http destination's URL with libcurl's own parser (so what
 *		is accepted is what the relay will request) and note its host.
 */
static void
parse_url(const char *url, int len, DestinationConfig *cfg)
{
	CURLU	   *u;
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *user = NULL;
	char	   *port = NULL;
	char	   *copy = pnstrdup(url, len);
	const char *problem = NULL;

	if (len == 0 || len > EO_HTTP_MAX_URL_BYTES || strlen(copy) != (size_t) len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"url\" must be 1 to %d bytes long", EO_HTTP_MAX_URL_BYTES)));
	u = curl_url();
	if (u == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	if (curl_url_set(u, CURLUPART_URL, copy, 0) != CURLUE_OK)
		problem = "it is not a valid URL";
	else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
			 (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
		problem = "its scheme must be http or https";
	else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0')
		problem = "it has no host";
	else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
		problem = "it must not contain a user name or password (send credentials in \"headers\")";
	else if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK && strcmp(port, "0") == 0)
		problem = "port 0 cannot be connected to";
	else
	{
		cfg->url = copy;
		cfg->host = asc_tolower(host, strlen(host));
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(port);
	curl_url_cleanup(u);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"url\" is not usable: %s", problem)));
}

/* RFC 9110 token characters (header names). */
bool
eo_http_header_name_ok(const char *name, int len)
{
	if (len == 0)
		return false;
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) name[i];

		if (!(isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL) || c == '\0')
			return false;
	}
	return true;
}

/* Header values: visible characters, spaces and tabs; never CR, LF, NUL. */
bool
eo_http_header_value_ok(const char *value, int len)
{
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) value[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return false;
	}
	return true;
}

/*
 * eo_http_header_line
 *		"Name: value" for libcurl's header list; "Name;" for an empty value
 *		(libcurl leaves out a header written "Name:").  palloc'd.
 */
char *
eo_http_header_line(const char *name, int nlen, const char *value, int vlen)
{
	if (vlen == 0)
		return psprintf("%.*s;", nlen, name);
	return psprintf("%.*s: %.*s", nlen, name, vlen, value);
}

/* Headers the relay sets itself, which options and messages cannot set. */
bool
eo_http_header_reserved(const char *name, int len)
{
	static const char *const reserved[] = {
		"content-length", "transfer-encoding", "host", "connection", "expect",
		"idempotency-key", "webhook-id", "webhook-timestamp", "webhook-signature",
		"eo-topic", "eo-key"
	};

	for (int i = 0; i < lengthof(reserved); i++)
	{
		if (strlen(reserved[i]) == (size_t) len && pg_strncasecmp(name, reserved[i], len) == 0)
			return true;
	}
	return false;
}

/* The "headers" option: an object of string values. */
static void
parse_headers(const JsonbValue *v, DestinationConfig *cfg)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	val;
	JsonbIteratorToken tok;
	int			total = 0;

	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		bad_option("headers", "an object of header names and string values");
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		if (JsonbIteratorNext(&it, &val, true) != WJB_VALUE || val.type != jbvString)
			bad_option("headers", "an object of header names and string values");
		if (!eo_http_header_name_ok(k.val.string.val, k.val.string.len))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header name \"%s\" is not a valid HTTP header name",
							pnstrdup(k.val.string.val, k.val.string.len))));
		if (eo_http_header_reserved(k.val.string.val, k.val.string.len))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header \"%s\" is set by the relay and cannot be configured",
							pnstrdup(k.val.string.val, k.val.string.len))));
		/* The value is not repeated: it may be a credential. */
		if (!eo_http_header_value_ok(val.val.string.val, val.val.string.len))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the value of header \"%s\" contains a control character",
							pnstrdup(k.val.string.val, k.val.string.len))));
		total += k.val.string.len + val.val.string.len + 4;
		if (total > EO_HTTP_MAX_HEADER_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("option \"headers\" is longer than %d bytes", EO_HTTP_MAX_HEADER_BYTES)));
		cfg->headers = lappend(cfg->headers,
							   eo_http_header_line(k.val.string.val, k.val.string.len,
												   val.val.string.val, val.val.string.len));
	}
}

/*
 * parse_secret
 *		A Standard Webhooks secret, "whsec_" followed by the base64 of 24 to
 *		64 random bytes.  Errors never show the secret.
 */
static void
parse_secret(const JsonbValue *v, SigningSecret *out)
{
	const char *s;
	int			len;
	int			prefix = strlen(EO_SECRET_PREFIX);
	int			declen;

	if (v->type != jbvString)
		bad_option("signing_secret", "a string \"whsec_<base64>\" or an array of them");
	s = v->val.string.val;
	len = v->val.string.len;
	if (len <= prefix || strncmp(s, EO_SECRET_PREFIX, prefix) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"signing_secret\" must start with \"%s\"", EO_SECRET_PREFIX),
				 errhint("A Standard Webhooks secret is \"whsec_\" followed by the base64 encoding of 24 to 64 random bytes.")));
	out->bytes = palloc(pg_b64_dec_len(len - prefix) + 1);
	declen = pg_b64_decode(s + prefix, len - prefix, (char *) out->bytes,
						   pg_b64_dec_len(len - prefix));
	if (declen < EO_SECRET_MIN_BYTES || declen > EO_SECRET_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"signing_secret\" must be the base64 encoding of %d to %d bytes after \"%s\"",
						EO_SECRET_MIN_BYTES, EO_SECRET_MAX_BYTES, EO_SECRET_PREFIX)));
	out->len = declen;
}

/* Secrets: one string, or a non-empty array of them. */
static void
parse_secrets(const JsonbValue *v, DestinationConfig *cfg)
{
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;
		int			n = JsonContainerSize(v->val.binary.data);

		if (n < 1 || n > EO_HTTP_MAX_SECRETS)
			bad_option("signing_secret", psprintf("a secret or an array of 1 to %d secrets",
												  EO_HTTP_MAX_SECRETS));
		cfg->secrets = palloc0(sizeof(SigningSecret) * n);
		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok == WJB_ELEM)
				parse_secret(&elem, &cfg->secrets[cfg->nsecrets++]);
		}
	}
	else
	{
		cfg->secrets = palloc0(sizeof(SigningSecret));
		parse_secret(v, &cfg->secrets[0]);
		cfg->nsecrets = 1;
	}
}

/*
 * parse_http_option
 *		Handle one option of an http destination; false if "name" is not
 *		an http-only option (the caller handles the common ones).
 */
static bool
parse_http_option(const char *name, const JsonbValue *v, DestinationConfig *cfg)
{
	if (strcmp(name, "url") == 0)
	{
		if (v->type != jbvString)
			bad_option(name, "a string");
		parse_url(v->val.string.val, v->val.string.len, cfg);
	}
	else if (strcmp(name, "headers") == 0)
		parse_headers(v, cfg);
	else if (strcmp(name, "signing_secret") == 0)
		parse_secrets(v, cfg);
	else if (strcmp(name, "timeout_ms") == 0)
		cfg->timeout_ms = option_int(name, v, 1, EO_HTTP_MAX_TIMEOUT_MS);
	else if (strcmp(name, "concurrency") == 0)
		cfg->concurrency = option_int(name, v, 1, EO_HTTP_MAX_CONCURRENCY);
	else if (strcmp(name, "tls_verify") == 0)
	{
		if (v->type != jbvBool)
			bad_option(name, "true or false");
		cfg->tls_verify = v->val.boolean;
	}
	else
		return false;
	return true;
}

/*
 * eo_http_host_allowed
 *		Whether eo.http_allowed_hosts lets the relay connect to "host"
 *		(lower case).  Entries are host names or addresses, compared
 *		exactly, or "*.domain" for any host below domain; an empty list
 *		allows every host.
 */
bool
eo_http_host_allowed(const char *host)
{
	char	   *copy;
	List	   *items;
	ListCell   *lc;
	bool		allowed = false;

	if (eo_http_allowed_hosts == NULL || eo_http_allowed_hosts[0] == '\0')
		return true;
	copy = pstrdup(eo_http_allowed_hosts);
	if (!SplitIdentifierString(copy, ',', &items))
		return false;			/* cannot happen: the GUC check refused it */
	foreach(lc, items)
	{
		const char *entry = lfirst(lc);
		size_t		hl = strlen(host);
		size_t		el = strlen(entry);

		if (pg_strcasecmp(entry, host) == 0 ||
			(strncmp(entry, "*.", 2) == 0 && hl > el - 1 &&
			 pg_strcasecmp(host + hl - (el - 1), entry + 1) == 0))
		{
			allowed = true;
			break;
		}
	}
	list_free(items);
	pfree(copy);
	return allowed;
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

		if (cfg->kind == DEST_HTTP && parse_http_option(name, &v, cfg))
			;
		else if (cfg->kind == DEST_NOTIFY && strcmp(name, "channel") == 0)
		{
			if (v.type != jbvString)
				bad_option(name, "a string");
			if (v.val.string.len == 0 || v.val.string.len >= NAMEDATALEN)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"channel\" must be 1 to %d bytes long", NAMEDATALEN - 1)));
			cfg->channel = pnstrdup(v.val.string.val, v.val.string.len);
		}
		else if (strcmp(name, "max_attempts") == 0)
			cfg->max_attempts = option_int(name, &v, 1, 1000000);
		else if (strcmp(name, "retry_delays") == 0)
		{
			JsonbIterator *ait;
			JsonbValue	av;
			int			n = 0;

			if (v.type != jbvBinary ||
				!JsonContainerIsArray(v.val.binary.data) ||
				JsonContainerSize(v.val.binary.data) == 0)
				bad_option(name, "a non-empty array of intervals");
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
					bad_option(name, "an array of interval strings, such as [\"1s\", \"1min\"]");
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

/* The owner of extension eo_processing. */
static Oid
extension_owner(void)
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
 * check_may_configure_http
 *		Only superusers and members of the extension owner's role decide
 *		where the relay sends requests: anyone else could make the server
 *		connect to internal addresses (SSRF).
 */
static void
check_may_configure_http(void)
{
	Oid			owner = extension_owner();

	if (superuser() || (OidIsValid(owner) && has_privs_of_role(GetUserId(), owner)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to configure http destinations"),
			 errdetail("Only superusers and the owner of extension eo_processing may create or alter destinations of kind \"http\".")));
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
		check_may_configure_http();
	eo_parse_destination(kind, PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1), &cfg);
	if (cfg.kind == DEST_HTTP && !eo_http_host_allowed(cfg.host))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("host \"%s\" is not in eo.http_allowed_hosts", cfg.host),
				 errhint("Ask the administrator to add it to eo.http_allowed_hosts.")));
	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(PG_GETARG_JSONB_P(1));
}
