/*
 * kafka_tool.c
 *	  A Kafka helper for the tests and benchmarks of the kafka sink, on
 *	  librdkafka (built by test/perl/EOKafka.pm and test/bench/kafka_bench.sh
 *	  with "cc -o kafka_tool kafka_tool.c -lrdkafka"):
 *
 *	  kafka_tool mock [<brokers>]
 *		  start a librdkafka mock cluster of <brokers> brokers (default 3) on
 *		  127.0.0.1, print its bootstrap servers as the first line, then read
 *		  one command per line from stdin and answer one line per command:
 *		  "ok" (with a value for some) or "error <why>".  End of input or
 *		  "quit" stops the cluster.  Commands:
 *
 *		  topic <name> <partitions> <replication>   create a topic
 *		  down <broker> | up <broker>				 a broker refuses or takes
 *													 connections again
 *		  leader <topic> <partition> <broker>		 move a partition's leader
 *		  rtt <broker> <ms>							 delay every answer of a broker
 *		  errors <api> <error>[*<n>] ...			 the next requests of <api>,
 *													 on any broker, fail with
 *													 these errors in order
 *		  broker_errors <broker> <api> <error>:<ms>[*<n>] ...
 *													 the same on one broker,
 *													 each answer delayed by <ms>
 *													 (error 0: a delayed success)
 *		  pending <broker> <api>					 "ok <n>": broker errors of
 *													 <api> not yet consumed
 *		  clear <api>								 drop the cluster's pending
 *													 errors of <api>
 *		  topic_error <topic> <error>				 metadata reports the topic
 *													 with this error (0: none)
 *		  coordinator <transaction|group> <id> <broker>
 *		  quit
 *
 *		  <api> is a request name (Produce, Metadata, FindCoordinator,
 *		  InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
 *		  TxnOffsetCommit, ...) or number; <error> a librdkafka error name
 *		  (NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT, _TRANSPORT for a
 *		  disconnect, ...) or number.
 *
 *	  kafka_tool read <bootstrap> <topic> [options]
 *		  read every partition of <topic> from its beginning and print one
 *		  JSON object per record and line, in partition then offset order:
 *		  {"partition":P,"offset":O,"key":K,"value":V,"timestamp":T,
 *		   "headers":[[name,value],...]}, key and values null when absent.
 *		  Stops when every partition is read to its end and at least
 *		  --min records were printed, or at --timeout.  Options:
 *		  --min <n>			   records to wait for (default 0)
 *		  --timeout <s>		   give up after this long (default 30); exit 3
 *							   if fewer than --min records were read
 *		  --read-committed	   isolation.level=read_committed
 *		  --received		   add "received": when the consumer got the
 *							   record (epoch seconds, microseconds); start
 *							   it before the records are produced to time
 *							   their way (fetches wait at most 5 ms)
 *
 *	  Exit status 0 on success, 1 with a message on stderr on errors, 2 on
 *	  bad arguments.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_WORDS 64
#define MAX_ERRORS 4096

/* Request types by name (Kafka protocol ApiKeys). */
static const struct
{
	const char *name;
	int16_t		key;
}			apis[] =
{
	{"Produce", 0},
	{"Fetch", 1},
	{"ListOffsets", 2},
	{"Metadata", 3},
	{"OffsetCommit", 8},
	{"OffsetFetch", 9},
	{"FindCoordinator", 10},
	{"JoinGroup", 11},
	{"Heartbeat", 12},
	{"LeaveGroup", 13},
	{"SyncGroup", 14},
	{"ApiVersions", 18},
	{"InitProducerId", 22},
	{"AddPartitionsToTxn", 24},
	{"AddOffsetsToTxn", 25},
	{"EndTxn", 26},
	{"TxnOffsetCommit", 28},
};

/* Monotonic clock in seconds. */
static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Parse a whole decimal number; 0 if it is not one. */
static int
parse_int(const char *s, long *out)
{
	char	   *end;

	if (s == NULL || *s == '\0')
		return 0;
	errno = 0;
	*out = strtol(s, &end, 10);
	return errno == 0 && *end == '\0';
}

/* An ApiKey by name or number, or -1. */
static int
parse_api(const char *s)
{
	long		n;

	if (parse_int(s, &n))
		return (n >= 0 && n < 100) ? (int) n : -1;
	for (size_t i = 0; i < sizeof(apis) / sizeof(apis[0]); i++)
		if (strcasecmp(s, apis[i].name) == 0)
			return apis[i].key;
	return -1;
}

/*
 * An error code by librdkafka name (with or without the leading underscore
 * of local errors, any case) or number; 0 with *ok false if unknown.
 */
static rd_kafka_resp_err_t
parse_error(const char *s, int *ok)
{
	const struct rd_kafka_err_desc *descs;
	size_t		n;
	long		num;

	*ok = 1;
	if (parse_int(s, &num))
		return (rd_kafka_resp_err_t) num;
	rd_kafka_get_err_descs(&descs, &n);
	for (size_t i = 0; i < n; i++)
	{
		const char *name = descs[i].name;

		if (name == NULL)
			continue;
		if (strcasecmp(name, s) == 0 || (name[0] == '_' && strcasecmp(name + 1, s) == 0))
			return descs[i].code;
	}
	*ok = 0;
	return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* Split a line into words at blanks (in place); returns the count. */
static int
split_words(char *line, char **words)
{
	int			n = 0;

	for (char *tok = strtok(line, " \t\r\n"); tok && n < MAX_WORDS; tok = strtok(NULL, " \t\r\n"))
		words[n++] = tok;
	return n;
}

/* Answer one command. */
static void
reply(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* "ok" or "error <message of err>". */
static void
reply_err(rd_kafka_resp_err_t err)
{
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		reply("ok");
	else
		reply("error %s", rd_kafka_err2str(err));
}

/*
 * Parse "<error>[*<n>]" (errors) or "<error>:<ms>[*<n>]" (broker_errors,
 * with_rtt) and append the n copies to errs/rtts; returns 0 on bad input.
 */
static int
parse_error_item(char *item, int with_rtt, rd_kafka_resp_err_t *errs, int *rtts, size_t *cnt)
{
	char	   *star = strchr(item, '*');
	char	   *colon = strchr(item, ':');
	long		times = 1;
	long		ms = 0;
	int			ok;
	rd_kafka_resp_err_t err;

	if (star)
	{
		*star = '\0';
		if (!parse_int(star + 1, &times) || times < 1)
			return 0;
	}
	if (with_rtt)
	{
		if (colon == NULL)
			return 0;
		*colon = '\0';
		if (!parse_int(colon + 1, &ms) || ms < 0)
			return 0;
	}
	else if (colon)
		return 0;
	err = parse_error(item, &ok);
	if (!ok || *cnt + times > MAX_ERRORS)
		return 0;
	for (long i = 0; i < times; i++)
	{
		errs[*cnt] = err;
		rtts[*cnt] = (int) ms;
		(*cnt)++;
	}
	return 1;
}

/*
 * Push errors, with their delays, on one broker's stack for an ApiKey: the
 * variadic call takes (error, rtt) pairs, so push them in slices of a fixed
 * size.
 */
static rd_kafka_resp_err_t
push_broker_errors(rd_kafka_mock_cluster_t *mc, int32_t broker, int16_t api,
				   const rd_kafka_resp_err_t *errs, const int *rtts, size_t cnt)
{
	size_t		i = 0;

	while (i < cnt)
	{
		rd_kafka_resp_err_t err;

		if (cnt - i >= 4)
		{
			err = rd_kafka_mock_broker_push_request_error_rtts(mc, broker, api, 4,
															   errs[i], rtts[i], errs[i + 1], rtts[i + 1],
															   errs[i + 2], rtts[i + 2], errs[i + 3], rtts[i + 3]);
			i += 4;
		}
		else
		{
			err = rd_kafka_mock_broker_push_request_error_rtts(mc, broker, api, 1,
															   errs[i], rtts[i]);
			i += 1;
		}
		if (err)
			return err;
	}
	return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* Run one command line against the mock cluster; returns 0 at "quit". */
static int
mock_command(rd_kafka_mock_cluster_t *mc, char *line)
{
	char	   *w[MAX_WORDS];
	int			n = split_words(line, w);
	long		a,
				b,
				c;
	static rd_kafka_resp_err_t errs[MAX_ERRORS];
	static int	rtts[MAX_ERRORS];
	size_t		cnt = 0;
	int			api;
	int			ok;

	if (n == 0)
	{
		reply("error empty command");
		return 1;
	}
	if (strcmp(w[0], "quit") == 0)
	{
		reply("ok");
		return 0;
	}
	if (strcmp(w[0], "topic") == 0 && n == 4 && parse_int(w[2], &a) && parse_int(w[3], &b))
		reply_err(rd_kafka_mock_topic_create(mc, w[1], (int) a, (int) b));
	else if ((strcmp(w[0], "down") == 0 || strcmp(w[0], "up") == 0) && n == 2 && parse_int(w[1], &a))
		reply_err(w[0][0] == 'd' ? rd_kafka_mock_broker_set_down(mc, (int32_t) a)
				  : rd_kafka_mock_broker_set_up(mc, (int32_t) a));
	else if (strcmp(w[0], "leader") == 0 && n == 4 && parse_int(w[2], &a) && parse_int(w[3], &b))
		reply_err(rd_kafka_mock_partition_set_leader(mc, w[1], (int32_t) a, (int32_t) b));
	else if (strcmp(w[0], "rtt") == 0 && n == 3 && parse_int(w[1], &a) && parse_int(w[2], &b))
		reply_err(rd_kafka_mock_broker_set_rtt(mc, (int32_t) a, (int) b));
	else if (strcmp(w[0], "errors") == 0 && n >= 3 && (api = parse_api(w[1])) >= 0)
	{
		for (int i = 2; i < n; i++)
			if (!parse_error_item(w[i], 0, errs, rtts, &cnt))
			{
				reply("error bad error item \"%s\"", w[i]);
				return 1;
			}
		rd_kafka_mock_push_request_errors_array(mc, (int16_t) api, cnt, errs);
		reply("ok");
	}
	else if (strcmp(w[0], "broker_errors") == 0 && n >= 4 && parse_int(w[1], &a) &&
			 (api = parse_api(w[2])) >= 0)
	{
		for (int i = 3; i < n; i++)
			if (!parse_error_item(w[i], 1, errs, rtts, &cnt))
			{
				reply("error bad error item \"%s\"", w[i]);
				return 1;
			}
		reply_err(push_broker_errors(mc, (int32_t) a, (int16_t) api, errs, rtts, cnt));
	}
	else if (strcmp(w[0], "pending") == 0 && n == 3 && parse_int(w[1], &a) &&
			 (api = parse_api(w[2])) >= 0)
	{
		size_t		left = 0;
		rd_kafka_resp_err_t err = rd_kafka_mock_broker_error_stack_cnt(mc, (int32_t) a,
																	   (int16_t) api, &left);

		if (err)
			reply_err(err);
		else
			reply("ok %zu", left);
	}
	else if (strcmp(w[0], "clear") == 0 && n == 2 && (api = parse_api(w[1])) >= 0)
	{
		rd_kafka_mock_clear_request_errors(mc, (int16_t) api);
		reply("ok");
	}
	else if (strcmp(w[0], "topic_error") == 0 && n == 3)
	{
		rd_kafka_resp_err_t err = parse_error(w[2], &ok);

		if (!ok)
			reply("error unknown error \"%s\"", w[2]);
		else
		{
			rd_kafka_mock_topic_set_error(mc, w[1], err);
			reply("ok");
		}
	}
	else if (strcmp(w[0], "coordinator") == 0 && n == 4 && parse_int(w[3], &c) &&
			 (strcmp(w[1], "transaction") == 0 || strcmp(w[1], "group") == 0))
		reply_err(rd_kafka_mock_coordinator_set(mc, w[1], w[2], (int32_t) c));
	else
		reply("error unknown command or arguments: %s", w[0]);
	return 1;
}

/* kafka_tool mock [<brokers>] */
static int
run_mock(int brokers)
{
	char		errstr[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mc;
	char		line[65536];

	/* The handle only hosts the cluster's thread; keep it quiet. */
	rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "kafka_tool: %s\n", errstr);
		return 1;
	}
	mc = rd_kafka_mock_cluster_new(rk, brokers);
	if (mc == NULL)
	{
		fprintf(stderr, "kafka_tool: cannot create a mock cluster\n");
		rd_kafka_destroy(rk);
		return 1;
	}
	reply("%s", rd_kafka_mock_cluster_bootstraps(mc));
	while (fgets(line, sizeof(line), stdin) != NULL)
		if (!mock_command(mc, line))
			break;
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	return 0;
}

/* Print bytes as a JSON string, or null. */
static void
json_string(const void *data, size_t len)
{
	const unsigned char *p = data;

	if (data == NULL)
	{
		fputs("null", stdout);
		return;
	}
	putchar('"');
	for (size_t i = 0; i < len; i++)
	{
		unsigned char ch = p[i];

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", stdout);
		else if (ch == '\t')
			fputs("\\t", stdout);
		else if (ch < 0x20 || ch == 0x7f)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

/* A record read, and when (epoch seconds). */
typedef struct Got
{
	rd_kafka_message_t *m;
	double		received;
} Got;

/* Wall clock in seconds since the epoch. */
static double
epoch_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One record as a JSON line; received < 0: without its time. */
static void
print_record(rd_kafka_message_t *m, double received)
{
	rd_kafka_headers_t *hdrs = NULL;
	rd_kafka_timestamp_type_t tstype;
	int64_t		ts = rd_kafka_message_timestamp(m, &tstype);

	printf("{\"partition\":%" PRId32 ",\"offset\":%" PRId64 ",\"key\":", m->partition, m->offset);
	json_string(m->key, m->key_len);
	fputs(",\"value\":", stdout);
	json_string(m->payload, m->len);
	printf(",\"timestamp\":%" PRId64 ",\"headers\":[", ts);
	if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		const char *name;
		const void *value;
		size_t		size;

		for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
		{
			if (i > 0)
				putchar(',');
			putchar('[');
			json_string(name, strlen(name));
			putchar(',');
			json_string(value, size);
			putchar(']');
		}
	}
	putchar(']');
	if (received >= 0)
		printf(",\"received\":%.6f", received);
	puts("}");
}

/* Ordering of buffered records: partition, then offset. */
static int
cmp_records(const void *a, const void *b)
{
	const rd_kafka_message_t *x = ((const Got *) a)->m;
	const rd_kafka_message_t *y = ((const Got *) b)->m;

	if (x->partition != y->partition)
		return x->partition < y->partition ? -1 : 1;
	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	return 0;
}

/* kafka_tool read <bootstrap> <topic> [options] */
static int
run_read(const char *bootstrap, const char *topic, long min, long timeout_s, int committed,
		 int received)
{
	char		errstr[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	const rd_kafka_metadata_t *md = NULL;
	rd_kafka_topic_partition_list_t *parts;
	double		deadline = now_s() + timeout_s;
	int			nparts = 0;
	char	   *at_end;
	int			ended = 0;
	Got		   *got = NULL;
	size_t		ngot = 0,
				cap = 0;
	rd_kafka_resp_err_t err;
	int			rc = 0;

#define SET(k, v) \
	if (rd_kafka_conf_set(conf, k, v, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) \
	{ fprintf(stderr, "kafka_tool: %s\n", errstr); return 1; }
	SET("bootstrap.servers", bootstrap);
	SET("group.id", "eo_kafka_tool");
	SET("enable.auto.commit", "false");
	SET("enable.partition.eof", "true");
	SET("auto.offset.reset", "earliest");
	SET("isolation.level", committed ? "read_committed" : "read_uncommitted");
	SET("log_level", "3");
	if (received)
	{
		SET("fetch.wait.max.ms", "5");
		SET("fetch.error.backoff.ms", "5");
	}
#undef SET
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "kafka_tool: %s\n", errstr);
		return 1;
	}

	/* The topic's partitions, retried while the cluster answers nothing. */
	for (;;)
	{
		rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);

		err = rd_kafka_metadata(rk, 0, rkt, &md, 2000);
		rd_kafka_topic_destroy(rkt);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 &&
			md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topics[0].partition_cnt > 0)
			break;
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			if (md->topic_cnt == 1)
				err = md->topics[0].err;
			rd_kafka_metadata_destroy(md);
			md = NULL;
		}
		if (now_s() >= deadline)
		{
			fprintf(stderr, "kafka_tool: no metadata for topic %s: %s\n", topic, rd_kafka_err2str(err));
			rd_kafka_destroy(rk);
			return 1;
		}
		{
			struct timespec pause = {0, 200 * 1000 * 1000};

			nanosleep(&pause, NULL);
		}
	}
	nparts = md->topics[0].partition_cnt;
	parts = rd_kafka_topic_partition_list_new(nparts);
	for (int i = 0; i < nparts; i++)
		rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[i].id)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_metadata_destroy(md);
	err = rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	if (err)
	{
		fprintf(stderr, "kafka_tool: cannot assign %s: %s\n", topic, rd_kafka_err2str(err));
		rd_kafka_destroy(rk);
		return 1;
	}

	/*
	 * Consume until every partition has reported its end since its last
	 * record and enough records arrived (an end reached with too few is
	 * waited past: the consumer keeps fetching).
	 */
	at_end = calloc(nparts + 1, 1);
	while (!(ended == nparts && (long) ngot >= min))
	{
		rd_kafka_message_t *m;

		if (now_s() >= deadline)
		{
			if ((long) ngot < min)
				rc = 3;
			break;
		}
		m = rd_kafka_consumer_poll(rk, 200);
		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
		{
			if (m->partition >= 0 && m->partition < nparts && !at_end[m->partition])
			{
				at_end[m->partition] = 1;
				ended++;
			}
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->err)
		{
			/* Transient fetch errors are retried by the consumer. */
			fprintf(stderr, "kafka_tool: consumer: %s\n", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->partition >= 0 && m->partition < nparts && at_end[m->partition])
		{
			at_end[m->partition] = 0;
			ended--;
		}
		if (ngot == cap)
		{
			cap = cap ? cap * 2 : 1024;
			got = realloc(got, cap * sizeof(*got));
			if (got == NULL)
			{
				fprintf(stderr, "kafka_tool: out of memory\n");
				exit(1);
			}
		}
		got[ngot].m = m;
		got[ngot].received = received ? epoch_s() : -1;
		ngot++;
	}
	qsort(got, ngot, sizeof(*got), cmp_records);
	for (size_t i = 0; i < ngot; i++)
	{
		print_record(got[i].m, got[i].received);
		rd_kafka_message_destroy(got[i].m);
	}
	fflush(stdout);
	if (rc == 3)
		fprintf(stderr, "kafka_tool: %zu records of %ld after %ld s\n", ngot, min, timeout_s);
	free(got);
	free(at_end);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return rc;
}

int
main(int argc, char **argv)
{
	long		n;

	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && strcmp(argv[1], "mock") == 0 && argc <= 3)
	{
		n = 3;
		if (argc == 3 && (!parse_int(argv[2], &n) || n < 1 || n > 16))
		{
			fprintf(stderr, "kafka_tool: bad broker count\n");
			return 2;
		}
		return run_mock((int) n);
	}
	if (argc >= 4 && strcmp(argv[1], "read") == 0)
	{
		long		min = 0,
					timeout_s = 30;
		int			committed = 0;
		int			received = 0;

		for (int i = 4; i < argc; i++)
		{
			if (strcmp(argv[i], "--min") == 0 && i + 1 < argc && parse_int(argv[i + 1], &min) && min >= 0)
				i++;
			else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc &&
					 parse_int(argv[i + 1], &timeout_s) && timeout_s > 0)
				i++;
			else if (strcmp(argv[i], "--read-committed") == 0)
				committed = 1;
			else if (strcmp(argv[i], "--received") == 0)
				received = 1;
			else
			{
				fprintf(stderr, "kafka_tool: bad option %s\n", argv[i]);
				return 2;
			}
		}
		return run_read(argv[2], argv[3], min, timeout_s, committed, received);
	}
	fprintf(stderr, "usage: kafka_tool mock [<brokers>] | read <bootstrap> <topic> [--min N] [--timeout S] [--read-committed] [--received]\n");
	return 2;
}
