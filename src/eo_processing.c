/*-------------------------------------------------------------------------
 *
 * eo_processing.c
 *	  Module entry point of eo_processing: the PG_MODULE_MAGIC block and
 *	  the definition of the extension's configuration variables (GUCs).
 *
 *	  The library works both when listed in shared_preload_libraries and
 *	  when loaded on first use by a backend that calls one of the SQL
 *	  functions; everything done here is safe in either case.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "utils/guc.h"

#include "eo_processing.h"

PG_MODULE_MAGIC;

/* How long eo.process() remembers a message when no "retain" is given. */
int			eo_dedup_retention_secs = 7 * 24 * 60 * 60;

void		_PG_init(void);

/*
 * A retention of zero would make every record expire at the moment it is
 * written, which silently turns deduplication off; -1 is the spelling of
 * "forever".
 */
static bool
check_dedup_retention(int *newval, void **extra, GucSource source)
{
	if (*newval == 0 || *newval < -1)
	{
		GUC_check_errdetail("eo.dedup_retention must be positive, or -1 to remember messages forever.");
		return false;
	}
	return true;
}

/*
 * Module load: define the GUCs and reserve the "eo." prefix so that a
 * misspelled setting is reported instead of silently ignored.
 */
void
_PG_init(void)
{
	DefineCustomIntVariable("eo.dedup_retention",
							"How long eo.process() remembers a processed message by default.",
							"Used when eo.process() is called without \"retain\". "
							"-1 remembers messages forever.",
							&eo_dedup_retention_secs,
							7 * 24 * 60 * 60,
							-1, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_S,
							check_dedup_retention, NULL, NULL);

	MarkGUCPrefixReserved("eo");
}
