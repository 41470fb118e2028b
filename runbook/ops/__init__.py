"""Facts and operations, the pyinfra split.

`facts`: a command plus a pure parser of its output, read in shared round trips.
`operations`: the `@operation` decorator, `Plan` / `Run` / `Write` / `Outcome`, and applying a
plan (dry run, approval, backups, restore on failure). `edits`: the pure text transforms of
the files the runbook edits. Imports the foundation and `runbook.remote`.
"""
