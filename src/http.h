/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The HTTP sink: webhook requests (http_request.c), the sink that keeps
 *	  them in flight (sink_http.c) with libcurl or, for plain http://, the
 *	  relay's own client (http_wire.c, http_response.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_HTTP_H
#define EO_HTTP_H

#include "postgres.h"

#include <curl/curl.h>

#include "access/htup.h"
#include "access/tupdesc.h"
#include "lib/ilist.h"
#include "nodes/pg_list.h"
#include "utils/uuid.h"

#include "destination.h"
#include "outbox.h"
#include "sink.h"

/* Bytes of a response body kept in eo.http_attempt. */
/* A Standard Webhooks signing secret, decoded. */
typedef struct SigningSecret
{
	int			len;
	uint8	   *bytes;
} SigningSecret;

/* The options of an http destination (DestinationConfig.sink_options). */
typedef struct HttpOptions
{
	char	   *url;
	char	   *host;			/* lower case, from the url */
	List	   *headers;		/* of char *, "Name: value" */
	int			nsecrets;
	SigningSecret *secrets;
	int			timeout_ms;
	bool		tls_verify;

	/*
	 * For the relay's own client (http_wire.c), set for plain http:// URLs
	 * only: the host to resolve (no IPv6 brackets), the reuse key of its
	 * connections ("host:port"), the Host header and the request target.
	 */
	char	   *wire_host;
	char	   *wire_origin;
	char	   *wire_host_header;
	char	   *wire_target;
	int			port;
} HttpOptions;

#define HTTP_OPTIONS(cfg) ((HttpOptions *) (cfg)->sink_options)

#define EO_HTTP_SNIPPET_BYTES	256

/* Longest line of a response the relay's own client reads. */
#define EO_HTTP_MAX_LINE_BYTES	8192

/* Where http_response.c is in a response. */
typedef enum HttpResponsePart
{
	RESP_STATUS_LINE,
	RESP_HEADERS,
	RESP_BODY_LENGTH,			/* Content-Length bytes */
	RESP_CHUNK_SIZE,
	RESP_CHUNK_DATA,
	RESP_CHUNK_END,				/* the line break after a chunk */
	RESP_TRAILERS,
	RESP_BODY_TO_CLOSE,			/* until the receiver closes */
	RESP_DONE
} HttpResponsePart;

/* A response being read by the relay's own client (http_response.c). */
typedef struct HttpResponse
{
	HttpResponsePart part;
	int			minor_version;
	int			status;
	bool		close;			/* the connection ends after it */
	bool		has_transfer_encoding;
	bool		chunked;
	int64		content_length; /* -1: none */
	int64		left;			/* bytes of the body or chunk to come */
	int			retry_after_secs;	/* -1: none */
	int			header_bytes;
	int			line_len;
	char		line[EO_HTTP_MAX_LINE_BYTES + 1];
	int			snippet_len;
	char		snippet[EO_HTTP_SNIPPET_BYTES];
} HttpResponse;

/* Longest Retry-After the relay honours. */
#define EO_HTTP_MAX_RETRY_AFTER_SECS	(24 * 60 * 60)

/*
 * One request of one delivery attempt.  Everything it owns (body, header
 * list) is freed by eo_http_request_free(); the struct and body live in its
 * own memory context "cxt", child of the sink's.  The easy handle is lent by
 * the sink (sink_http.c) while the request is on its way and taken back
 * before the request is freed.  The response fields are written by libcurl
 * callbacks, which therefore never allocate and never raise errors.
 */
typedef struct HttpRequest
{
	struct SinkSend *send;		/* the relay's send this request serves */
	MemoryContext cxt;
	CURL	   *easy;			/* NULL if the request could not be built,
								 * or once the sink took it back */
	List	   *header_lines;	/* of char *, "Name: value" or "Name;" */
	struct curl_slist *headers; /* libcurl's copy, while it sends it */
	char	   *body;
	size_t		body_len;
	int32		dest_id;
	pg_uuid_t	msg_id;
	int			attempt;		/* 1 for the first attempt */
	TimestampTz started_at;
	const char *build_error;	/* why it was not sent (easy == NULL) */
	bool		permanent;		/* build_error will not go away by retrying */

	/* the relay's own client (http_wire.c) */
	bool		wire;			/* sent by it, not by libcurl */
	struct WireConn *wire_conn; /* its connection, while on the way */
	dlist_node	wire_node;		/* in its list of finished requests */
	char	   *out;			/* the request's bytes */
	int			out_len;
	int			out_sent;
	bool		wire_retried;	/* sent again on a new connection */
	int			timeout_ms;
	TimestampTz deadline;		/* for the whole request */
	TimestampTz connect_deadline;	/* for resolving and connecting */
	const char *transport_error;	/* no answer: why (else NULL) */
	HttpResponse resp;

	/* the response */
	CURLcode	result;
	long		status;			/* HTTP status, 0 if none */
	int			retry_after_secs;	/* from Retry-After, -1 if none */
	int64		latency_us;
	int			snippet_len;
	char		snippet[EO_HTTP_SNIPPET_BYTES + 1];
	char		errbuf[CURL_ERROR_SIZE];

	/*
	 * An address the relay refused to connect to (http_address.c), set by
	 * the libcurl callbacks; refused_why is NULL if none was.
	 */
	const char *refused_why;
	char		refused_addr[64];
} HttpRequest;

/* http_request.c */
extern HttpRequest *eo_http_request_build(MemoryContext parent,
										  const DestinationConfig *dest,
										  const EoMessage *msg, int attempt);
extern bool eo_http_request_attach(HttpRequest *req, const DestinationConfig *dest,
								   CURL *easy);
extern void eo_http_request_wire_bytes(HttpRequest *req, const DestinationConfig *dest);
extern void eo_http_request_collect(HttpRequest *req, CURLcode result);
extern int	eo_http_retry_after_secs(const char *value);
extern const char *eo_http_request_error(const HttpRequest *req);
extern void eo_http_request_free(HttpRequest *req);
extern char *eo_webhook_signature(const DestinationConfig *dest, const char *msg_id,
								  int64 timestamp, const char *body, size_t body_len);

/* http_response.c */
extern void eo_http_response_init(HttpResponse *resp);
extern int	eo_http_response_feed(HttpResponse *resp, const char *data, int len,
								  const char **error);
extern const char *eo_http_response_at_eof(HttpResponse *resp);

/* http_wire.c */
extern bool eo_http_wire_serves(const DestinationConfig *dest);
extern bool eo_http_wire_start(HttpRequest *req, const DestinationConfig *dest);
extern void eo_http_wire_abandon(HttpRequest *req);
extern int	eo_http_wire_sockets(const SinkSocket **out, uint64 *generation,
								 long *timeout_ms);
extern bool eo_http_wire_handle_event(pgsocket fd, uint32 events);
extern void eo_http_wire_timers(void);
extern HttpRequest *eo_http_wire_collect(void);

/* http_options.c */
extern bool eo_parse_http_option(const char *name, const JsonbValue *v,
								 DestinationConfig *cfg);
extern void eo_check_may_configure_http(void);
extern void eo_check_http_destination_host(const DestinationConfig *cfg);

#endif							/* EO_HTTP_H */
