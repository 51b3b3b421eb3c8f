/*
 * nats_tool.c
 *	  A small JetStream client for the tests and benchmarks of the nats
 *	  sink (built by them with "cc -o nats_tool nats_tool.c -lnats"):
 *
 *	  nats_tool create <servers> <stream> <subjects> <replicas> <dup_window_s>
 *		  create a file stream capturing <subjects> (comma-separated),
 *		  retrying while the cluster elects its leaders (up to 60 s)
 *	  nats_tool count <servers> <stream>
 *		  print the number of messages the stream holds
 *	  nats_tool dump <servers> <stream>
 *		  print one line per stored message, in stream order:
 *		  "<seq> <Nats-Msg-Id> <eo-key or -> <subject> <stored at> <eo-topic>
 *		  <payload>", the time the stream stored it in epoch seconds
 *	  nats_tool delete <servers> <stream>
 *		  delete the stream if it exists
 *	  nats_tool pub <servers> <subject> <msg-id> <payload>
 *		  a JetStream publish with header Nats-Msg-Id; prints the stream's
 *		  sequence and "duplicate" when the stream already had the id
 *
 *	  <servers> is a comma-separated list of nats:// URLs.  Exit status 0 on
 *	  success, 1 with a message on stderr otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

static natsConnection *nc;
static jsCtx *js;

/* Connect to the servers and open a JetStream context, or exit. */
static void
connect_to(const char *servers)
{
	natsOptions *opts;
	natsStatus	s;
	int			tries = 0;
	char	   *copy = strdup(servers);
	const char *urls[16];
	int			n = 0;

	for (char *tok = strtok(copy, ","); tok && n < 16; tok = strtok(NULL, ","))
		urls[n++] = tok;
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetServers(opts, urls, n);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(opts, -1);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, 2000);
	while (s == NATS_OK && tries < 100)
	{
		s = natsConnection_Connect(&nc, opts);
		if (s != NATS_NO_SERVER)
			break;
		nats_Sleep(100);
		tries++;
		s = NATS_OK;
	}
	if (s == NATS_OK)
		s = natsConnection_JetStream(&js, nc, NULL);
	if (s != NATS_OK)
	{
		fprintf(stderr, "nats_tool: cannot connect to %s: %s\n", servers, natsStatus_GetText(s));
		exit(1);
	}
	natsOptions_Destroy(opts);
	free(copy);
}

/* Options with a longer wait for API requests (leader elections). */
static jsOptions *
api_options(void)
{
	static jsOptions o;

	jsOptions_Init(&o);
	o.Wait = 5000;
	return &o;
}

/* Stream info, retried for up to 60 s while the cluster settles; or exit. */
static jsStreamInfo *
stream_info(const char *stream)
{
	jsStreamInfo *si = NULL;
	jsErrCode	ec = 0;
	natsStatus	s = NATS_ERR;
	time_t		until = time(NULL) + 60;

	while (time(NULL) < until)
	{
		s = js_GetStreamInfo(&si, js, stream, api_options(), &ec);
		if (s == NATS_OK)
			return si;
		nats_Sleep(200);
	}
	fprintf(stderr, "nats_tool: no info for stream %s: %s (%d)\n", stream,
			natsStatus_GetText(s), (int) ec);
	exit(1);
}

static int
cmd_create(const char *stream, char *subjects, int replicas, int window_s)
{
	jsStreamConfig cfg;
	const char *subj[16];
	int			n = 0;
	jsStreamInfo *si = NULL;
	jsErrCode	ec = 0;
	natsStatus	s = NATS_ERR;
	time_t		until = time(NULL) + 60;

	for (char *tok = strtok(subjects, ","); tok && n < 16; tok = strtok(NULL, ","))
		subj[n++] = tok;
	jsStreamConfig_Init(&cfg);
	cfg.Name = stream;
	cfg.Subjects = subj;
	cfg.SubjectsLen = n;
	cfg.Replicas = replicas;
	cfg.Storage = js_FileStorage;
	cfg.Duplicates = (int64_t) window_s * 1000000000LL;
	while (time(NULL) < until)
	{
		s = js_AddStream(&si, js, &cfg, api_options(), &ec);
		if (s == NATS_OK || ec == JSStreamNameExistErr)
			break;
		nats_Sleep(250);
	}
	if (s != NATS_OK && ec != JSStreamNameExistErr)
	{
		fprintf(stderr, "nats_tool: cannot create stream %s: %s (%d) %s\n", stream,
				natsStatus_GetText(s), (int) ec, nats_GetLastError(NULL));
		return 1;
	}
	jsStreamInfo_Destroy(si);
	return 0;
}

static int
cmd_count(const char *stream)
{
	jsStreamInfo *si = stream_info(stream);

	printf("%llu\n", (unsigned long long) si->State.Msgs);
	jsStreamInfo_Destroy(si);
	return 0;
}

/* The value of a header, or "-". */
static const char *
header(natsMsg *m, const char *name)
{
	const char *v = NULL;

	if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL)
		return "-";
	return v;
}

static int
cmd_dump(const char *stream)
{
	jsStreamInfo *si = stream_info(stream);
	uint64_t	first = si->State.FirstSeq;
	uint64_t	last = si->State.LastSeq;

	jsStreamInfo_Destroy(si);
	for (uint64_t seq = first; seq <= last && last > 0; seq++)
	{
		natsMsg    *m = NULL;
		jsErrCode	ec = 0;
		natsStatus	s = NATS_ERR;

		for (int tries = 0; tries < 100; tries++)
		{
			s = js_GetMsg(&m, js, stream, seq, api_options(), &ec);
			if (s == NATS_OK || ec == JSNoMessageFoundErr)
				break;
			nats_Sleep(100);
		}
		if (ec == JSNoMessageFoundErr)
			continue;
		if (s != NATS_OK)
		{
			fprintf(stderr, "nats_tool: cannot get message %llu: %s\n",
					(unsigned long long) seq, natsStatus_GetText(s));
			return 1;
		}
		printf("%llu %s %s %s %.6f %s %.*s\n", (unsigned long long) seq,
			   header(m, "Nats-Msg-Id"), header(m, "eo-key"), natsMsg_GetSubject(m),
			   natsMsg_GetTime(m) / 1e9, header(m, "eo-topic"),
			   natsMsg_GetDataLength(m), natsMsg_GetData(m));
		natsMsg_Destroy(m);
	}
	return 0;
}

static int
cmd_delete(const char *stream)
{
	jsErrCode	ec = 0;
	natsStatus	s = js_DeleteStream(js, stream, api_options(), &ec);

	return (s == NATS_OK || ec == JSStreamNotFoundErr) ? 0 : 1;
}

static int
cmd_pub(const char *subject, const char *id, const char *payload)
{
	natsMsg    *m = NULL;
	jsPubAck   *ack = NULL;
	jsErrCode	ec = 0;
	natsStatus	s = natsMsg_Create(&m, subject, NULL, payload, (int) strlen(payload));

	if (s == NATS_OK)
		s = natsMsgHeader_Set(m, "Nats-Msg-Id", id);
	if (s == NATS_OK)
		s = js_PublishMsg(&ack, js, m, NULL, &ec);
	if (s != NATS_OK)
	{
		fprintf(stderr, "nats_tool: cannot publish: %s (%d)\n", natsStatus_GetText(s), (int) ec);
		return 1;
	}
	printf("%llu%s\n", (unsigned long long) ack->Sequence, ack->Duplicate ? " duplicate" : "");
	jsPubAck_Destroy(ack);
	natsMsg_Destroy(m);
	return 0;
}

int
main(int argc, char **argv)
{
	int			rc = 2;

	if (argc < 4)
	{
		fprintf(stderr, "usage: nats_tool create|count|dump|delete|pub <servers> <stream or subject> ...\n");
		return 2;
	}
	connect_to(argv[2]);
	if (strcmp(argv[1], "create") == 0 && argc == 7)
		rc = cmd_create(argv[3], argv[4], atoi(argv[5]), atoi(argv[6]));
	else if (strcmp(argv[1], "count") == 0)
		rc = cmd_count(argv[3]);
	else if (strcmp(argv[1], "dump") == 0)
		rc = cmd_dump(argv[3]);
	else if (strcmp(argv[1], "delete") == 0)
		rc = cmd_delete(argv[3]);
	else if (strcmp(argv[1], "pub") == 0 && argc == 6)
		rc = cmd_pub(argv[3], argv[4], argv[5]);
	else
		fprintf(stderr, "nats_tool: unknown command or arguments\n");
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	nats_Close();
	return rc;
}
