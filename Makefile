# Makefile for eo_processing (PGXS)
#
#   make                      build
#   make install              install into the PostgreSQL found by pg_config (root)
#   make installcheck         run every test suite against temporary clusters
#                             (must run as an unprivileged user: see scripts/test)
#
# Extra compiler flags can be passed without editing this file, e.g.
#   make EO_CFLAGS=-Werror

EXTENSION  = eo_processing
MODULE_big = eo_processing
OBJS = \
	src/eo_processing.o \
	src/arguments.o \
	src/keyed_table.o \
	src/inbox.o \
	src/producer_seq.o \
	src/outbox.o \
	src/outbox_vacuum.o \
	src/log_write.o \
	src/envelope.o \
	src/topic.o \
	src/destination.o \
	src/sink_registry.o \
	src/sink_notify.o \
	src/sink_http.o \
	src/sink_queue.o \
	src/queue_scan.o \
	src/sink_async.o \
	src/http_options.o \
	src/http_address.o \
	src/http_request.o \
	src/http_response.o \
	src/http_wire.o \
	src/sink_nats.o \
	src/nats_options.o \
	src/sink_kafka.o \
	src/kafka_options.o \
	src/kafka_position.o \
	src/kafka_txn.o \
	src/relay_shmem.o \
	src/relay_spi.o \
	src/relay_config.o \
	src/message_log.o \
	src/delivery.o \
	src/relay_dispatch.o \
	src/relay_launcher.o \
	src/relay_worker.o \
	src/database_guard.o

# The schema lives in src/schema/: eo_processing.sql is the whole current
# schema, installed as eo_processing--<default_version>.sql (built at the
# top level, never kept in git); eo_processing--*.sql there are the install
# script of the oldest version and the upgrade scripts, as shipped.  A new
# version adds its upgrade script there and edits eo_processing.sql and
# default_version in eo_processing.control.
EXTVERSION := $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" $(EXTENSION).control)
DATA = $(wildcard src/schema/$(EXTENSION)--*.sql)
DATA_built = $(EXTENSION)--$(EXTVERSION).sql
ifeq (,$(EXTVERSION))
$(error no default_version found in $(EXTENSION).control)
endif
ifneq (,$(filter src/schema/$(DATA_built),$(DATA)))
$(error src/schema/$(DATA_built) would be installed over the script built from src/schema/$(EXTENSION).sql: the current version has no script of its own in src/schema/)
endif
PGFILEDESC = "eo_processing - exactly-once processing for PostgreSQL"

PG_CPPFLAGS = -I$(srcdir)/src
# The HTTP sink uses libcurl (Debian: libcurl4-openssl-dev), the NATS sink
# libnats (Debian: libnats-dev), the Kafka sink librdkafka (Debian:
# librdkafka-dev).
SHLIB_LINK = -lcurl -lnats -lrdkafka
# -Wextra, minus the two warnings PostgreSQL's own headers trip over.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
	-Wno-sign-compare $(EO_CFLAGS)

# pg_regress: sql/ and expected/ at the top level.
REGRESS = inbox process_seq bad_input privileges objects outbox outbox_errors \
	destinations grants http_options nats_options kafka_options http_address_guard keys reconcile \
	hostile_input log_rotation queue upgrade
REGRESS_OPTS = --temp-instance=tmp_check_regress \
	--temp-config=$(srcdir)/test/test.conf

# Isolation specs: test/isolation/{specs,expected}.
ISOLATION = inbox_concurrent inbox_snapshots inbox_savepoints \
	inbox_prepared process_seq_races outbox_keys relay_claims \
	keys_race log_rotation queue_leases queue_floor queue_redrive_order
ISOLATION_OPTS = --inputdir=$(srcdir)/test/isolation \
	--outputdir=output_iso \
	--temp-instance=tmp_check_iso \
	--temp-config=$(srcdir)/test/test.conf

# TAP: test/t/*.pl with helpers in test/perl.
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# Also install scripts built for an earlier default_version.
EXTRA_CLEAN = tmp_check_regress tmp_check_iso output_iso \
	$(wildcard $(EXTENSION)--*.sql)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Makefile.global resets PROVE_FLAGS, so it is set after the include.
PROVE_FLAGS += -I test/perl

# PGXS tracks no header dependencies unless PostgreSQL was configured with
# --enable-depend; rebuild everything when a header of ours changes (a stale
# object with an old struct layout would share memory wrongly).
$(OBJS): $(wildcard $(srcdir)/src/*.h)

# The install script of the current version is the readable schema file.
$(DATA_built): src/schema/$(EXTENSION).sql $(EXTENSION).control
	cp $< $@
