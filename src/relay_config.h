/*-------------------------------------------------------------------------
 *
 * relay_config.h
 *	  The relay's copy of the destinations and subscriptions (relay_config.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_RELAY_CONFIG_H
#define EO_RELAY_CONFIG_H

#include "postgres.h"

#include "nodes/pg_list.h"

#include "destination.h"
#include "relay.h"

/* A routing target: a subscription pattern and its destination. */
typedef struct RelayRoute
{
	char	   *pattern;		/* topic, or prefix when is_prefix */
	int			pattern_len;
	bool		is_prefix;
	DestinationConfig *dest;
} RelayRoute;

/* Destinations and subscriptions, as of the last (re)load. */
typedef struct RelayConfig
{
	List	   *dests;			/* of DestinationConfig, in id order */
	List	   *routes;			/* of RelayRoute */
	bool		has_async;		/* some destination has an asynchronous sink */
} RelayConfig;

extern void eo_relay_config_init(RelaySlot *slot);
extern const RelayConfig *eo_relay_config(void);
extern List *eo_relay_current_destinations(void);
extern bool eo_relay_config_may_have_async(void);
extern void eo_relay_config_forget(void);
extern DestinationConfig *eo_relay_find_destination(List *dests, int32 id);

#endif							/* EO_RELAY_CONFIG_H */
