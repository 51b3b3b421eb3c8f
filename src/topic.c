/*-------------------------------------------------------------------------
 *
 * topic.c
 *	  Subscription patterns: an exact topic ("orders.created"), or a prefix
 *	  followed by a single '*' at the end ("orders.*", "*").  The relay
 *	  routes with eo_topic_matches(); SQL (eo.route_unrouted, the relay's
 *	  quarantine) calls eo.topic_matches(), the same C code, so the two
 *	  cannot disagree.  eo.check_topic_pattern() says which patterns are
 *	  valid.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

#include "topic.h"

PG_FUNCTION_INFO_V1(eo_topic_matches_sql);

/*
 * eo_topic_pattern_is_prefix
 *		Whether a pattern ends in '*'; *len becomes the length to compare
 *		(without the '*').
 */
bool
eo_topic_pattern_is_prefix(const char *pattern, int *len)
{
	int			n = strlen(pattern);

	if (n > 0 && pattern[n - 1] == '*')
	{
		*len = n - 1;
		return true;
	}
	*len = n;
	return false;
}

/* Does a topic match a pattern (split by eo_topic_pattern_is_prefix)? */
bool
eo_topic_matches(const char *pattern, int pattern_len, bool is_prefix, const char *topic)
{
	if (is_prefix)
		return strncmp(topic, pattern, pattern_len) == 0;
	return strlen(topic) == (size_t) pattern_len &&
		memcmp(topic, pattern, pattern_len) == 0;
}

/*
 * eo.topic_matches(pattern text, topic text) RETURNS boolean
 *
 * Whether a subscription with this pattern receives messages of this
 * topic.  Strict and immutable.
 */
Datum
eo_topic_matches_sql(PG_FUNCTION_ARGS)
{
	char	   *pattern = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
	int			len;
	bool		prefix = eo_topic_pattern_is_prefix(pattern, &len);

	PG_RETURN_BOOL(eo_topic_matches(pattern, len, prefix, topic));
}
