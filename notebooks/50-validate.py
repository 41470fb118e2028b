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
# # 50 · A message, end to end (guide steps G17–G19)
#
# The guide proves the server by talking SMTP to it by hand from the server itself, then
# following the message through the mail log into the recipient's mailbox. This stage
# does the same, with a subject unique to this run so the evidence cannot be an old
# message. The message is left in the mailbox.

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
stage = await begin("50-validate", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## G17 · An SMTP session, as the guide types it
#
# From the server itself (a TCP connection opened through the SSH session, as the guide's
# `telnet localhost smtp`): the 220 greeting, EHLO and the extensions Postfix offers,
# MAIL FROM, RCPT TO, DATA and its 354, the message, 250 with the queue id, QUIT and 221.
# The whole transcript is kept in the audit record.

# %%
await pf.send_test_message(stage)

# %% [markdown]
# ## G18 · The mail log follows the queue id
#
# Waiting (at most 30 seconds) for the log to show that queue id delivered: the client,
# the sender, the recipient with `relay=local` and `status=sent`, then `removed`. The log
# is `/var/log/maillog` **on OpenBSD**, `/var/log/mail.log` **on Debian**.

# %%
await pf.follow_mail_log(stage)

# %% [markdown]
# ## G19 · The message in the recipient's mailbox
#
# The guide opens the mailbox with `mail -u` and reads the message. Quitting `mail` the
# usual way marks messages read and may move them, so here it only lists the newest
# message and leaves with `x` (nothing changed); the message itself is then read from the
# end of the mailbox file and shown. It stays there for the user.

# %%
await pf.read_mailbox(stage)

# %%
end(stage)
