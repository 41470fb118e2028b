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
# # 90 · Troubleshooting (guide step G24)
#
# Not part of a normal run: the places an operator looks when mail does not flow, each
# read without changing anything. Run it alone (`runbook run PARAMS --stage 90-troubleshoot`)
# or open it in JupyterLab and run the cells you need.

# %% tags=["parameters"]
target = {}
platform = {}
postfix = {}
dovecot = {}
mode = "batch"
run_dir = ""
dry_run = False

# %%
from runbook.run.stage import begin, end, validate
from runbook.services import postfix as pf

params = validate(target=target, platform=platform, postfix=postfix, dovecot=dovecot)
stage = await begin("90-troubleshoot", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## The settings Postfix reads
#
# `postconf -n`: every setting that differs from Postfix's defaults. A typo in a name
# shows up as an "unused parameter" warning.

# %%
await pf.show_settings(stage)

# %% [markdown]
# ## `postfix check`
#
# Ownership and permission problems Postfix can see in its own files.

# %%
await pf.show_check(stage)

# %% [markdown]
# ## The queue
#
# Messages waiting for delivery, with the reason each is waiting. An empty queue says
# mail is either delivered or never arrived.

# %%
await pf.show_queue(stage)

# %% [markdown]
# ## The end of the mail log
#
# Each message's trail (client, from, to, relay, status) and Postfix's warnings and
# fatal errors (`/var/log/maillog` on OpenBSD, `/var/log/mail.log` on Debian).

# %%
await pf.show_mail_log(stage)

# %% [markdown]
# ## DNS as Postfix sees it
#
# The chrooted services resolve names with the copy of `resolv.conf` in Postfix's queue
# directory, not `/etc/resolv.conf`: the two are compared, and the server's own name is
# looked up. Wrong DNS here is the usual reason for a slow Postfix.

# %%
await pf.show_dns(stage)

# %% [markdown]
# ## Who listens on the mail ports
#
# Ports 25, 465, 587, 143 and 993 with the process owning each socket (`fstat` on
# OpenBSD, `ss` on Debian).

# %%
await pf.show_listeners(stage)

# %%
end(stage)
