/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  The one place where eo_processing adapts to differences between
 *	  PostgreSQL major versions.  Every other file calls the EO_* names
 *	  below and stays free of PG_VERSION_NUM tests.
 *
 *	  Supported: PostgreSQL 15.  The 16/17 branches record the known API
 *	  changes so that porting is a small, reviewable step.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_COMPAT_H
#define EO_COMPAT_H

#include "postgres.h"

#include "access/tableam.h"
#include "executor/executor.h"

#if PG_VERSION_NUM < 150000
#error "eo_processing requires PostgreSQL 15 or later"
#endif

/*
 * ExecInsertIndexTuples() gained an "onlySummarizing" argument in 16, and
 * simple_table_tuple_update() reports which indexes need new entries as a
 * TU_UpdateIndexes value instead of a bool.
 */
#if PG_VERSION_NUM >= 160000
#define EO_ExecInsertIndexTuples(rri, slot, estate, update, noDupErr, specConflict, arbiters) \
	ExecInsertIndexTuples((rri), (slot), (estate), (update), (noDupErr), \
						  (specConflict), (arbiters), false)

static inline bool
EO_simple_table_tuple_update(Relation rel, ItemPointer otid,
							 TupleTableSlot *slot, Snapshot snapshot)
{
	TU_UpdateIndexes update_indexes;

	simple_table_tuple_update(rel, otid, slot, snapshot, &update_indexes);
	return update_indexes != TU_None;
}
#else
#define EO_ExecInsertIndexTuples(rri, slot, estate, update, noDupErr, specConflict, arbiters) \
	ExecInsertIndexTuples((rri), (slot), (estate), (update), (noDupErr), \
						  (specConflict), (arbiters))

static inline bool
EO_simple_table_tuple_update(Relation rel, ItemPointer otid,
							 TupleTableSlot *slot, Snapshot snapshot)
{
	bool		update_indexes;

	simple_table_tuple_update(rel, otid, slot, snapshot, &update_indexes);
	return update_indexes;
}
#endif

/*
 * Since 16, permission information lives in RTEPermissionInfo nodes passed
 * to ExecInitRangeTable() beside the range table.  We check no permissions
 * through the executor, so none are passed.
 */
#if PG_VERSION_NUM >= 160000
#define EO_ExecInitRangeTable(estate, rtable) \
	ExecInitRangeTable((estate), (rtable), NIL)
#else
#define EO_ExecInitRangeTable(estate, rtable) \
	ExecInitRangeTable((estate), (rtable))
#endif

#endif							/* EO_COMPAT_H */
