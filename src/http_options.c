/*-------------------------------------------------------------------------
 *
 * http_options.c
 *	  The options of http destinations (see destination.c for the list):
 *	  the URL, checked with libcurl's own parser; headers, checked to be
 *	  sendable (also those of messages, at publish time); Standard Webhooks
 *	  signing secrets; the host allowlist eo.http_allowed_hosts (matching,
 *	  and the check of its entries); the refusal of link-local and cloud
 *	  metadata addresses when destinations are configured (http_address.c
 *	  says which); and who may configure http destinations at all.
 *
 *	  Errors name the option, never its value: header values and secrets
 *	  may be credentials.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "common/base64.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/varlena.h"

#include "destination.h"
#include "http.h"
#include "relay.h"

/* Standard Webhooks secrets: "whsec_" then base64 of 24 to 64 bytes. */
#define EO_SECRET_PREFIX "whsec_"
#define EO_SECRET_MIN_BYTES 24
#define EO_SECRET_MAX_BYTES 64

/*
 * wire_target
 *		For the relay's own client (http_wire.c): where a plain http:// URL
 *		connects and what it requests, from libcurl's parse of it, so that
 *		both clients send the same request line and Host header.  Left
 *		unset (the request goes through libcurl) for an IPv6 address with a
 *		zone.
 */
static void
wire_target(CURLU *u, HttpOptions *opts)
{
	char	   *port = NULL;
	char	   *path = NULL;
	char	   *query = NULL;
	char	   *zone = NULL;
	char	   *host = opts->host;
	int			hlen = strlen(host);
	bool		ipv6 = (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']');

	if (curl_url_get(u, CURLUPART_ZONEID, &zone, 0) == CURLUE_OK ||
		curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
	{
		curl_free(zone);
		curl_free(port);
		curl_free(path);
		return;
	}
	if (curl_url_get(u, CURLUPART_QUERY, &query, 0) != CURLUE_OK)
		query = NULL;
	opts->port = atoi(port);
	opts->wire_host = ipv6 ? pnstrdup(host + 1, hlen - 2) : pstrdup(host);
	opts->wire_origin = psprintf("%s:%d", host, opts->port);
	opts->wire_host_header = opts->port == 80 ? pstrdup(host) : psprintf("%s:%d", host, opts->port);
	opts->wire_target = psprintf("%s%s%s", path[0] == '/' ? "" : "/", path,
								 query ? psprintf("?%s", query) : "");
	curl_free(port);
	curl_free(path);
	curl_free(query);
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
		HTTP_OPTIONS(cfg)->url = copy;
		HTTP_OPTIONS(cfg)->host = asc_tolower(host, strlen(host));
		if (strcmp(scheme, "http") == 0)
			wire_target(u, HTTP_OPTIONS(cfg));
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
		eo_bad_option("headers", "an object of header names and string values");
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		if (JsonbIteratorNext(&it, &val, true) != WJB_VALUE || val.type != jbvString)
			eo_bad_option("headers", "an object of header names and string values");
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
		HTTP_OPTIONS(cfg)->headers = lappend(HTTP_OPTIONS(cfg)->headers,
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
		eo_bad_option("signing_secret", "a string \"whsec_<base64>\" or an array of them");
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
			eo_bad_option("signing_secret", psprintf("a secret or an array of 1 to %d secrets",
												  EO_HTTP_MAX_SECRETS));
		HTTP_OPTIONS(cfg)->secrets = palloc0(sizeof(SigningSecret) * n);
		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok == WJB_ELEM)
				parse_secret(&elem, &HTTP_OPTIONS(cfg)->secrets[HTTP_OPTIONS(cfg)->nsecrets++]);
		}
	}
	else
	{
		HTTP_OPTIONS(cfg)->secrets = palloc0(sizeof(SigningSecret));
		parse_secret(v, &HTTP_OPTIONS(cfg)->secrets[0]);
		HTTP_OPTIONS(cfg)->nsecrets = 1;
	}
}

/*
 * eo_parse_http_option
 *		Handle one option of an http destination; false if "name" is not
 *		an http-only option (the caller handles the common ones).
 */
bool
eo_parse_http_option(const char *name, const JsonbValue *v, DestinationConfig *cfg)
{
	if (strcmp(name, "url") == 0)
	{
		if (v->type != jbvString)
			eo_bad_option(name, "a string");
		parse_url(v->val.string.val, v->val.string.len, cfg);
	}
	else if (strcmp(name, "headers") == 0)
		parse_headers(v, cfg);
	else if (strcmp(name, "signing_secret") == 0)
		parse_secrets(v, cfg);
	else if (strcmp(name, "timeout_ms") == 0)
		HTTP_OPTIONS(cfg)->timeout_ms = eo_option_int(name, v, 1, EO_HTTP_MAX_TIMEOUT_MS);
	else if (strcmp(name, "tls_verify") == 0)
	{
		if (v->type != jbvBool)
			eo_bad_option(name, "true or false");
		HTTP_OPTIONS(cfg)->tls_verify = v->val.boolean;
	}
	else
		return false;
	return true;
}

/*
 * parse_ip
 *		Whether "s" is an IPv4 address (dotted quad) or an IPv6 address
 *		(with or without brackets); if so, its family and bytes (16 bytes
 *		of room).
 */
static bool
parse_ip(const char *s, int *family, uint8 *bytes)
{
	size_t		len = strlen(s);
	char		buf[64];

	if (inet_pton(AF_INET, s, bytes) == 1)
	{
		*family = AF_INET;
		return true;
	}
	if (len >= 2 && s[0] == '[' && s[len - 1] == ']')
	{
		s++;
		len -= 2;
	}
	if (len >= sizeof(buf))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (inet_pton(AF_INET6, buf, bytes) == 1)
	{
		*family = AF_INET6;
		return true;
	}
	return false;
}

/*
 * entry_matches
 *		Whether one entry of eo.http_allowed_hosts matches "host": the same
 *		address (an IPv6 entry with or without brackets), the same name
 *		(ignoring case), or a name below the domain of a "*.domain" entry.
 */
static bool
entry_matches(const char *entry, const char *host)
{
	size_t		hl = strlen(host);
	size_t		el = strlen(entry);
	int			efam;
	int			hfam;
	uint8		ebytes[16];
	uint8		hbytes[16];

	if (parse_ip(entry, &efam, ebytes))
		return parse_ip(host, &hfam, hbytes) && efam == hfam &&
			memcmp(ebytes, hbytes, efam == AF_INET ? 4 : 16) == 0;
	if (pg_strcasecmp(entry, host) == 0)
		return true;
	return strncmp(entry, "*.", 2) == 0 && hl > el - 1 &&
		pg_strcasecmp(host + hl - (el - 1), entry + 1) == 0;
}

/*
 * eo_http_host_allowed
 *		Whether eo.http_allowed_hosts lets the relay connect to "host"
 *		(lower case, as libcurl's URL parser gives it).  Entries are host
 *		names or addresses, or "*.domain" for any host below domain; an
 *		empty list allows every host.  Ports play no part.
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
	if (!SplitGUCList(copy, ',', &items))
		return false;			/* cannot happen: the GUC check refused it */
	foreach(lc, items)
	{
		if (entry_matches(lfirst(lc), host))
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
 * eo_http_allowed_host_problem
 *		What is wrong with one entry of eo.http_allowed_hosts, or NULL if
 *		eo_http_host_allowed() can match it: a host name, "*.domain", an
 *		IPv4 address, an IPv6 address (brackets optional).  Entries that
 *		would silently match nothing are refused: "*", URLs, "host:port",
 *		empty entries, white space or other characters no host name has.
 *		For the GUC check hook: palloc'd or constant, never raises an error.
 */
const char *
eo_http_allowed_host_problem(const char *entry)
{
	const char *name = entry;
	int			family;
	uint8		bytes[16];

	if (entry[0] == '\0')
		return "An entry is empty.";
	if (strcmp(entry, "*") == 0)
		return "\"*\" matches no host: leave eo.http_allowed_hosts empty to allow every host, "
			"or write \"*.example.com\" for every host below example.com.";
	if (strstr(entry, "://") != NULL || strchr(entry, '/') != NULL)
		return psprintf("\"%s\" is a URL: entries are host names or addresses, "
						"such as \"hooks.example.com\" or \"192.0.2.10\".", entry);
	if (parse_ip(entry, &family, bytes))
		return NULL;
	if (strchr(entry, '%') != NULL)
		return psprintf("\"%s\": IPv6 zone ids are not supported.", entry);
	if (strchr(entry, ':') != NULL || entry[0] == '[')
		return psprintf("\"%s\" is not a host name or address: entries have no port "
						"(the allowlist does not restrict ports).", entry);
	if (strncmp(entry, "*.", 2) == 0)
		name = entry + 2;
	if (name[0] == '\0')
		return psprintf("\"%s\" has no domain after \"*.\".", entry);
	if (name[0] == '.')
		return psprintf("\"%s\" starts with a dot: write \"*.example.com\" for every host below example.com.",
						entry);
	if (strlen(name) > 253)
		return psprintf("\"%.40s...\" is longer than a host name can be (253 bytes).", entry);
	for (const char *p = name; *p != '\0'; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '*')
			return psprintf("\"%s\": \"*\" is allowed only at the start, as in \"*.example.com\".",
							entry);
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
			return psprintf("\"%s\" contains white space.", entry);
		if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80))
			return psprintf("\"%s\" contains \"%c\", which no host name has.", entry, c);
	}
	return NULL;
}

/*
 * eo_check_http_destination_host
 *		Whether the relay may send to the host of an http destination's URL
 *		under the current settings; raises an error if not (used when
 *		destinations are created or altered).  eo.http_allowed_hosts must
 *		list the host; and while eo.http_allow_link_local is off, a literal
 *		link-local or cloud metadata address is refused.  A host name that
 *		resolves to such an address is refused when the relay connects.
 *
 *		Both refusals are policy decisions of the administrator about a
 *		valid URL, hence SQLSTATE 42501 (insufficient_privilege), as for
 *		the allowlist since 0.3.0.
 */
void
eo_check_http_destination_host(const DestinationConfig *cfg)
{
	const char *why;

	if (!eo_http_host_allowed(HTTP_OPTIONS(cfg)->host))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("host \"%s\" is not in eo.http_allowed_hosts", HTTP_OPTIONS(cfg)->host),
				 errhint("Ask the administrator to add it to eo.http_allowed_hosts.")));
	why = eo_http_host_refused(HTTP_OPTIONS(cfg)->host);
	if (why != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("host \"%s\" is %s", HTTP_OPTIONS(cfg)->host, why),
				 errdetail("The relay does not connect to link-local addresses (169.254.0.0/16, fe80::/10) "
						   "or cloud metadata addresses (fd00:ec2::254, 100.100.100.200) "
						   "while eo.http_allow_link_local is off."),
				 errhint("If the destination is meant to be there, ask the administrator to turn on eo.http_allow_link_local.")));
}

/*
 * eo_check_may_configure_http
 *		Only superusers and members of the extension owner's role decide
 *		where the relay sends requests: anyone else could make the server
 *		connect to internal addresses (SSRF).
 */
void
eo_check_may_configure_http(void)
{
	eo_check_may_configure_kind("http");
}
