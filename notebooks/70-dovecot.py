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
# # 70 · Mailbox access with Dovecot (guide step G22)
#
# The guide sets out to give the host's users "Postfix and Dovecot": Postfix delivers,
# Dovecot lets mail clients read what it delivered. The guide gives no Dovecot steps, so
# this stage follows the package's own advice. Dovecot serves exactly the mailboxes Postfix
# delivers to, listens only on the addresses the parameters give, always offers TLS, and
# takes passwords only over TLS. Its settings are in ONE file the runbook writes; the
# package's own files stay as shipped.
#
# Then the stage checks the result the way a mail client would. It logs in over TLS as
# the test recipient and finds the message the validation stage sent. It also tries a
# plaintext login without TLS from outside the server, which must be refused.

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

params = validate(target=target, platform=platform, postfix=postfix, dovecot=dovecot)
stage = await begin("70-dovecot", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## Before anything changes
#
# The test recipient's password is read now, on this machine, from the environment
# variable or file the parameters name. It is never a parameter and never printed, and
# every record of the run masks it. If it is missing, the stage stops here, with the host
# still as it was.
#
# Dovecot must read where Postfix writes. By default that is the mbox file of each user in
# the mail spool (`/var/mail/USER`). With `dovecot.mailbox_format: maildir`, it is
# `~/Maildir/`, which Postfix uses when `home_mailbox = Maildir/`.

# %%
await dv.check_password(stage)

# %%
await dv.check_delivery(stage)

# %% [markdown]
# ## Install the IMAP server
#
# **On Debian** `dovecot-imapd`, plus `dovecot-pop3d` when `dovecot.pop3` is set. As with
# Postfix, no service may start while the packages install: Dovecot would otherwise listen
# on every address before its configuration is ours. The package also enables Dovecot at
# boot, so on a first install it is disabled again until the boot step below. **On
# OpenBSD** (both eras) `pkg_add dovecot`: one package serves IMAP and POP3, and it starts
# nothing.
#
# **On OpenBSD 7.x** the package's README asks for a login class for Dovecot's processes
# (more open files). The class goes in `/etc/login.conf.d/dovecot`, and an existing one is
# kept. **On OpenBSD 5.0** the package asked for no login class, and **on Debian** there are
# none, so the step is skipped there.

# %%
await dv.install(stage)

# %%
await dv.ensure_login_class(stage)

# %% [markdown]
# ## TLS certificate
#
# The certificate and key named by `dovecot.ssl_cert_file` and `dovecot.ssl_key_file` must
# be on the host and belong together. Without them, the stage makes a self-signed
# certificate for `postfix.myhostname` once and keeps it; later runs reuse it. **On
# OpenBSD** it goes where the package's `10-ssl.conf` and `dovecot-mkcert.sh` put it:
# `/etc/ssl/dovecotcert.pem`, with the key in `/etc/ssl/private/dovecot.pem`. **On
# Debian** it goes in `/etc/dovecot/private/mail-runbook.pem` and `.key`. Mail clients will
# ask the user to accept it. This stage's own checks pin exactly that certificate: they
# trust no other, and they do not skip verification.

# %%
await dv.ensure_certificate(stage)

# %% [markdown]
# ## The configuration: one file
#
# `/etc/dovecot/conf.d/99-mail-runbook.conf` is read after the package's files, so its
# settings win (on every platform: the OpenBSD package keeps the same layout):
#
# - `protocols`: IMAP, plus POP3 when asked;
# - `listen`: the parameters' addresses; by default, Postfix's `inet_interfaces`;
# - `mail_location`: the mailboxes Postfix delivers to (and, **on Debian**,
#   `mail_privileged_group = mail` so that Dovecot may lock files in the group-`mail`
#   spool);
# - `ssl = required` and `disable_plaintext_auth = yes`: passwords travel only inside TLS.
#
# A dry run shows the file's diff here and changes nothing.

# %%
await dv.ensure_config(stage)

# %% [markdown]
# `doveconf -n` prints every setting that differs from Dovecot's defaults, as Dovecot reads
# them. It must report no errors and no warnings, and the settings above must be the ones
# in force: no later file, such as `local.conf`, may override them. If this check fails,
# the files this stage edited are put back.

# %%
await dv.check_config(stage)

# %% [markdown]
# ## Enabled at boot, started
#
# **On Debian** `systemctl enable dovecot`. **On OpenBSD 7.x** `rcctl enable dovecot`, which
# adds it to `pkg_scripts`; rcctl rewrites the whole file, so a copy of it is kept first.
# **On OpenBSD 5.0** `dovecot` is added to `pkg_scripts` in `/etc/rc.conf.local`, after
# postfix, as the guide does for postfix.
#
# Dovecot is then started the same way (`systemctl start`, `rcctl start`,
# `/etc/rc.d/dovecot start`) if it is not running. If it is running but its configuration or
# certificate changed since it read them, it is reloaded. Over SSH, the start command's
# output goes to a file that is shown afterwards, because a daemon holding the session's
# output would keep the command from ever returning. Then the listening sockets of
# Dovecot's own master process must be exactly the configured addresses on 143 and 993
# (110 and 995 with POP3).

# %%
await dv.ensure_at_boot(stage)

# %%
await dv.start(stage)

# %%
await dv.verify_listening(stage)

# %% [markdown]
# ## A mail client's view: IMAP over TLS
#
# IMAPS (port 993) is reached through the SSH connection, so the check works even when the
# server's IMAP ports are firewalled from here. The certificate must be exactly the one read
# from the host. The session logs in as the test recipient and opens INBOX with `EXAMINE`,
# which is read-only. It searches for the subject of this run's validation message, or the
# newest mail-runbook test message when the validation stage did not run in this run. It
# fetches that message's headers with `BODY.PEEK`, so nothing is marked as read.

# %%
await dv.imap_login(stage)

# %% [markdown]
# With `dovecot.pop3`, the same check is made over POP3S (995): `TOP` reads only the
# headers. The connection is closed without `QUIT`, so the session never commits any change
# to the mailbox.

# %%
await dv.pop3_login(stage)

# %% [markdown]
# ## Plaintext login without TLS: refused, seen from outside
#
# Dovecot treats a connection from the server itself as secure, so a probe through the SSH
# connection would prove nothing. Instead, this machine connects straight to port 143 of
# the server's listen address (and to 110 with POP3), from `postfix.probe_source`. The
# stage fails if that address is one Dovecot trusts. The probe sends `LOGIN` with a made-up
# password: the test user's real password never crosses the network in clear. The server
# must refuse it because there is no TLS (`LOGINDISABLED`,
# `NO [PRIVACYREQUIRED]`). An answer about the password itself would mean the server checks
# passwords sent in clear, and the stage fails.

# %%
await dv.probe_plaintext_refused(stage)

# %%
end(stage)
