# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # mail-runbook: start here
#
# mail-runbook sets up a Postfix mail server over SSH the way the guide *Serving Mail with
# Postfix* does it, one notebook per stage of the guide (`00-preflight`, …). Each stage
# reads the host first, shows what it would change, changes only what differs, and records
# every command in the run's `audit.jsonl`. The notebooks you run here are copies in a
# session folder under `runs/`: once run, they are the record of what was done.
#
# Everything a run needs is one **params file** in `params/`. Fill in the form below (or
# load an existing file and change it), check it with **Validate**, and **Save** it under
# a name of your own. Each field says what it is for; an error appears next to the field.

# %%
from runbook.interactive import form as params_form
from runbook.interactive import session

form = params_form.show()

# %% [markdown]
# ## Running the stages
#
# **Interactively, here:** the button below makes a new session folder whose stage
# notebooks are prepared for the file you saved (or start JupyterLab with
# `make lab PARAMS=params/<name>.yaml`). Open a stage notebook there and run it cell by
# cell: before any step changes the host it shows the commands and file diffs and waits for
# your **Approve** or **Skip**. A skipped change is recorded as skipped.
#
# **Headless:** `runbook run params/<name>.yaml` runs every stage in order in batch mode
# (nobody is asked anything) into `runs/<UTC timestamp>-<host>/`; `runbook validate` checks
# a file without connecting, `runbook audit verify runs/<run>` checks a record.

# %%
session.offer(form)
