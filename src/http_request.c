/*-------------------------------------------------------------------------
 *
 * http_request.c
 *	  One webhook request: the body, the headers (the destination's, the
 *	  message's, then the relay's own: Idempotency-Key and the Standard
 *	  Webhooks webhook-id / webhook-timestamp / webhook-signature), and
 *	  either the options of the libcurl easy handle the sink lends it, ready
 *	  to be added to the sink's multi handle, or the bytes the relay's own
 *	  client writes (http_wire.c), the same request line and headers.
 *	  After the transfer, the status, Retry-After, latency and the first
 *	  bytes of the response are read back into the request.
 *
 *	  Signature (Standard Webhooks): for every secret of the destination,
 *	  "v1," + base64(HMAC-SHA256(secret, "<id>.<timestamp>.<body>")),
 *	  separated by spaces.
 *
 *	  Addresses: while eo.http_allow_link_local is off, link-local and
 *	  cloud metadata addresses (http_address.c) are refused three times
 *	  over: a literal one in the URL before the request is built, every
 *	  address libcurl is about to open a connection to (after name
 *	  resolution, so DNS answers, rebinding included, cannot get around it),
 *	  and the address of a reused connection before a request is sent on it.
 *
 *	  Memory: a request and everything palloc'd for it live in its own
 *	  context; libcurl's copy of its header list (made when a handle is
 *	  attached) is freed by eo_http_request_free().  The easy handle is not the request's: the
 *	  sink lends it (sink_http.c) and takes it back.  The libcurl callbacks
 *	  below run inside libcurl: they never palloc, never raise an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>
#include <time.h>

#include "common/base64.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "http.h"

#define EO_USER_AGENT "eo_processing/0.4.0"

/* libcurl write callback: keep the first bytes of the body, drop the rest. */
static size_t
collect_body(char *data, size_t size, size_t nmemb, void *arg)
{
	HttpRequest *req = arg;
	size_t		n = size * nmemb;
	size_t		room = EO_HTTP_SNIPPET_BYTES - req->snippet_len;

	if (room > 0)
	{
		size_t		take = Min(n, room);

		memcpy(req->snippet + req->snippet_len, data, take);
		req->snippet_len += take;
	}
	return n;
}

/*
 * eo_http_retry_after_secs
 *		A Retry-After value (delay-seconds or an HTTP date) as seconds from
 *		now, capped at EO_HTTP_MAX_RETRY_AFTER_SECS; -1 if it is neither.
 *		Never allocates, never raises an error (libcurl callbacks call it).
 */
int
eo_http_retry_after_secs(const char *value)
{
	const char *p = value;
	char	   *end;
	long		secs;
	time_t		when;

	while (*p == ' ' || *p == '\t')
		p++;
	secs = strtol(p, &end, 10);
	if (end != p && *end == '\0')
		return (int) Max(0, Min(secs, EO_HTTP_MAX_RETRY_AFTER_SECS));
	when = curl_getdate(p, NULL);
	if (when == -1)
		return -1;
	return (int) Max(0, Min((long) (when - time(NULL)), EO_HTTP_MAX_RETRY_AFTER_SECS));
}

/* libcurl header callback: note Retry-After (seconds or an HTTP date). */
static size_t
collect_header(char *data, size_t size, size_t nmemb, void *arg)
{
	HttpRequest *req = arg;
	size_t		n = size * nmemb;
	static const char name[] = "retry-after:";
	char		value[128];
	size_t		len;

	/* A new status line (after "100 Continue", say) starts over. */
	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
	{
		req->retry_after_secs = -1;
		return n;
	}
	if (n <= sizeof(name) - 1 || pg_strncasecmp(data, name, sizeof(name) - 1) != 0)
		return n;

	len = Min(n - (sizeof(name) - 1), sizeof(value) - 1);
	memcpy(value, data + sizeof(name) - 1, len);
	value[len] = '\0';
	while (len > 0 && (value[len - 1] == '\r' || value[len - 1] == '\n' || value[len - 1] == ' '))
		value[--len] = '\0';
	req->retry_after_secs = eo_http_retry_after_secs(value);
	return n;
}

/*
 * open_socket
 *		libcurl's CURLOPT_OPENSOCKETFUNCTION: called with each address, as
 *		resolved, before a connection to it is opened (also the address of
 *		a proxy, when one is used).  Refuses link-local and cloud metadata
 *		addresses while eo.http_allow_link_local is off: no packet is sent
 *		to them, and libcurl goes on with the host's next address, if any.
 *		Otherwise opens the socket as libcurl would.
 */
static curl_socket_t
open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *address)
{
	HttpRequest *req = arg;
	const char *why = eo_http_sockaddr_refused(&address->addr, req->refused_addr,
											   sizeof(req->refused_addr));

	if (why != NULL)
	{
		req->refused_why = why;
		return CURL_SOCKET_BAD;
	}
	return socket(address->family, address->socktype, address->protocol);
}

#if LIBCURL_VERSION_NUM >= 0x075000
/*
 * check_connection
 *		libcurl's CURLOPT_PREREQFUNCTION (7.80.0 and later): called before
 *		each request is sent, on a new or a reused connection.  A kept-alive
 *		connection opened while eo.http_allow_link_local was on opens no
 *		socket again: this is where it is refused after the setting was
 *		turned off.
 */
static int
check_connection(void *arg, char *primary_ip, char *local_ip,
				 int primary_port, int local_port)
{
	HttpRequest *req = arg;
	const char *why = eo_http_ip_text_refused(primary_ip);

	if (why == NULL)
		return CURL_PREREQFUNC_OK;
	strlcpy(req->refused_addr, primary_ip, sizeof(req->refused_addr));
	req->refused_why = why;
	return CURL_PREREQFUNC_ABORT;
}
#endif

/* The error text of a refused address (http_address.c).  palloc'd. */
static char *
refusal_error(const char *address, const char *why)
{
	return psprintf("refused to connect to %s: it is %s, and eo.http_allow_link_local is off",
					address, why);
}

/*
 * eo_webhook_signature
 *		The webhook-signature header value for a message, or NULL when the
 *		destination has no secret.  palloc'd.
 */
char *
eo_webhook_signature(const DestinationConfig *dest, const char *msg_id,
					 int64 timestamp, const char *body, size_t body_len)
{
	StringInfoData out;
	char		prefix[64 + 32];
	int			prefix_len;

	if (HTTP_OPTIONS(dest)->nsecrets == 0)
		return NULL;
	prefix_len = snprintf(prefix, sizeof(prefix), "%s." INT64_FORMAT ".", msg_id, timestamp);
	initStringInfo(&out);
	for (int i = 0; i < HTTP_OPTIONS(dest)->nsecrets; i++)
	{
		pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
		uint8		mac[PG_SHA256_DIGEST_LENGTH];
		char		b64[64];
		int			b64_len;

		if (ctx == NULL)
			ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
		if (pg_hmac_init(ctx, HTTP_OPTIONS(dest)->secrets[i].bytes, HTTP_OPTIONS(dest)->secrets[i].len) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) prefix, prefix_len) < 0 ||
			pg_hmac_update(ctx, (const uint8 *) body, body_len) < 0 ||
			pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
		{
			const char *why = pg_hmac_error(ctx);

			pg_hmac_free(ctx);
			elog(ERROR, "eo_processing: could not compute a webhook signature: %s", why);
		}
		pg_hmac_free(ctx);
		b64_len = pg_b64_encode((const char *) mac, sizeof(mac), b64, sizeof(b64));
		if (b64_len < 0)
			elog(ERROR, "eo_processing: could not encode a webhook signature");
		appendStringInfo(&out, "%sv1,%.*s", i > 0 ? " " : "", b64_len, b64);
	}
	return out.data;
}

/* Append a header line ("Name: value" or "Name;") to the request. */
static void
add_header(HttpRequest *req, const char *line)
{
	req->header_lines = lappend(req->header_lines, (char *) line);
}

/*
 * dest_sets, overridden
 *		Does the destination set this header (or, for overridden(), the
 *		relay: Content-Type)?  Then the message's copy is left out: how a
 *		message is sent is the destination owner's decision, not the
 *		publisher's.  A destination's Content-Type replaces the relay's.
 */
static bool
dest_sets(const DestinationConfig *dest, const char *name, int len)
{
	ListCell   *lc;

	foreach(lc, HTTP_OPTIONS(dest)->headers)
	{
		const char *line = lfirst(lc);

		if (pg_strncasecmp(line, name, len) == 0 && (line[len] == ':' || line[len] == ';'))
			return true;
	}
	return false;
}

static bool
overridden(const DestinationConfig *dest, const char *name, int len)
{
	return (len == 12 && pg_strncasecmp(name, "content-type", 12) == 0) ||
		dest_sets(dest, name, len);
}

/*
 * message_headers
 *		Add the message's headers, except those the destination sets.
 *		Returns an error text if one cannot be sent over HTTP (messages
 *		published before 0.3.0 were not checked).
 */
static const char *
message_headers(HttpRequest *req, const DestinationConfig *dest, const EoMessage *msg)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (msg->headers == NULL)
		return NULL;
	it = JsonbIteratorInit(&msg->headers->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		if (JsonbIteratorNext(&it, &v, true) != WJB_VALUE || v.type != jbvString ||
			!eo_http_header_name_ok(k.val.string.val, k.val.string.len) ||
			eo_http_header_reserved(k.val.string.val, k.val.string.len) ||
			!eo_http_header_value_ok(v.val.string.val, v.val.string.len))
			return "a message header cannot be sent over HTTP (its name is not a token, "
				"its value has a line break, or the relay sets it itself)";
		if (overridden(dest, k.val.string.val, k.val.string.len))
			continue;
		add_header(req, eo_http_header_line(k.val.string.val, k.val.string.len,
											v.val.string.val, v.val.string.len));
	}
	return NULL;
}

/*
 * eo_http_request_build
 *		A request for one attempt to deliver "msg" to "dest", in a new
 *		memory context under "parent": its body and header list, ready for
 *		eo_http_request_attach().  If it cannot be sent, build_error says
 *		why.  Raises an error only for out-of-memory conditions of
 *		PostgreSQL's allocator.
 */
HttpRequest *
eo_http_request_build(MemoryContext parent, const DestinationConfig *dest,
					  const EoMessage *msg, int attempt)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "eo_processing http request",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	HttpRequest *req = palloc0(sizeof(HttpRequest));
	char	   *id = eo_uuid_to_cstring(&msg->id);
	int64		now_secs = (int64) time(NULL);
	bool		json = (msg->payload_text == NULL);
	char	   *signature;
	const char *error;
	const char *refused;
	ListCell   *lc;

	req->cxt = cxt;
	req->dest_id = dest->id;
	req->msg_id = msg->id;
	req->attempt = attempt;
	req->started_at = GetCurrentTimestamp();
	req->retry_after_secs = -1;

	if (json)
		req->body = msg->payload ? JsonbToCString(NULL, &msg->payload->root, VARSIZE(msg->payload)) :
			pstrdup("null");
	else
		req->body = pstrdup(msg->payload_text);
	req->body_len = strlen(req->body);
	signature = eo_webhook_signature(dest, id, now_secs, req->body, req->body_len);

	if (!eo_http_host_allowed(HTTP_OPTIONS(dest)->host))
	{
		req->build_error = psprintf("host \"%s\" is not in eo.http_allowed_hosts", HTTP_OPTIONS(dest)->host);
		MemoryContextSwitchTo(old);
		return req;
	}
	/*
	 * A literal address in the URL is checked here too: through a proxy,
	 * open_socket() sees only the proxy's address.
	 */
	refused = eo_http_host_refused(HTTP_OPTIONS(dest)->host);
	if (refused != NULL)
	{
		req->build_error = refusal_error(HTTP_OPTIONS(dest)->host, refused);
		MemoryContextSwitchTo(old);
		return req;
	}

	foreach(lc, HTTP_OPTIONS(dest)->headers)
		add_header(req, lfirst(lc));
	error = message_headers(req, dest, msg);
	if (error != NULL)
	{
		/* A message header HTTP cannot carry: no retry will change that. */
		req->build_error = error;
		req->permanent = true;
		MemoryContextSwitchTo(old);
		return req;
	}
	if (!dest_sets(dest, "content-type", 12))
		add_header(req, json ? "Content-Type: application/json" :
				   "Content-Type: text/plain; charset=utf-8");
	add_header(req, psprintf("Idempotency-Key: %s", id));
	add_header(req, psprintf("webhook-id: %s", id));
	add_header(req, psprintf("webhook-timestamp: " INT64_FORMAT, now_secs));
	if (signature)
		add_header(req, psprintf("webhook-signature: %s", signature));
	add_header(req, psprintf("eo-topic: %s", msg->topic));
	if (msg->key)
		add_header(req, psprintf("eo-key: %s", msg->key));
	MemoryContextSwitchTo(old);
	return req;
}

/* Add a line to libcurl's copy of the header list; false if it failed. */
static bool
slist_add(HttpRequest *req, const char *line)
{
	struct curl_slist *l = curl_slist_append(req->headers, line);

	if (l == NULL)
		return false;
	req->headers = l;
	return true;
}

/*
 * eo_http_request_attach
 *		Set every option of a built request (no build_error) on "easy", a
 *		handle as curl_easy_init() or curl_easy_reset() leaves it, and keep
 *		it in req->easy.  The handle points into the request (body, header
 *		list, error buffer, callbacks' data) until it is reset.  Never
 *		raises an error.
 */
bool
eo_http_request_attach(HttpRequest *req, const DestinationConfig *dest, CURL *easy)
{
	ListCell   *lc;

	Assert(req->build_error == NULL && req->easy == NULL);
	/* libcurl's header list; "Expect:" keeps it from sending Expect. */
	foreach(lc, req->header_lines)
	{
		if (!slist_add(req, lfirst(lc)))
			return false;
	}
	if (!slist_add(req, "Expect:"))
		return false;
	req->easy = easy;
	curl_easy_setopt(req->easy, CURLOPT_URL, HTTP_OPTIONS(dest)->url);
	curl_easy_setopt(req->easy, CURLOPT_POST, 1L);
	curl_easy_setopt(req->easy, CURLOPT_POSTFIELDS, req->body);
	curl_easy_setopt(req->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
	curl_easy_setopt(req->easy, CURLOPT_HTTPHEADER, req->headers);
	curl_easy_setopt(req->easy, CURLOPT_USERAGENT, EO_USER_AGENT);
	curl_easy_setopt(req->easy, CURLOPT_TIMEOUT_MS, (long) HTTP_OPTIONS(dest)->timeout_ms);
	curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(HTTP_OPTIONS(dest)->timeout_ms, 10000));
	curl_easy_setopt(req->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(req->easy, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(req->easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(req->easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(req->easy, CURLOPT_SSL_VERIFYPEER, HTTP_OPTIONS(dest)->tls_verify ? 1L : 0L);
	curl_easy_setopt(req->easy, CURLOPT_SSL_VERIFYHOST, HTTP_OPTIONS(dest)->tls_verify ? 2L : 0L);
	curl_easy_setopt(req->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(req->easy, CURLOPT_WRITEFUNCTION, collect_body);
	curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, collect_header);
	curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, req);
	curl_easy_setopt(req->easy, CURLOPT_ERRORBUFFER, req->errbuf);
	curl_easy_setopt(req->easy, CURLOPT_PRIVATE, req);
	curl_easy_setopt(req->easy, CURLOPT_OPENSOCKETFUNCTION, open_socket);
	curl_easy_setopt(req->easy, CURLOPT_OPENSOCKETDATA, req);
#if LIBCURL_VERSION_NUM >= 0x075000
	curl_easy_setopt(req->easy, CURLOPT_PREREQFUNCTION, check_connection);
	curl_easy_setopt(req->easy, CURLOPT_PREREQDATA, req);
#endif
	return true;
}

/*
 * eo_http_request_wire_bytes
 *		The request as the relay's own client writes it (req->out): the
 *		request line, Host, User-Agent (unless the destination sets one),
 *		Content-Length, the header lines and the body, in one buffer in the
 *		request's context.
 */
void
eo_http_request_wire_bytes(HttpRequest *req, const DestinationConfig *dest)
{
	MemoryContext old = MemoryContextSwitchTo(req->cxt);
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfo(&buf, "POST %s HTTP/1.1\r\nHost: %s\r\n",
					 HTTP_OPTIONS(dest)->wire_target, HTTP_OPTIONS(dest)->wire_host_header);
	if (!dest_sets(dest, "user-agent", 10))
		appendStringInfoString(&buf, "User-Agent: " EO_USER_AGENT "\r\n");
	appendStringInfo(&buf, "Accept: */*\r\nContent-Length: %zu\r\n", req->body_len);
	foreach(lc, req->header_lines)
	{
		const char *line = lfirst(lc);
		size_t		len = strlen(line);

		/* "Name;" is an empty header, as libcurl writes it. */
		if (len > 0 && line[len - 1] == ';' && strchr(line, ':') == NULL)
			appendStringInfo(&buf, "%.*s:\r\n", (int) len - 1, line);
		else
			appendStringInfo(&buf, "%s\r\n", line);
	}
	appendStringInfoString(&buf, "\r\n");
	appendBinaryStringInfo(&buf, req->body, req->body_len);
	req->out = buf.data;
	req->out_len = buf.len;
	MemoryContextSwitchTo(old);
}

/*
 * After the transfer: status code and latency (from libcurl, for its
 * requests; the relay's own client has set them), and the start of the
 * answer made printable.
 */
void
eo_http_request_collect(HttpRequest *req, CURLcode result)
{
	curl_off_t	total = 0;

	req->result = result;
	if (req->easy != NULL)
	{
		if (curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &req->status) != CURLE_OK)
			req->status = 0;
		if (curl_easy_getinfo(req->easy, CURLINFO_TOTAL_TIME_T, &total) == CURLE_OK)
			req->latency_us = (int64) total;
	}
	req->snippet[req->snippet_len] = '\0';
	/* Keep printable ASCII only: the column is text in any encoding. */
	for (int i = 0; i < req->snippet_len; i++)
	{
		unsigned char c = (unsigned char) req->snippet[i];

		if (c < 0x20 || c > 0x7e)
			req->snippet[i] = (c == '\n' || c == '\t') ? ' ' : '?';
	}
}

/*
 * eo_http_request_error
 *		What went wrong, as recorded in eo.delivery and eo.http_attempt, or
 *		NULL for a 2xx answer.  palloc'd or constant.
 */
const char *
eo_http_request_error(const HttpRequest *req)
{
	if (req->build_error != NULL)
		return req->build_error;
	if (req->transport_error != NULL)
		return req->refused_why != NULL ?
			refusal_error(req->refused_addr, req->refused_why) : req->transport_error;
	if (req->result != CURLE_OK && req->refused_why != NULL)
		return refusal_error(req->refused_addr, req->refused_why);
	if (req->result != CURLE_OK)
		return psprintf("%s", req->errbuf[0] ? req->errbuf : curl_easy_strerror(req->result));
	if (req->status >= 200 && req->status < 300)
		return NULL;
	return psprintf("HTTP status %ld", req->status);
}

/*
 * eo_http_request_free
 *		Free the header list and the request's memory.  The caller has
 *		taken back the easy handle (req->easy is NULL).
 */
void
eo_http_request_free(HttpRequest *req)
{
	Assert(req->easy == NULL);
	if (req->headers != NULL)
		curl_slist_free_all(req->headers);
	MemoryContextDelete(req->cxt);
}
