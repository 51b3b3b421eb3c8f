/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The HTTP sink: webhook requests (http_request.c) and the relay's
 *	  dispatcher that keeps them in flight with libcurl (http_sink.c).
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
#define EO_HTTP_SNIPPET_BYTES	256

/*
 * The error of an attempt whose outcome was never recorded because the
 * relay stopped (shutdown, crash) while it was in flight: logged in
 * eo.http_attempt by the next relay worker.  Used inside a SQL string
 * literal: no quotes.
 */
#define EO_HTTP_INTERRUPTED \
	"interrupted: the relay stopped before the outcome was recorded; the receiver may have got the request"

/* Longest Retry-After the relay honours. */
#define EO_HTTP_MAX_RETRY_AFTER_SECS	(24 * 60 * 60)

/*
 * One request of one delivery attempt.  Everything it owns (body, header
 * list, the easy handle) is freed by eo_http_request_free(); the struct and
 * body live in its own memory context "cxt", child of the dispatcher's.
 * The response fields are written by libcurl callbacks, which therefore
 * never allocate and never raise errors.
 */
typedef struct HttpRequest
{
	dlist_node	node;			/* in the dispatcher's in-flight or done list */
	MemoryContext cxt;
	CURL	   *easy;			/* NULL if the request could not be built */
	struct curl_slist *headers;
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
extern void eo_http_request_collect(HttpRequest *req, CURLcode result);
extern const char *eo_http_request_error(const HttpRequest *req);
extern void eo_http_request_free(HttpRequest *req);
extern char *eo_webhook_signature(const DestinationConfig *dest, const char *msg_id,
								  int64 timestamp, const char *body, size_t body_len);

/* http_sink.c */
extern int	eo_http_step(void);
extern void eo_http_step_done(bool committed);
extern bool eo_http_work_waiting(void);
extern TimestampTz eo_http_next_due(void);
extern int	eo_http_wait(long timeout_ms);
extern void eo_http_forget_plans(void);

/* relay_worker.c, for the dispatcher */
extern void eo_message_from_spi(EoMessage *msg, HeapTuple tup, TupleDesc desc, int first);

#endif							/* EO_HTTP_H */
