/*-------------------------------------------------------------------------
 *
 * keyed_table.h
 *	  Row-level access to the extension's own tables, each of which has one
 *	  unique key: insert-if-absent with the semantics of INSERT ... ON
 *	  CONFLICT, lock, update and delete, without going through SPI.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EO_KEYED_TABLE_H
#define EO_KEYED_TABLE_H

#include "postgres.h"

#include "access/tableam.h"
#include "executor/executor.h"
#include "nodes/lockoptions.h"
#include "utils/rel.h"

/*
 * An open table of the "eo" schema with what is needed to modify it.
 *
 * Everything hangs off estate->es_query_cxt; kt_close() frees it all.
 * newslot holds the row the caller wants to write (its key columns are the
 * key looked up); oldslot receives the existing row found by
 * kt_find_existing() or locked by kt_lock().
 */
typedef struct KeyedTable
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *newslot;
	TupleTableSlot *oldslot;
	MemoryContext callercxt;	/* context current at kt_open() */
	int			ncolumns;		/* columns the table has (see "added") */
} KeyedTable;

#define kt_has_column(kt, index) ((index) < (kt)->ncolumns)

/*
 * Expected layout of a table, checked at every open.  Trailing columns
 * marked "added" appeared in a later version of the SQL objects: the table
 * may lack them (until ALTER EXTENSION ... UPDATE), and callers check
 * kt_has_column() before touching them.
 */
typedef struct KeyedTableColumn
{
	const char *name;
	Oid			type;
	bool		added;
} KeyedTableColumn;

extern KeyedTable *kt_open(const char *relname,
						   const KeyedTableColumn *columns, int ncolumns,
						   const char *writer);
extern void kt_close(KeyedTable *kt);
extern void kt_clear_newslot(KeyedTable *kt);
extern bool kt_find_existing(KeyedTable *kt, ItemPointer tid);
extern bool kt_find_latest(KeyedTable *kt, ItemPointer tid, bool *visible);
extern bool kt_find_latest_untracked(KeyedTable *kt, ItemPointer tid);
extern void kt_report_invisible(KeyedTable *kt) pg_attribute_noreturn();
extern void kt_report_concurrent_change(TM_Result result) pg_attribute_noreturn();
extern bool kt_fetch_visible(KeyedTable *kt);
extern bool kt_insert_new(KeyedTable *kt);
extern void kt_insert_plain(KeyedTable *kt);
extern bool kt_lock(KeyedTable *kt, ItemPointer tid, LockTupleMode mode);
extern bool kt_lock_latest(KeyedTable *kt, ItemPointer tid,
						   LockTupleMode mode);
extern void kt_update(KeyedTable *kt);
extern void kt_delete(KeyedTable *kt);

#endif							/* EO_KEYED_TABLE_H */
