/*-------------------------------------------------------------------------
 *
 * kafka_sink.h
 *	  The Kafka sink: options (kafka_options.c), the producers and delivery
 *	  (sink_kafka.c), and the transactional producer of exactly_once mode
 *	  with its position record (kafka_txn.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_KAFKA_SINK_H
#define EO_KAFKA_SINK_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "destination.h"

#define EO_KAFKA_DEFAULT_POSITIONS_TOPIC	"__eo_positions"
#define EO_KAFKA_MAX_NAME_BYTES				249 /* Kafka's limit for topics */

/* One librdkafka setting of option "properties" (name and value as text). */
typedef struct KafkaProperty
{
	char	   *name;
	char	   *value;
} KafkaProperty;

/* The options of a kafka destination (DestinationConfig.sink_options). */
typedef struct KafkaOptions
{
	char	   *bootstrap_servers;	/* "host:port,host:port" */
	char	   *topic;			/* NULL: the message's topic */
	char	   *positions_topic;	/* exactly_once: where positions go */
	bool		exactly_once;
	int			nproperties;
	KafkaProperty *properties;
} KafkaOptions;

#define KAFKA_OPTIONS(cfg) ((KafkaOptions *) (cfg)->sink_options)

/* kafka_options.c */
extern bool eo_parse_kafka_option(const char *name, const JsonbValue *v,
								  DestinationConfig *cfg);
extern void eo_kafka_init_options(DestinationConfig *cfg);
extern void eo_kafka_check_options(DestinationConfig *cfg);
extern bool eo_kafka_topic_ok(const char *s);
extern bool eo_kafka_property_secret(const char *name);

#endif							/* EO_KAFKA_SINK_H */
