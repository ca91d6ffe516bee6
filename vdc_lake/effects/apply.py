"""The apply engine: the only code in vdc-lake that changes, moves or deletes image files.

Protocol for each planned operation (rows of a decision view):

1. plan: every operation is written to `journal` as `planned` (with the expected checksum, the
   backup path and what the file was: `params.file` holds its mode, owner, group, times, symlink
   target and hard-link siblings) in one transaction before any file is touched;
2. check: the image's root must be one a scan run was given (else the operation is journaled
   `refused`), the paths must lie in it (resolved, symlinks included) and the backup path in the
   backup folder; the current bytes must be the planned ones, and before a delete the reason is
   checked again (a decode failure is decoded again; a file that cannot be read is never
   deleted; a duplicate is never its keeper's own file);
3. backup: copy to BACKUP_DIR/run-N/<root>/<rel_path> through a temp file, fsync, rename,
   then re-read and verify the checksum (a symlink is backed up as the link itself);
4. act: write the result to a temp file in the same directory, check that it decodes, and
   `os.replace` it over the original (atomic on POSIX), or unlink for delete; a recompress's new
   name (NAME.webp) is one no file, no other output of the plan and no catalogued image has, and
   is taken with a hard link that never replaces a file; a rewritten file gets the original's
   mode, owner, group and times back (temp files are private until then). A failed operation
   leaves the tree as it was (a recompress whose original cannot be removed removes its output);
5. journal `done` and the catalog row (version bump, new facts) are committed in batches.

The filesystem plus the plan is enough to tell where a killed run stopped: an operation is
done when its backup verifies and the source no longer has the planned checksum (or is gone).
So a crash at any moment leaves each file untouched or done with a verified backup, and
re-running `apply` finishes the interrupted operations first.

`restore` puts back what was there (bytes, symlink with its own times, hard link, mode, owner,
times) and makes the image's earlier version current again, with every row derived from it. It
refuses backups outside the backup folder and paths outside the scanned root, and leaves alone a
file the user changed after apply unless forced (then the user's version is kept next to the
backup as `NAME.vdc-user-STAMP`). A failed operation changed nothing, so there is nothing of it to
undo; an interrupted recompress's output is removed only when it holds exactly what the operation
writes (a file the user put under that name is theirs). A restore is a `restore` run; it journals
its work in batches, flushed before an image or path already in the batch is touched again, so a
killed restore is finished by the next one: what it put back holds the planned-on bytes, which the
next restore records as original (never as the user's change).

Temp files of a killed run are removed by the next one (leftovers.py) only for operations that
pass the operation's own confinement checks (root recorded by a scan, paths inside it, the backup
exactly where apply puts it inside the run's accepted backup folder).

The engine lives in one module per idea; this module is its public face (the CLI imports from it):

- plan.py: decision rows -> Plan -> journal rows (file metadata, backup and output paths);
- confinement.py: the backup folder's checks, each operation's paths (confinement_error);
- backups.py: what a file was (metadata, hard links) and its verified backup copy;
- operation.py: one operation as a worker carries it out (execute_op);
- engine.py: apply_plan and resume_unfinished: run the operations, commit in batches;
- restore.py, restore_journal.py: restore and its batched journal.
"""

from vdc_lake.effects.backups import file_metadata, make_backup
from vdc_lake.effects.confinement import check_backup_dir, check_backup_folder
from vdc_lake.effects.engine import ApplySummary, apply_plan, resume_unfinished, unfinished_count
from vdc_lake.effects.operation import execute_op
from vdc_lake.effects.plan import Plan, make_plan
from vdc_lake.effects.restore import RestoreSummary, restore

__all__ = ["ApplySummary", "Plan", "RestoreSummary", "apply_plan", "check_backup_dir", "check_backup_folder",
           "execute_op", "file_metadata", "make_backup", "make_plan", "restore", "resume_unfinished",
           "unfinished_count"]
