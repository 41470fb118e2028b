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
from runbook.run.stage import begin, end, validate
from runbook.services import postfix as pf

params = validate(target=target, platform=platform, postfix=postfix, dovecot=dovecot)
stage = await begin("20-enable", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## G3 · Postfix answers to `sendmail`
#
# Every program that sends mail on a Unix host calls `/usr/sbin/sendmail`. **On OpenBSD**
# (both eras) this is the guide's `postfix-enable`: it moves `/etc/mailer.conf` aside as
# `/etc/mailer.conf.pre-postfix` and puts Postfix's in its place. It exits 0 even when it
# enabled nothing, so the step then checks that mailer.conf runs Postfix's sendmail; a
# second run finds it so and does nothing. **On Debian** there is no mailer.conf: the
# postfix package itself installs `/usr/sbin/sendmail`, and this step checks that it did.

# %%
await pf.ensure_system_mailer(stage)

# %% [markdown]
# ## G4 · The previous mail server does not start at boot
#
# **On OpenBSD 5.0** the guide's `sendmail_flags=NO` in `/etc/rc.conf.local` (written
# once: a second run finds it). **On OpenBSD 7.x** the MTA to replace is smtpd (the default
# since 5.6) and `rcctl disable smtpd` writes `smtpd_flags=NO`; rcctl rewrites the whole
# file (sorted), so a copy of it is kept first for going back byte for byte. **On Debian**
# the mail server Postfix replaces (usually exim4) is a systemd service, disabled here if
# it is still enabled; a host that never had one has nothing to disable.

# %%
await pf.ensure_previous_mta_off_at_boot(stage)

# %% [markdown]
# ## G5 · A log socket inside Postfix's chroot
#
# Postfix's network-facing services run chrooted in its queue directory, where the
# system's `/dev/log` cannot be seen; without a socket of their own there, their log
# lines are lost. **On OpenBSD 5.0** the guide adds `-a /var/spool/postfix/dev/log` to
# `syslogd_flags` in `/etc/rc.conf.local`, added to whatever flags are already there.
# **On OpenBSD 7.x** this step is not needed, and skipped: since 5.6 syslog(3) sends
# through the sendsyslog(2) system call, which needs no socket, so chrooted programs log
# without `/dev/log` (the package's postfix-enable still mentions the flag; it is left out
# on purpose). **On Debian** rsyslog gets the socket from `/etc/rsyslog.d/postfix.conf`.

# %%
await pf.ensure_chroot_log_socket(stage)

# %% [markdown]
# ## G6 · Postfix starts at boot
#
# **On OpenBSD 5.0** the guide adds postfix to `pkg_scripts` in `/etc/rc.conf.local`
# (merged with the scripts already listed, never replacing them). **On OpenBSD 7.x**
# `rcctl enable postfix` does the same. **On Debian** the postfix service is enabled in
# systemd. A reboot of the host is what proves it.

# %%
await pf.ensure_postfix_at_boot(stage)

# %% [markdown]
# ## G7 · The old server's queue runner, commented out
#
# The guide comments out (rather than deletes) sendmail's periodic queue run in root's
# crontab (`/var/cron/tabs/root` **on OpenBSD 5.0**), so going back to sendmail stays a
# one-character edit. **OpenBSD 7.x** (no sendmail) and Debian's mail servers usually keep
# no such line: the crontab is checked and left alone.

# %%
await pf.ensure_queue_runner_commented(stage)

# %% [markdown]
# ## G8 · The system logger re-reads its configuration
#
# A new socket only exists once the logger has taken its new settings. Done only when the
# socket is missing. **On OpenBSD 5.0** the guide sends syslogd a HUP through
# `/var/run/syslog.pid`; a HUP makes syslogd re-read `syslog.conf`, but cannot give the
# running process a new `-a` flag, so when the socket is still missing syslogd is started
# again with its rc.conf.local flags (its rc.d script where there is one, otherwise as
# `/etc/rc` starts it). **On OpenBSD 7.x** skipped, as G5. **On Debian** rsyslog is
# restarted (or started, having been installed with services held).

# %%
await pf.ensure_syslog_reloaded(stage)

# %%
end(stage)
