/*-------------------------------------------------------------------------
 *
 * relay_config.c
 *	  The relay's copy of eo.destination and eo.subscription: parsed
 *	  destinations and routes, kept between batches and reloaded when they
 *	  change.
 *
 *	  A statement trigger on the two tables (eo.config_changed()) bumps the
 *	  slot's config_generation twice: before the changing transaction
 *	  commits and again once its commit is visible.  The relay asks for the
 *	  configuration after the snapshot of its claim query was taken, and a
 *	  reload reads with a newer snapshot, so any change its claim could see
 *	  is in the configuration it routes with, and a reload that came too
 *	  early is followed by another.  eo.relay_run() has no slot: it reloads
 *	  every time.
 *
 *	  Memory: everything lives in config_cxt, reset at each reload; the
 *	  lists returned are valid until the next reload.  Reads run through
 *	  SPI in the caller's transaction (SPI connected).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "port/atomics.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "relay_config.h"
#include "sink.h"
#include "topic.h"

static MemoryContext config_cxt = NULL;
static RelaySlot *config_slot = NULL;	/* NULL: reload every time */
static RelayConfig config;
static bool config_loaded = false;
static uint32 config_seen = 0;

static SPIPlanPtr plan_dests = NULL;
static SPIPlanPtr plan_routes = NULL;

/*
 * eo_relay_config_init
 *		Set up the cache for a relay worker (its slot carries the
 *		generation counter) or, with slot NULL, for eo.relay_run().
 */
void
eo_relay_config_init(RelaySlot *slot)
{
	if (config_cxt == NULL)
		config_cxt = AllocSetContextCreate(TopMemoryContext,
										   "eo_processing relay configuration",
										   ALLOCSET_SMALL_SIZES);
	config_slot = slot;
}

/*
 * load_destinations
 *		Every destination with its parsed configuration (a List of
 *		DestinationConfig allocated in config_cxt).  (SPI calls leave the
 *		SPI procedure context current, hence the explicit context.)
 */
static List *
load_destinations(void)
{
	List	   *dests = NIL;
	MemoryContext spicxt;

	eo_relay_prepare(&plan_dests,
					 "SELECT id, name, kind, options, enabled FROM eo.destination ORDER BY id",
					 0, NULL);
	/* not read-only: a fresh snapshot, newer than the claim's */
	if (SPI_execute_plan(plan_dests, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read destinations");

	spicxt = MemoryContextSwitchTo(config_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		DestinationConfig *dest = palloc0(sizeof(DestinationConfig));
		bool		isnull;

		eo_parse_destination(TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull)),
							 DatumGetJsonbP(SPI_getbinval(tup, desc, 4, &isnull)),
							 dest);
		dest->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		dest->name = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		dest->enabled = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		dest->options = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 4, &isnull));
		dests = lappend(dests, dest);
	}
	MemoryContextSwitchTo(spicxt);
	return dests;
}

/* The destination with this id in a list of destinations, or NULL. */
DestinationConfig *
eo_relay_find_destination(List *dests, int32 id)
{
	ListCell   *lc;

	foreach(lc, dests)
	{
		if (((DestinationConfig *) lfirst(lc))->id == id)
			return lfirst(lc);
	}
	return NULL;
}

/*
 * load_routes
 *		Every subscription, pointing at its destination in "dests".
 *		Returns a List of RelayRoute allocated in config_cxt.
 */
static List *
load_routes(List *dests)
{
	List	   *routes = NIL;
	MemoryContext spicxt;

	eo_relay_prepare(&plan_routes,
					 "SELECT topic, destination_id FROM eo.subscription ORDER BY destination_id, topic",
					 0, NULL);
	if (SPI_execute_plan(plan_routes, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eo_processing relay: could not read subscriptions");

	spicxt = MemoryContextSwitchTo(config_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		RelayRoute *r = palloc0(sizeof(RelayRoute));
		bool		isnull;

		r->dest = eo_relay_find_destination(dests,
											DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull)));
		if (r->dest == NULL)
			continue;			/* cannot happen: foreign key */
		r->pattern = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		r->is_prefix = eo_topic_pattern_is_prefix(r->pattern, &r->pattern_len);
		routes = lappend(routes, r);
	}
	MemoryContextSwitchTo(spicxt);
	return routes;
}

/* The slot's configuration generation (0 without a slot). */
static uint32
current_generation(void)
{
	pg_memory_barrier();
	return config_slot != NULL ? config_slot->config_generation : 0;
}

/*
 * eo_relay_config
 *		The destinations and subscriptions, reloaded unless the cached ones
 *		are current.  Call inside a transaction, SPI connected, after the
 *		step's claim query has run.
 */
const RelayConfig *
eo_relay_config(void)
{
	uint32		generation = current_generation();
	ListCell   *lc;

	if (config_loaded && config_slot != NULL && config_seen == generation)
		return &config;
	config_loaded = false;
	MemoryContextReset(config_cxt);
	memset(&config, 0, sizeof(config));
	config.dests = load_destinations();
	config.routes = load_routes(config.dests);
	foreach(lc, config.dests)
	{
		if (eo_sink_is_async(((DestinationConfig *) lfirst(lc))->sink))
			config.has_async = true;
	}
	config_seen = generation;
	config_loaded = true;
	return &config;
}

/* The destinations, for the HTTP dispatcher (as eo_relay_config()). */
List *
eo_relay_current_destinations(void)
{
	return eo_relay_config()->dests;
}

/*
 * eo_relay_config_may_have_async
 *		Could there be destinations of an asynchronous sink?  True unless a
 *		current configuration says there are none; no transaction needed.
 */
bool
eo_relay_config_may_have_async(void)
{
	return !config_loaded || config.has_async || config_seen != current_generation();
}

/* Forget the plans and the cached configuration (after an error). */
void
eo_relay_config_forget(void)
{
	SPIPlanPtr *plans[] = {&plan_dests, &plan_routes};

	eo_relay_free_plans(plans, lengthof(plans));
	config_loaded = false;
}
