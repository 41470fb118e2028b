"""Fleets: the runbook on every host of an inventory at once, here or on a Dask cluster.

`controller` is `runbook run INVENTORY` (batches, forks, limits, Ctrl-C, fleet.json);
`gates` when a host may start its next stage; `child` one host's run in a process of its
own; `job` drives that process; `board` the live lines and the summary; `record`
fleet.json; `cluster` the Dask backend.
"""
