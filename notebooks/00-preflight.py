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
# # 00 · Preflight: what is on the host before we change it
#
# The guide starts on a fresh OpenBSD box with sendmail running. Real hosts are rarely that
# clean, so before any step of the guide (G1 onwards) this stage looks, and changes nothing:
# which system it is, which mail server answers today, whether Postfix is already there and
# configured by hand, what already listens on the mail ports, and whether the basics hold
# (disk, clock, the names and the test user the later stages rely on).
#
# Run it on its own at any time: it only reads.

# %% tags=["parameters"]
target = {}
platform = {}
postfix = {}
dovecot = {}
mode = "batch"
run_dir = ""
dry_run = False

# %% [markdown]
# The parameters are checked first, all of them, before any connection: a bad value stops
# here naming the field. Then the stage opens its audit record and connects, checking the
# host's key against the known_hosts file.

# %%
from runbook.run.stage import begin, end, validate
from runbook.services import preflight

params = validate(target=target, platform=platform, postfix=postfix, dovecot=dovecot)
stage = await begin("00-preflight", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## Which system is this?
#
# The guide is written for OpenBSD 5.0; the runbook also knows today's OpenBSD and Debian.
# Anything else stops here, before a single change.

# %%
preflight.show_platform(stage)

# %% [markdown]
# ## One look at everything
#
# A single read-only command gathers every fact below, so the stage costs one round trip.

# %%
facts = await preflight.survey(stage)

# %% [markdown]
# ## The mail system today
#
# Which program `/usr/sbin/sendmail` really runs (the guide's `mailer.conf` on OpenBSD, a
# symlink on Debian), which mail servers are running, and — if Postfix is already
# installed — the settings someone set by hand that the runbook will leave alone.

# %%
preflight.show_mail_system(stage, facts)

# %% [markdown]
# ## Who listens on the mail ports
#
# SMTP (25), IMAP (143) and IMAPS (993). Only sockets owned by this host's own processes
# count: on a shared network namespace (the lab) other hosts' sockets are not ours.

# %%
preflight.show_listeners(stage, facts)

# %% [markdown]
# ## Disk and clock
#
# The queue and the mailboxes live in `/var`; a wrong clock makes logs and mail dates lie.

# %%
preflight.check_resources(stage, facts)

# %% [markdown]
# ## Names and the test recipient
#
# `myhostname` should resolve on the host itself, and the user who receives the test
# message in the validation stage (the guide's G17–G19) must have an account.

# %%
preflight.check_names(stage, facts)

# %%
end(stage)
