/*-------------------------------------------------------------------------
 *
 * nats_options.c
 *	  The options of nats destinations (see sink_nats.c for delivery):
 *	  the servers (one URL or an array of them), the subject and the
 *	  stream expected to capture it, the credentials (a user JWT with its
 *	  NKey seed, a token, or a user name and password), tls_verify and the
 *	  acknowledgement timeout.  Also the rules of NATS subjects and headers
 *	  used when a message is published to the server.
 *
 *	  Errors name the option, never its value: credentials, tokens and
 *	  passwords are secrets (eo.destinations hides them too).  Server URLs
 *	  must not carry a user name or password for the same reason.
 *
 *	  Everything here runs in backends checking options and in the relay
 *	  parsing them; nothing here touches libnats.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/jsonb.h"

#include "destination.h"
#include "nats_sink.h"

#define NATS_MAX_URL_BYTES		1024
#define NATS_MAX_NAME_BYTES		256
#define NATS_MAX_SECRET_BYTES	16384

#define JWT_BEGIN	"BEGIN NATS USER JWT"
#define JWT_END		"END NATS USER JWT"
#define SEED_BEGIN	"BEGIN USER NKEY SEED"
#define SEED_END	"END USER NKEY SEED"

/*
 * eo_nats_subject_ok
 *		Whether "s" may be published to: dot-separated tokens, none empty,
 *		no white space or control characters, no wildcard token ("*" or
 *		">").
 */
bool
eo_nats_subject_ok(const char *s)
{
	size_t		len = strlen(s);
	const char *tok = s;

	if (len == 0 || len > NATS_MAX_NAME_BYTES)
		return false;
	for (const char *p = s;; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '.' || c == '\0')
		{
			size_t		tlen = p - tok;

			if (tlen == 0 ||
				(tlen == 1 && (tok[0] == '*' || tok[0] == '>')))
				return false;
			if (c == '\0')
				return true;
			tok = p + 1;
		}
		else if (c <= ' ' || c == 0x7f)
			return false;
	}
}

/*
 * eo_nats_header_reserved
 *		Headers the relay sets itself, or that steer the NATS server
 *		(every "Nats-" header: Nats-Msg-Id, Nats-Expected-Stream, ...),
 *		which a message cannot set.
 */
bool
eo_nats_header_reserved(const char *name, int len)
{
	static const char *const reserved[] = {"eo-topic", "eo-key", "eo-published-at"};

	if (len >= 5 && pg_strncasecmp(name, "nats-", 5) == 0)
		return true;
	for (int i = 0; i < lengthof(reserved); i++)
	{
		if (strlen(reserved[i]) == (size_t) len && pg_strncasecmp(name, reserved[i], len) == 0)
			return true;
	}
	return false;
}

/*
 * check_server_url
 *		One entry of "servers": "[nats://|tls://]host[:port]" with a port
 *		from 1 to 65535, and no user name or password (they go in the
 *		options that eo.destinations hides).  Returns a palloc'd copy.
 */
static char *
check_server_url(const JsonbValue *v)
{
	char	   *url;
	const char *host;
	const char *port;
	const char *problem = NULL;

	if (v->type != jbvString)
		eo_bad_option("servers", "a server URL or an array of them, such as \"nats://127.0.0.1:4222\"");
	if (v->val.string.len == 0 || v->val.string.len > NATS_MAX_URL_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("every entry of option \"servers\" must be 1 to %d bytes long",
						NATS_MAX_URL_BYTES)));
	url = pnstrdup(v->val.string.val, v->val.string.len);
	host = url;
	if (strncmp(url, "nats://", 7) == 0 || strncmp(url, "tls://", 6) == 0)
		host = strstr(url, "://") + 3;
	else if (strstr(url, "://") != NULL)
		problem = "its scheme must be nats or tls";
	if (problem == NULL)
	{
		if (strchr(host, '@') != NULL)
			problem = "it must not contain a user name, password or token (use the options \"user\", \"password\", \"token\" or \"credentials\")";
		else if (strspn(host, " \t\r\n/?#") > 0 || host[0] == '\0' || host[0] == ':')
			problem = "it has no host";
		else if (strpbrk(host, " \t\r\n/?#,") != NULL)
			problem = "it must be a host and an optional port, nothing else";
	}
	if (problem == NULL)
	{
		/* A port after the last colon (past an IPv6 literal's bracket). */
		port = strrchr(host, ':');
		if (port != NULL && (host[0] != '[' || port > strchr(host, ']')))
		{
			char	   *end;
			long		n = strtol(port + 1, &end, 10);

			if (end == port + 1 || *end != '\0' || n < 1 || n > 65535)
				problem = "its port must be a number from 1 to 65535";
		}
	}
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"servers\" is not usable: %s", problem)));
	return url;
}

/* The "servers" option: one URL, or a non-empty array of them. */
static void
parse_servers(const JsonbValue *v, NatsOptions *opts)
{
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;
		int			n = JsonContainerSize(v->val.binary.data);

		if (n < 1 || n > EO_NATS_MAX_SERVERS)
			eo_bad_option("servers", psprintf("a server URL or an array of 1 to %d of them",
											  EO_NATS_MAX_SERVERS));
		opts->servers = palloc0(sizeof(char *) * n);
		opts->nservers = 0;
		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok == WJB_ELEM)
				opts->servers[opts->nservers++] = check_server_url(&elem);
		}
	}
	else
	{
		opts->servers = palloc(sizeof(char *));
		opts->servers[0] = check_server_url(v);
		opts->nservers = 1;
	}
}

/* A string option of at most "max" bytes, without NUL; palloc'd. */
static char *
string_option(const char *name, const JsonbValue *v, int max)
{
	char	   *s;

	if (v->type != jbvString)
		eo_bad_option(name, "a string");
	s = pnstrdup(v->val.string.val, v->val.string.len);
	if (v->val.string.len == 0 || v->val.string.len > max || strlen(s) != (size_t) v->val.string.len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"%s\" must be 1 to %d bytes long", name, max)));
	return s;
}

/*
 * pem_block
 *		The text between a line containing "begin" and the next line
 *		containing "end", white space trimmed, or NULL; palloc'd.  This is
 *		the layout of a NATS credentials file (nsc, nats-server's tools).
 */
static char *
pem_block(const char *text, const char *begin, const char *end)
{
	const char *start = strstr(text, begin);
	const char *stop;

	if (start == NULL || (start = strchr(start, '\n')) == NULL)
		return NULL;
	stop = strstr(start, end);
	if (stop == NULL)
		return NULL;
	while (stop > start && stop[-1] != '\n')
		stop--;					/* back to the start of the end line */
	while (start < stop && isspace((unsigned char) *start))
		start++;
	while (stop > start && isspace((unsigned char) stop[-1]))
		stop--;
	if (stop == start)
		return NULL;
	return pnstrdup(start, stop - start);
}

/*
 * parse_credentials
 *		The content of a NATS credentials file: a user JWT and the user's
 *		NKey seed.  The relay signs the server's nonce with the seed; the
 *		file itself is never read from the server's disk.
 */
static void
parse_credentials(const JsonbValue *v, NatsOptions *opts)
{
	char	   *text = string_option("credentials", v, NATS_MAX_SECRET_BYTES);

	opts->jwt = pem_block(text, JWT_BEGIN, JWT_END);
	opts->seed = pem_block(text, SEED_BEGIN, SEED_END);
	if (opts->jwt == NULL || opts->seed == NULL || strncmp(opts->seed, "SU", 2) != 0 ||
		strpbrk(opts->jwt, " \t\r\n") != NULL || strpbrk(opts->seed, " \t\r\n") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"credentials\" is not the content of a NATS credentials file"),
				 errhint("It holds a \"%s\" block and a \"%s\" block with a seed starting with \"SU\".",
						 JWT_BEGIN, SEED_BEGIN)));
	pfree(text);
}

/*
 * eo_parse_nats_option
 *		Handle one option of a nats destination; false if "name" is not a
 *		nats-only option (the caller handles the common ones).
 */
bool
eo_parse_nats_option(const char *name, const JsonbValue *v, DestinationConfig *cfg)
{
	NatsOptions *opts = NATS_OPTIONS(cfg);

	if (strcmp(name, "servers") == 0)
		parse_servers(v, opts);
	else if (strcmp(name, "subject") == 0)
	{
		opts->subject = string_option(name, v, NATS_MAX_NAME_BYTES);
		if (!eo_nats_subject_ok(opts->subject))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"subject\" is not a subject a message can be published to"),
					 errdetail("A subject is tokens separated by dots, none empty, without white space and without the wildcards \"*\" and \">\".")));
	}
	else if (strcmp(name, "stream") == 0)
	{
		opts->stream = string_option(name, v, NATS_MAX_NAME_BYTES);
		if (strpbrk(opts->stream, " \t\r\n.*>/\\") != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"stream\" is not a valid stream name"),
					 errdetail("Stream names contain no white space, \".\", \"*\", \">\", \"/\" or \"\\\".")));
	}
	else if (strcmp(name, "credentials") == 0)
		parse_credentials(v, opts);
	else if (strcmp(name, "token") == 0)
		opts->token = string_option(name, v, NATS_MAX_SECRET_BYTES);
	else if (strcmp(name, "user") == 0)
		opts->user = string_option(name, v, NATS_MAX_NAME_BYTES);
	else if (strcmp(name, "password") == 0)
		opts->password = string_option(name, v, NATS_MAX_SECRET_BYTES);
	else if (strcmp(name, "timeout_ms") == 0)
		opts->timeout_ms = eo_option_int(name, v, 1, EO_HTTP_MAX_TIMEOUT_MS);
	else if (strcmp(name, "tls_verify") == 0)
	{
		if (v->type != jbvBool)
			eo_bad_option(name, "true or false");
		opts->tls_verify = v->val.boolean;
	}
	else
		return false;
	return true;
}

/* Defaults of a nats destination's options. */
void
eo_nats_init_options(DestinationConfig *cfg)
{
	NatsOptions *opts = palloc0(sizeof(NatsOptions));

	opts->timeout_ms = EO_NATS_DEFAULT_TIMEOUT_MS;
	opts->tls_verify = true;
	cfg->sink_options = opts;
}

/* After parsing: servers are required, and one way of authenticating. */
void
eo_nats_check_options(DestinationConfig *cfg)
{
	NatsOptions *opts = NATS_OPTIONS(cfg);
	int			ways = (opts->jwt != NULL) + (opts->token != NULL) +
		(opts->user != NULL || opts->password != NULL);

	if (opts->nservers == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("destinations of kind \"nats\" need the option \"servers\"")));
	if ((opts->user == NULL) != (opts->password == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options \"user\" and \"password\" go together")));
	if (ways > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options \"credentials\", \"token\" and \"user\"/\"password\" exclude each other")));
}
