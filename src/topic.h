/*-------------------------------------------------------------------------
 *
 * topic.h
 *	  Matching topics against subscription patterns (topic.c): the one
 *	  matcher of the relay (C) and of the SQL functions (eo.topic_matches).
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_TOPIC_H
#define EO_TOPIC_H

#include "postgres.h"

extern bool eo_topic_matches(const char *pattern, int pattern_len, bool is_prefix,
							 const char *topic);
extern bool eo_topic_pattern_is_prefix(const char *pattern, int *len);

#endif							/* EO_TOPIC_H */
