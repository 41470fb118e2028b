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
# # 60 · Before the host meets the Internet (guide steps G20, G21, G10)
#
# The guide closes with two warnings: the chrooted Postfix services read copies of some
# system files (a stale `resolv.conf` there is the first suspect when Postfix is slow),
# and `mynetworks` must be reviewed before the server is reachable, or it may relay for
# strangers. This stage keeps the copies current, reviews `mynetworks`, and then tries to
# relay through the server from outside, as a stranger would.

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
stage = await begin("60-harden", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## G20 · The chroot's copies of system files
#
# `resolv.conf` and the other files Postfix's chroot needs must match the originals in
# `/etc`; stale copies are replaced. **On OpenBSD** the package's postfix-install copied
# `hosts`, `localtime`, `resolv.conf` and `services` into `/var/spool/postfix/etc` at
# install, so on a fresh host they are current and the guide's `cp` is not needed; they
# are compared every run. **On Debian** Postfix's start script copies its own few files.

# %%
await pf.ensure_chroot_files(stage)

# %% [markdown]
# ## G21, G10 · `mynetworks` reviewed
#
# What Postfix really trusts (`postconf mynetworks`), each network compared with the
# parameters: anything wider than they allow, or the whole Internet, fails with the reason.

# %%
await pf.review_mynetworks(stage)

# %% [markdown]
# ## G21 · Open-relay probe from outside `mynetworks`
#
# A probe through the SSH session would come from the server itself, which Postfix
# trusts, and prove nothing. So this machine connects straight to the server's port 25
# from an address outside `mynetworks` (`postfix.probe_source`, or whatever address the
# system picks — the stage fails if that is inside `mynetworks`), asks to send to a
# `.invalid` domain, and quits after RCPT. Postfix must refuse with 454 or 554; a 250
# means the server is an open relay and the stage fails.

# %%
await pf.probe_open_relay(stage)

# %%
end(stage)
