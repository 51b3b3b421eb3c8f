/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The HTTP sink: webhook requests (http_request.c) and the sink that
 *	  keeps them in flight with libcurl (sink_http.c).
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
} HttpOptions;

#define HTTP_OPTIONS(cfg) ((HttpOptions *) (cfg)->sink_options)

#define EO_HTTP_SNIPPET_BYTES	256

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
	struct curl_slist *headers;
	char	   *body;
	size_t		body_len;
	int32		dest_id;
	pg_uuid_t	msg_id;
	int			attempt;		/* 1 for the first attempt */
	TimestampTz started_at;
	const char *build_error;	/* why it was not sent (easy == NULL) */
	bool		permanent;		/* build_error will not go away by retrying */

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
extern void eo_http_request_attach(HttpRequest *req, const DestinationConfig *dest,
								   CURL *easy);
extern void eo_http_request_collect(HttpRequest *req, CURLcode result);
extern const char *eo_http_request_error(const HttpRequest *req);
extern void eo_http_request_free(HttpRequest *req);
extern char *eo_webhook_signature(const DestinationConfig *dest, const char *msg_id,
								  int64 timestamp, const char *body, size_t body_len);

/* http_options.c */
extern bool eo_parse_http_option(const char *name, const JsonbValue *v,
								 DestinationConfig *cfg);
extern void eo_check_may_configure_http(void);
extern void eo_check_http_destination_host(const DestinationConfig *cfg);

#endif							/* EO_HTTP_H */
