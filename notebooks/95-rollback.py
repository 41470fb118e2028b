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
# # 95 · Going back to the previous mail server (guide step G23)
#
# The guide keeps the way back open: the package names it (`postfix-disable`), the old
# `mailer.conf` is kept as `mailer.conf.pre-postfix`, and sendmail's crontab line is only
# commented out. This stage takes that way back, for everything the runbook changed:
# Postfix stops (and, where a service manager decides it, no longer starts at boot), the
# previous `mailer.conf` returns, every file the runbook ever edited on this host is put
# back byte for byte from the copy kept before its first edit (the baseline in
# `/var/backups/mail-runbook/baseline`), and the previous mail server runs again.
#
# Not part of a normal run: `runbook run PARAMS --stages 95-rollback`. Postfix stays
# installed (the guide's way back is `postfix-disable`, not removing the package), and a
# later run of the runbook sets it up again from here.

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
from runbook.services import dovecot as dv
from runbook.services import postfix as pf

params = validate(target=target, platform=platform, postfix=postfix, dovecot=dovecot)
stage = await begin("95-rollback", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## What the runbook changed here
#
# Each file the runbook edited on this host, compared with the copy kept before it first
# edited it. A file that did not exist then (a new `rc.conf.local`) is removed again.

# %%
await pf.show_changes(stage)

# %% [markdown]
# ## Postfix stops
#
# First, so that nothing delivers mail while the files change under it. (**On OpenBSD 5.0**
# `/etc/rc.d/postfix stop`, **on OpenBSD 7.x** `rcctl stop postfix`, **on Debian**
# `systemctl stop postfix`.)

# %%
await pf.stop_postfix_for_rollback(stage)

# %% [markdown]
# ## Postfix no longer starts at boot
#
# **On OpenBSD** (both eras) that is `pkg_scripts` in `/etc/rc.conf.local`, which the
# restore below puts back as it was — for 7.x the copy kept before rcctl first rewrote the
# file. **On Debian** the postfix service is disabled in systemd.

# %%
await pf.postfix_off_at_boot(stage)

# %% [markdown]
# ## Dovecot stops too (where the runbook set it up, G22)
#
# Before the files go back: putting them back removes the runbook's Dovecot file, and a
# Dovecot started later would listen with its package's defaults, on every address. So it
# stops and no longer starts at boot; the package stays, as Postfix's does. Nothing to do
# where the runbook never set Dovecot up.

# %%
await dv.stop_for_rollback(stage)

# %% [markdown]
# ## G23 · The previous `mailer.conf`
#
# **On OpenBSD** the package's own way back: `postfix-disable` moves
# `mailer.conf.pre-postfix` back to `/etc/mailer.conf` (the very file `postfix-enable`
# moved aside, so it is byte for byte the old one) and keeps Postfix's as
# `mailer.conf.postfix`, ready for the next `postfix-enable`. **On Debian** there is no
# mailer.conf: `/usr/sbin/sendmail` belongs to the postfix package while it is installed.

# %%
await pf.restore_system_mailer(stage)

# %% [markdown]
# ## Every edited file, as before the first run
#
# `rc.conf.local` (**on OpenBSD 5.0** without `sendmail_flags=NO`, the syslogd socket and
# `pkg_scripts="postfix"`; **on 7.x** as before rcctl's edits), root's crontab with the
# sendmail queue runner active again, `main.cf` and the aliases file as the package left
# them. The alias database is rebuilt from the restored aliases file.

# %%
await pf.restore_edited_files(stage)

# %% [markdown]
# ## The previous mail server runs again
#
# Started only where the restored settings say it starts at boot. **On OpenBSD 5.0**
# syslogd restarts without the chroot socket, then sendmail starts through its rc.d
# script; **on 7.x** `rcctl start smtpd`; **on Debian** the services the runbook disabled
# (if any) are enabled and started again.

# %%
await pf.previous_mta_back(stage)

# %% [markdown]
# ## Evidence: byte for byte as before
#
# Every edited file compared with its copy from before the first edit, and root's crontab
# also as `crontab -l` prints it. Any difference fails the stage, naming the file.

# %%
await pf.verify_restored(stage)

# %%
end(stage)
