/*-------------------------------------------------------------------------
 *
 * destination.h
 *	  Destinations the relay delivers to: their options, parsed and
 *	  validated in one place for both eo.create_destination() and the relay.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_DESTINATION_H
#define EO_DESTINATION_H

#include "postgres.h"

#include "nodes/pg_list.h"
#include "utils/jsonb.h"

/* Limits of http options (http_options.c). */
#define EO_HTTP_MAX_URL_BYTES		2048
#define EO_HTTP_MAX_SECRETS			10
#define EO_HTTP_MAX_HEADER_BYTES	8192	/* all of a destination's headers */
#define EO_HTTP_MAX_TIMEOUT_MS		600000
#define EO_MAX_CONCURRENCY			1000

struct SinkRoutine;

/*
 * A destination as the relay uses it: what every kind has, and the kind's
 * own options in sink_options (a struct of the sink's, palloc'd with it).
 */
typedef struct DestinationConfig
{
	int32		id;
	char	   *name;
	const struct SinkRoutine *sink;
	bool		enabled;
	int			concurrency;	/* asynchronous sinks: sends in flight */
	bool		log_all_attempts;	/* log_attempts = 'all' */
	int			max_attempts;
	int			ndelays;
	int64	   *delays_us;		/* retry schedule; the last one repeats */
	void	   *sink_options;
	Jsonb	   *options;		/* the relay's copy: the options as stored */
} DestinationConfig;

extern void eo_parse_destination(const char *kind, Jsonb *options,
								 DestinationConfig *cfg);
extern int64 eo_retry_delay_us(const DestinationConfig *cfg, int attempts);
extern void eo_bad_option(const char *option, const char *expected) pg_attribute_noreturn();
extern int	eo_option_int(const char *name, const JsonbValue *v, int min, int max);
extern void eo_check_may_configure_kind(const char *kind);

/* http_options.c */
extern Oid	eo_extension_owner(void);
extern bool eo_http_host_allowed(const char *host);
extern const char *eo_http_allowed_host_problem(const char *entry);
extern bool eo_http_header_name_ok(const char *name, int len);
extern bool eo_http_header_value_ok(const char *value, int len);
extern bool eo_http_header_reserved(const char *name, int len);
extern char *eo_http_header_line(const char *name, int nlen, const char *value, int vlen);

/* http_address.c */
struct sockaddr;
extern const char *eo_http_sockaddr_refused(const struct sockaddr *sa, char *text,
											size_t textlen);
extern const char *eo_http_ip_text_refused(const char *ip);
extern const char *eo_http_host_refused(const char *host);

#endif							/* EO_DESTINATION_H */
