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

#include "utils/jsonb.h"

typedef enum DestinationKind
{
	DEST_NOTIFY
} DestinationKind;

typedef struct DestinationConfig
{
	int32		id;
	char	   *name;
	DestinationKind kind;
	bool		enabled;
	char	   *channel;		/* notify: NULL means "the message's topic" */
	int			max_attempts;
	int			ndelays;
	int64	   *delays_us;		/* retry schedule; the last one repeats */
} DestinationConfig;

extern void eo_parse_destination(const char *kind, Jsonb *options,
								 DestinationConfig *cfg);
extern int64 eo_retry_delay_us(const DestinationConfig *cfg, int attempts);

#endif							/* EO_DESTINATION_H */
