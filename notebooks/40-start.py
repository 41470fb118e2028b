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
# # 40 · Check, then start (guide steps G13–G16)
#
# The guide stops sendmail, runs `postfix check`, reviews `postconf -n` and starts Postfix.
# This stage does the same but **checks before it stops anything**: the old server keeps
# running until Postfix's configuration has passed both checks, so a broken configuration
# never leaves the host without a mail server. If a check fails, every file this run
# edited is put back from the backups on the host and the stage stops.
#
# When Postfix already runs, it is reloaded only if its configuration changed since it last
# read it; otherwise nothing happens.

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
stage = await begin("40-start", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## G14 · `postfix check`: no complaints
#
# Postfix checks its own files: ownership, permissions, missing directories. Any complaint
# stops the stage (and undoes this run's edits). Its warnings go through syslog and reach a
# terminal only: **on OpenBSD** the lines the check adds to `/var/log/maillog` are shown,
# **on Debian** it runs with a terminal (`script`).

# %%
await pf.check_postfix(stage)

# %% [markdown]
# ## G15 · `postconf -n`: every setting as intended
#
# The settings Postfix will actually use, compared with the parameters. A mistyped
# parameter name in main.cf shows up here as an "unused parameter" warning and fails too.
# Settings the runbook does not manage are listed as they were found.

# %%
await pf.review_settings(stage)

# %% [markdown]
# ## G13 · The previous mail server is stopped
#
# Only now, with a configuration that passed both checks (the guide stops sendmail first).
# **On OpenBSD 5.0** sendmail is stopped through its pid file `/var/run/sendmail.pid`, as
# the guide does, but with TERM rather than KILL, and waited for. **On OpenBSD 7.x**
# `rcctl stop smtpd`. **On Debian** the previous MTA's systemd service is stopped. A host
# without another mail server has nothing to stop. If Postfix then fails to take over, the
# old server is started again.

# %%
await pf.stop_previous_mta(stage)

# %% [markdown]
# ## G16 · Postfix starts
#
# Started if it is not running, reloaded if its configuration changed since it last read
# it, left alone otherwise. **On OpenBSD 5.0** through the package's `/etc/rc.d/postfix`
# (the guide's second way), **on 7.x** `rcctl start postfix`, **on Debian** systemctl.

# %%
await pf.start_postfix(stage)

# %% [markdown]
# ## Evidence: the master process runs and listens where it should
#
# Port 25 must be open on exactly the addresses `inet_interfaces` names, owned by
# Postfix's master process (sockets of other processes, or of other lab hosts sharing
# this network, do not count).

# %%
await pf.verify_listening(stage)

# %%
end(stage)
