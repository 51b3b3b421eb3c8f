/*-------------------------------------------------------------------------
 *
 * http_response.c
 *	  Reads an HTTP/1.x response as it arrives, for the relay's own client
 *	  (http_wire.c): the status, Retry-After, the first bytes of the body,
 *	  where the response ends and whether the connection may carry the next
 *	  request.
 *
 *	  The parser is strict on purpose.  A connection carries one request at
 *	  a time, and it is reused only when the response's end was known
 *	  exactly (Content-Length or chunked framing, no stray bytes after it):
 *	  a response read into the wrong request would record a failed
 *	  delivery as delivered.  Whatever the parser cannot read with
 *	  certainty (a status line that is not HTTP/1.x, conflicting lengths,
 *	  a folded header line, a bad chunk size, a header section over 64 kB)
 *	  fails the attempt and closes the connection; the delivery is retried.
 *
 *	  Framing, as RFC 9112 section 6.3 orders it: 1xx answers (but 101) are
 *	  skipped; 204 and 304 have no body; Transfer-Encoding ending in chunked,
 *	  then Content-Length; otherwise the body runs until the receiver closes
 *	  the connection.  HTTP/1.0 answers and "Connection: close" end the
 *	  connection after the response.
 *
 *	  Memory: the parser is a plain struct inside its request; it never
 *	  allocates and never raises an error (errors are returned as constant
 *	  strings).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "http.h"

#define RESPONSE_MAX_HEADER_BYTES	(64 * 1024)

static const char *const error_line_too_long =
"a line of the response is longer than " CppAsString2(EO_HTTP_MAX_LINE_BYTES) " bytes";

/* Start reading a new response. */
void
eo_http_response_init(HttpResponse *resp)
{
	memset(resp, 0, sizeof(HttpResponse));
	resp->part = RESP_STATUS_LINE;
	resp->content_length = -1;
	resp->retry_after_secs = -1;
}

/* Is "name" (len bytes) the header "want" (lower case)? */
static bool
header_is(const char *name, int len, const char *want)
{
	return strlen(want) == (size_t) len && pg_strncasecmp(name, want, len) == 0;
}

/* Does a comma-separated header value hold the token "want" (lower case)? */
static bool
has_token(const char *value, const char *want)
{
	size_t		wlen = strlen(want);
	const char *p = value;

	while (*p)
	{
		const char *start;
		const char *end;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if ((size_t) (end - start) == wlen && pg_strncasecmp(start, want, wlen) == 0)
			return true;
	}
	return false;
}

/* The status line: "HTTP/1.<d> <3 digits>[ reason]". */
static const char *
status_line(HttpResponse *resp, const char *line, int len)
{
	if (len < 12 || strncmp(line, "HTTP/1.", 7) != 0 || !isdigit((unsigned char) line[7]) ||
		line[8] != ' ' || !isdigit((unsigned char) line[9]) ||
		!isdigit((unsigned char) line[10]) || !isdigit((unsigned char) line[11]) ||
		(len > 12 && line[12] != ' '))
		return "the receiver's answer is not an HTTP/1.x response";
	resp->minor_version = line[7] - '0';
	resp->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
	if (resp->status < 100)
		return "the receiver's answer has an invalid status code";
	resp->close = (resp->minor_version == 0);
	resp->part = RESP_HEADERS;
	return NULL;
}

/* One header field line (not the empty line that ends the section). */
static const char *
header_line(HttpResponse *resp, char *line, int len)
{
	char	   *colon;
	char	   *value;
	int			nlen;

	if (line[0] == ' ' || line[0] == '\t')
		return "the response folds a header line (obsolete line folding)";
	colon = memchr(line, ':', len);
	if (colon == NULL || colon == line)
		return "the response has a malformed header line";
	nlen = colon - line;
	if (line[nlen - 1] == ' ' || line[nlen - 1] == '\t')
		return "the response has a malformed header line";
	value = colon + 1;
	while (*value == ' ' || *value == '\t')
		value++;
	/* line is NUL-terminated with trailing white space removed */

	if (header_is(line, nlen, "content-length"))
	{
		int64		n = 0;
		const char *p = value;

		if (*p == '\0')
			return "the response has an invalid Content-Length";
		for (; *p; p++)
		{
			if (!isdigit((unsigned char) *p) || n > (PG_INT64_MAX - 9) / 10)
				return "the response has an invalid Content-Length";
			n = n * 10 + (*p - '0');
		}
		if (resp->content_length >= 0 && resp->content_length != n)
			return "the response has conflicting Content-Length headers";
		resp->content_length = n;
	}
	else if (header_is(line, nlen, "transfer-encoding"))
	{
		const char *last = strrchr(value, ',');

		last = last ? last + 1 : value;
		while (*last == ' ' || *last == '\t')
			last++;
		resp->has_transfer_encoding = true;
		resp->chunked = (pg_strcasecmp(last, "chunked") == 0);
	}
	else if (header_is(line, nlen, "connection"))
	{
		if (has_token(value, "close"))
			resp->close = true;
	}
	else if (header_is(line, nlen, "retry-after"))
		resp->retry_after_secs = eo_http_retry_after_secs(value);
	return NULL;
}

/*
 * end_of_headers
 *		The header section is complete: skip an interim (1xx) answer, or
 *		decide how the body is framed.
 */
static const char *
end_of_headers(HttpResponse *resp)
{
	if (resp->status == 101)
		return "the receiver switched protocols (101), which webhooks do not do";
	if (resp->status < 200)
	{
		/* An interim answer: the final one follows. */
		int			header_bytes = resp->header_bytes;

		eo_http_response_init(resp);
		resp->header_bytes = header_bytes;
		return NULL;
	}
	if (resp->status == 204 || resp->status == 304)
		resp->part = RESP_DONE;
	else if (resp->has_transfer_encoding && resp->chunked)
	{
		/* Transfer-Encoding overrides Content-Length (not reused then). */
		if (resp->content_length >= 0)
			resp->close = true;
		resp->part = RESP_CHUNK_SIZE;
	}
	else if (resp->has_transfer_encoding)
	{
		resp->close = true;
		resp->part = RESP_BODY_TO_CLOSE;
	}
	else if (resp->content_length >= 0)
	{
		resp->left = resp->content_length;
		resp->part = resp->left > 0 ? RESP_BODY_LENGTH : RESP_DONE;
	}
	else
	{
		resp->close = true;
		resp->part = RESP_BODY_TO_CLOSE;
	}
	return NULL;
}

/* A chunk-size line: hex digits, then optional extensions after ';'. */
static const char *
chunk_size_line(HttpResponse *resp, const char *line)
{
	int64		n = 0;
	const char *p = line;

	if (!isxdigit((unsigned char) *p))
		return "the response has an invalid chunk size";
	for (; isxdigit((unsigned char) *p); p++)
	{
		int			d = isdigit((unsigned char) *p) ? *p - '0' :
			pg_ascii_tolower((unsigned char) *p) - 'a' + 10;

		if (n > (PG_INT64_MAX >> 4))
			return "the response has an invalid chunk size";
		n = (n << 4) + d;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != '\0' && *p != ';')
		return "the response has an invalid chunk size";
	resp->left = n;
	resp->part = n > 0 ? RESP_CHUNK_DATA : RESP_TRAILERS;
	return NULL;
}

/* One complete line (without its line break), NUL-terminated. */
static const char *
take_line(HttpResponse *resp, char *line, int len)
{
	/* Trailing white space is never significant here. */
	while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
		line[--len] = '\0';

	switch (resp->part)
	{
		case RESP_STATUS_LINE:
			return status_line(resp, line, len);
		case RESP_HEADERS:
			return len == 0 ? end_of_headers(resp) : header_line(resp, line, len);
		case RESP_CHUNK_SIZE:
			return chunk_size_line(resp, line);
		case RESP_CHUNK_END:
			if (len != 0)
				return "the response has a chunk longer than its size";
			resp->part = RESP_CHUNK_SIZE;
			return NULL;
		case RESP_TRAILERS:
			if (len == 0)
				resp->part = RESP_DONE;
			return NULL;
		default:
			return "internal error: a line in a response body";
	}
}

/* Keep the first bytes of the body for eo.http_attempt. */
static void
take_body(HttpResponse *resp, const char *data, int n)
{
	int			room = EO_HTTP_SNIPPET_BYTES - resp->snippet_len;

	if (room > 0)
	{
		int			take = Min(n, room);

		memcpy(resp->snippet + resp->snippet_len, data, take);
		resp->snippet_len += take;
	}
}

/*
 * eo_http_response_feed
 *		Read up to len bytes of the response.  Returns how many were used
 *		(fewer than len only once the response is complete: the rest does
 *		not belong to it), or -1 with *error set when the response cannot
 *		be read.  Check resp->part == RESP_DONE for completion.
 */
int
eo_http_response_feed(HttpResponse *resp, const char *data, int len, const char **error)
{
	int			used = 0;

	*error = NULL;
	while (used < len && resp->part != RESP_DONE)
	{
		if (resp->part == RESP_BODY_LENGTH || resp->part == RESP_CHUNK_DATA ||
			resp->part == RESP_BODY_TO_CLOSE)
		{
			int			n = len - used;

			if (resp->part != RESP_BODY_TO_CLOSE && resp->left < n)
				n = (int) resp->left;
			take_body(resp, data + used, n);
			used += n;
			if (resp->part == RESP_BODY_TO_CLOSE)
				continue;
			resp->left -= n;
			if (resp->left == 0)
				resp->part = (resp->part == RESP_BODY_LENGTH) ? RESP_DONE : RESP_CHUNK_END;
			continue;
		}

		/* A line: collect it up to its LF. */
		{
			const char *lf = memchr(data + used, '\n', len - used);
			int			n = lf ? (int) (lf - (data + used)) : len - used;

			if (resp->line_len + n > EO_HTTP_MAX_LINE_BYTES)
			{
				*error = error_line_too_long;
				return -1;
			}
			memcpy(resp->line + resp->line_len, data + used, n);
			resp->line_len += n;
			used += n;
			if (resp->part == RESP_STATUS_LINE || resp->part == RESP_HEADERS)
			{
				resp->header_bytes += n + (lf ? 1 : 0);
				if (resp->header_bytes > RESPONSE_MAX_HEADER_BYTES)
				{
					*error = "the response's header section is larger than 64 kB";
					return -1;
				}
			}
			if (lf == NULL)
				break;
			used++;				/* the LF */
			if (resp->line_len > 0 && resp->line[resp->line_len - 1] == '\r')
				resp->line_len--;
			resp->line[resp->line_len] = '\0';
			if (memchr(resp->line, '\0', resp->line_len) != NULL ||
				memchr(resp->line, '\r', resp->line_len) != NULL)
			{
				*error = "the response has a control character in a line";
				return -1;
			}
			*error = take_line(resp, resp->line, resp->line_len);
			resp->line_len = 0;
			if (*error != NULL)
				return -1;
		}
	}
	return used;
}

/*
 * eo_http_response_at_eof
 *		The receiver closed the connection: is the response complete (a
 *		body that runs until the close), or was it cut off?  Returns NULL
 *		when complete, else the error.
 */
const char *
eo_http_response_at_eof(HttpResponse *resp)
{
	if (resp->part == RESP_BODY_TO_CLOSE)
	{
		resp->part = RESP_DONE;
		return NULL;
	}
	if (resp->part == RESP_DONE)
		return NULL;
	if (resp->part == RESP_STATUS_LINE && resp->line_len == 0 && resp->header_bytes == 0)
		return "the receiver closed the connection without answering";
	return "the receiver closed the connection before the response was complete";
}
