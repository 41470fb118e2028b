"""What the fleet's fork server loads once (job.py), so that each host's process, forked from
it, starts with it in memory, shared page by page: the host's code and the runner with its
caches built (`runner.preload`), and a kernel's modules, from which the host forks its
kernel (run/seed.py). Without it each host would spend about 1.5 s of CPU on the same
imports, more than its own work on a re-run.
"""

from runbook.fleet import child  # noqa: F401  (the host's process runs child.serve)
from runbook.run import runner, seed  # importing seed loads what a kernel needs

runner.preload()
seed.enable()
