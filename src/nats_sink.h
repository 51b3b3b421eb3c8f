/*-------------------------------------------------------------------------
 *
 * nats_sink.h
 *	  The NATS JetStream sink: options (nats_options.c) and delivery
 *	  (sink_nats.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_NATS_SINK_H
#define EO_NATS_SINK_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "destination.h"

#define EO_NATS_MAX_SERVERS			16
#define EO_NATS_DEFAULT_TIMEOUT_MS	5000

/* The options of a nats destination (DestinationConfig.sink_options). */
typedef struct NatsOptions
{
	int			nservers;
	char	  **servers;
	char	   *subject;		/* NULL: the message's topic */
	char	   *stream;			/* NULL: any stream */
	char	   *jwt;			/* from "credentials" */
	char	   *seed;			/* from "credentials" */
	char	   *token;
	char	   *user;
	char	   *password;
	bool		tls_verify;
	int			timeout_ms;		/* for the stream's acknowledgement */
} NatsOptions;

#define NATS_OPTIONS(cfg) ((NatsOptions *) (cfg)->sink_options)

/* nats_options.c */
extern bool eo_parse_nats_option(const char *name, const JsonbValue *v,
								 DestinationConfig *cfg);
extern void eo_nats_init_options(DestinationConfig *cfg);
extern void eo_nats_check_options(DestinationConfig *cfg);
extern bool eo_nats_subject_ok(const char *s);
extern bool eo_nats_header_reserved(const char *name, int len);

#endif							/* EO_NATS_SINK_H */
