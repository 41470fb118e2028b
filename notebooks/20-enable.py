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
# # 20 · Postfix becomes the system's mailer (guide steps G3–G8)
#
# After installing, the guide follows the notes the package printed: make Postfix the
# program behind `sendmail`, keep the old mail server from starting at boot, give the
# system logger a socket inside Postfix's chroot, start Postfix at boot, park the old
# server's queue runner in root's crontab, and have the logger pick up its new socket.
#
# Nothing here starts Postfix or stops the old server yet: that waits until the
# configuration has been written and checked (stage 40).

# %% tags=["parameters"]
target = {}
platform = {}
postfix = {}
dovecot = {}
mode = "batch"
run_dir = ""
dry_run = False

# %%
from runbook import postfix as pf
from runbook.stage import begin, end, validate

params = validate(target=target, platform=platform, postfix=postfix, dovecot=dovecot)
stage = await begin("20-enable", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## G3 · Postfix answers to `sendmail`
#
# Every program that sends mail on a Unix host calls `/usr/sbin/sendmail`. The guide runs
# `postfix-enable`, which swaps OpenBSD's `/etc/mailer.conf` and keeps the old one.
# **On Debian** there is no mailer.conf: the postfix package itself installs
# `/usr/sbin/sendmail`, and this step checks that it did.

# %%
await pf.ensure_system_mailer(stage)

# %% [markdown]
# ## G4 · The previous mail server does not start at boot
#
# The guide sets `sendmail_flags=NO` in `/etc/rc.conf.local`. **On Debian** the mail server
# Postfix replaces (usually exim4) is a systemd service, disabled here if it is still
# enabled; a host that never had one has nothing to disable.

# %%
await pf.ensure_previous_mta_off_at_boot(stage)

# %% [markdown]
# ## G5 · A log socket inside Postfix's chroot
#
# Postfix's network-facing services run chrooted in its queue directory, where the
# system's `/dev/log` cannot be seen; without a socket of their own there, their log
# lines are lost. The guide adds `-a /var/spool/postfix/dev/log` to syslogd's flags.
# **On Debian** rsyslog gets the same socket from `/etc/rsyslog.d/postfix.conf`.

# %%
await pf.ensure_chroot_log_socket(stage)

# %% [markdown]
# ## G6 · Postfix starts at boot
#
# The guide adds postfix to `pkg_scripts`. **On Debian** the postfix service is enabled in
# systemd. A reboot of the host is what proves it.

# %%
await pf.ensure_postfix_at_boot(stage)

# %% [markdown]
# ## G7 · The old server's queue runner, commented out
#
# The guide comments out (rather than deletes) sendmail's periodic queue run in root's
# crontab, so going back to sendmail stays a one-character edit. Any such line of the
# previous mail server is treated the same way; Debian's mail servers usually keep none.

# %%
await pf.ensure_queue_runner_commented(stage)

# %% [markdown]
# ## G8 · The system logger re-reads its configuration
#
# A new socket only exists once the logger has re-read its configuration (the guide sends
# syslogd a HUP). Done only when the socket is missing or the logger is not running.

# %%
await pf.ensure_syslog_reloaded(stage)

# %%
end(stage)
