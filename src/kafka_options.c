/*-------------------------------------------------------------------------
 *
 * kafka_options.c
 *	  The options of kafka destinations (see sink_kafka.c for delivery):
 *	  bootstrap_servers, topic, exactly_once, positions_topic and
 *	  properties, an object of librdkafka settings.
 *
 *	  Every property is tried on a scratch librdkafka configuration when
 *	  the destination is created or altered, so that an unknown name or a
 *	  bad value is refused then, not when the relay builds its producer.
 *	  Properties that would break the sink's guarantees are refused:
 *	  turning idempotence off, acks other than all, more than 5 requests
 *	  in flight, a transactional.id (the sink makes its own), a
 *	  partitioner that ignores the key, and the settings that make
 *	  librdkafka load code or run commands inside the server.
 *
 *	  Errors name the property, and quote neither the value nor
 *	  librdkafka's message (which may quote the value) for a secret one
 *	  (eo_kafka_property_secret); eo.destinations hides the same ones.
 *
 *	  Runs in backends checking options and in the relay parsing them;
 *	  the scratch configuration is freed before any error is raised.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "destination.h"
#include "kafka_sink.h"

#define KAFKA_MAX_SERVERS_BYTES		4096
#define KAFKA_MAX_VALUE_BYTES		65536
#define KAFKA_MAX_PROPERTIES		100

/*
 * eo_kafka_topic_ok
 *		Whether "s" is a legal Kafka topic name: 1 to 249 characters of
 *		[a-zA-Z0-9._-], and neither "." nor "..".
 */
bool
eo_kafka_topic_ok(const char *s)
{
	size_t		len = strlen(s);

	if (len == 0 || len > EO_KAFKA_MAX_NAME_BYTES ||
		strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				  "0123456789._-") == len;
}

/*
 * eo_kafka_property_secret
 *		Whether a librdkafka property holds a secret: the ones librdkafka
 *		itself marks sensitive (passwords, client secrets, private keys,
 *		OAUTHBEARER configuration) and, to be safe, any name that mentions
 *		a password, a secret or a private key.  The SQL view
 *		eo.destinations applies the same rule.
 */
bool
eo_kafka_property_secret(const char *name)
{
	return strstr(name, "password") != NULL ||
		strstr(name, "secret") != NULL ||
		strcmp(name, "ssl.key.pem") == 0 ||
		strcmp(name, "ssl_key") == 0 ||
		strcmp(name, "sasl.oauthbearer.config") == 0;
}

/*
 * refused_property
 *		Why a property is refused whatever librdkafka thinks of it, or
 *		NULL.  "value" is the text form, already checked for NUL bytes.
 */
static const char *
refused_property(const char *name, const char *value)
{
	if (strcmp(name, "bootstrap.servers") == 0 || strcmp(name, "metadata.broker.list") == 0)
		return "the brokers are given by option \"bootstrap_servers\"";
	if (strcmp(name, "transactional.id") == 0)
		return "the relay makes the transactional.id itself (see option \"exactly_once\")";
	if (strcmp(name, "enable.idempotence") == 0 && strcmp(value, "true") != 0)
		return "the relay needs the idempotent producer: without it a retry may duplicate or reorder records";
	if ((strcmp(name, "acks") == 0 || strcmp(name, "request.required.acks") == 0) &&
		strcmp(value, "all") != 0 && strcmp(value, "-1") != 0)
		return "a record counts as delivered only once every in-sync replica has it (acks=all)";
	if (strcmp(name, "max.in.flight.requests.per.connection") == 0 ||
		strcmp(name, "max.in.flight") == 0)
	{
		char	   *end;
		long		n = strtol(value, &end, 10);

		if (*end != '\0' || n < 1 || n > 5)
			return "the idempotent producer keeps order only with 1 to 5 requests in flight";
	}
	if ((strcmp(name, "retries") == 0 || strcmp(name, "message.send.max.retries") == 0) &&
		strcmp(value, "0") == 0)
		return "the idempotent producer needs retries";
	if (strcmp(name, "partitioner") == 0 && strcmp(value, "random") == 0)
		return "a random partitioner scatters a key's records over partitions and loses their order";
	if (strcmp(name, "queuing.strategy") == 0 && strcmp(value, "fifo") != 0)
		return "only fifo queuing keeps the records of a key in order";
	if (strcmp(name, "plugin.library.paths") == 0 || strcmp(name, "ssl.engine.location") == 0 ||
		strcmp(name, "sasl.kerberos.kinit.cmd") == 0)
		return "the relay does not load libraries or run commands inside the database server";
	if (strcmp(name, "dr_cb") == 0 || strcmp(name, "dr_msg_cb") == 0 ||
		strcmp(name, "enabled_events") == 0 || strcmp(name, "opaque") == 0 ||
		strcmp(name, "default_topic_conf") == 0 || strcmp(name, "interceptors") == 0)
		return "the relay sets it itself";
	return NULL;
}

/* The text of a property's JSON value: a string, number or boolean. */
static char *
property_value(const char *name, const JsonbValue *v)
{
	if (v->type == jbvString)
	{
		char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

		if (strlen(s) != (size_t) v->val.string.len || v->val.string.len > KAFKA_MAX_VALUE_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the value of property \"%s\" must be at most %d bytes without NUL characters",
							name, KAFKA_MAX_VALUE_BYTES)));
		return s;
	}
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("the value of property \"%s\" must be a string, a number or a boolean", name)));
	return NULL;				/* not reached */
}

/*
 * parse_properties
 *		Option "properties": every entry checked against the refusals
 *		above, then set on a scratch librdkafka configuration (freed
 *		before any error is raised).
 */
static void
parse_properties(const JsonbValue *v, KafkaOptions *opts)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	val;
	JsonbIteratorToken tok;
	int			n;

	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		eo_bad_option("properties", "an object of librdkafka settings, such as {\"compression.type\": \"zstd\"}");
	n = JsonContainerSize(v->val.binary.data);
	if (n > KAFKA_MAX_PROPERTIES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"properties\" has more than %d entries", KAFKA_MAX_PROPERTIES)));
	opts->properties = palloc0(sizeof(KafkaProperty) * Max(n, 1));
	opts->nproperties = 0;
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		char	   *name;
		char	   *value;
		const char *why;
		rd_kafka_conf_t *scratch;
		rd_kafka_conf_res_t res;
		char		errstr[512];

		if (tok != WJB_KEY)
			continue;
		name = pnstrdup(k.val.string.val, k.val.string.len);
		if (JsonbIteratorNext(&it, &val, true) != WJB_VALUE)
			elog(ERROR, "eo_processing: malformed jsonb object");
		if (name[0] == '\0' || strlen(name) != (size_t) k.val.string.len)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"properties\" has an empty or malformed property name")));
		value = property_value(name, &val);
		why = refused_property(name, value);
		if (why != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("property \"%s\" cannot be set to this value for a kafka destination", name),
					 errdetail("%c%s.", pg_toupper((unsigned char) why[0]), why + 1)));

		scratch = rd_kafka_conf_new();
		res = rd_kafka_conf_set(scratch, name, value, errstr, sizeof(errstr));
		rd_kafka_conf_destroy(scratch);
		if (res == RD_KAFKA_CONF_UNKNOWN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown librdkafka property \"%s\"", name),
					 errhint("The properties are librdkafka's configuration properties (its CONFIGURATION.md), such as \"compression.type\" or \"sasl.username\".")));
		if (res != RD_KAFKA_CONF_OK)
		{
			if (eo_kafka_property_secret(name))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value for librdkafka property \"%s\"", name)));
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for librdkafka property \"%s\"", name),
					 errdetail("librdkafka says: %s.", errstr)));
		}
		opts->properties[opts->nproperties].name = name;
		opts->properties[opts->nproperties].value = value;
		opts->nproperties++;
	}
}

/*
 * parse_servers
 *		Option "bootstrap_servers": "host:port[,host:port...]" or an array
 *		of "host:port"; kept as one comma-separated string.  No user
 *		names or passwords (they go in the hidden properties).
 */
static char *
parse_servers(const JsonbValue *v)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (v->type == jbvString)
		appendBinaryStringInfo(&buf, v->val.string.val, v->val.string.len);
	else if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	elem;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		{
			if (tok != WJB_ELEM)
				continue;
			if (elem.type != jbvString)
				eo_bad_option("bootstrap_servers", "a string \"host:port,host:port\" or an array of \"host:port\" strings");
			if (buf.len > 0)
				appendStringInfoChar(&buf, ',');
			appendBinaryStringInfo(&buf, elem.val.string.val, elem.val.string.len);
		}
	}
	else
		eo_bad_option("bootstrap_servers", "a string \"host:port,host:port\" or an array of \"host:port\" strings");

	if (buf.len == 0 || buf.len > KAFKA_MAX_SERVERS_BYTES || strlen(buf.data) != (size_t) buf.len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"bootstrap_servers\" must be 1 to %d bytes long", KAFKA_MAX_SERVERS_BYTES)));
	if (strchr(buf.data, '@') != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"bootstrap_servers\" must not contain a user name or password"),
				 errhint("Put credentials in \"properties\" (\"sasl.username\", \"sasl.password\"): they are hidden there.")));
	if (strpbrk(buf.data, " \t\r\n/?#") != NULL || buf.data[0] == ',' ||
		buf.data[buf.len - 1] == ',' || strstr(buf.data, ",,") != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"bootstrap_servers\" is not a list of host:port"),
				 errdetail("Brokers are separated by commas, such as \"kafka1:9092,kafka2:9092\".")));
	return buf.data;
}

/* A topic option: a legal Kafka topic name; palloc'd. */
static char *
topic_option(const char *name, const JsonbValue *v)
{
	char	   *s;

	if (v->type != jbvString)
		eo_bad_option(name, "a Kafka topic name");
	s = pnstrdup(v->val.string.val, v->val.string.len);
	if (strlen(s) != (size_t) v->val.string.len || !eo_kafka_topic_ok(s))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"%s\" is not a valid Kafka topic name", name),
				 errdetail("A topic name is 1 to %d characters among letters, digits, \".\", \"_\" and \"-\", and neither \".\" nor \"..\".",
						   EO_KAFKA_MAX_NAME_BYTES)));
	return s;
}

/*
 * eo_parse_kafka_option
 *		Handle one option of a kafka destination; false if "name" is not a
 *		kafka-only option (the caller handles the common ones).
 */
bool
eo_parse_kafka_option(const char *name, const JsonbValue *v, DestinationConfig *cfg)
{
	KafkaOptions *opts = KAFKA_OPTIONS(cfg);

	if (strcmp(name, "bootstrap_servers") == 0)
		opts->bootstrap_servers = parse_servers(v);
	else if (strcmp(name, "topic") == 0)
		opts->topic = topic_option(name, v);
	else if (strcmp(name, "positions_topic") == 0)
		opts->positions_topic = topic_option(name, v);
	else if (strcmp(name, "exactly_once") == 0)
	{
		if (v->type != jbvBool)
			eo_bad_option(name, "true or false");
		opts->exactly_once = v->val.boolean;
	}
	else if (strcmp(name, "properties") == 0)
		parse_properties(v, opts);
	else
		return false;
	return true;
}

/* Defaults of a kafka destination's options. */
void
eo_kafka_init_options(DestinationConfig *cfg)
{
	KafkaOptions *opts = palloc0(sizeof(KafkaOptions));

	opts->positions_topic = pstrdup(EO_KAFKA_DEFAULT_POSITIONS_TOPIC);
	cfg->sink_options = opts;
}

/* After parsing: bootstrap_servers is required. */
void
eo_kafka_check_options(DestinationConfig *cfg)
{
	KafkaOptions *opts = KAFKA_OPTIONS(cfg);

	if (opts->bootstrap_servers == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("destinations of kind \"kafka\" need the option \"bootstrap_servers\""),
				 errhint("For example {\"bootstrap_servers\": \"kafka1:9092,kafka2:9092\"}.")));
	if (opts->topic != NULL && opts->exactly_once &&
		strcmp(opts->topic, opts->positions_topic) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options \"topic\" and \"positions_topic\" must differ")));
}
