"""Running the stages: `stage` (what every notebook's first and last cells do), `manifest`
(the stage notebooks and the default run), `runner` (`runbook run`: papermill over the
stages in one kernel, into a run folder), `engine` (the papermill engine that shares that
kernel), `plan` (`runbook plan`: the notebooks' cells against an imagined fresh host).
"""
