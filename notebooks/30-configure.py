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
# # 30 · Minimal configuration (guide steps G9–G12)
#
# The guide's minimal `main.cf`: who the server is, who may relay through it, where the
# aliases live, and one setting made explicit so it cannot surprise anyone later. Each
# value comes from the parameters; a setting already right is left exactly as written, and
# every edit is backed up on the host first.
#
# `postconf -n` (the settings that differ from Postfix's defaults) is shown before and
# after, so the change can be read as a diff. Postfix itself is not (re)started here.

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
stage = await begin("30-configure", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## What main.cf sets before this stage

# %%
await pf.current_settings(stage)

# %% [markdown]
# ## G9 · Who the server is
#
# `myhostname` (this machine's full name), `mydomain` (the mail domain), `myorigin` (the
# domain local senders appear to come from) and `mydestination` (the domains delivered
# here rather than passed on).

# %%
await pf.ensure_identity(stage)

# %% [markdown]
# ## Where Postfix listens
#
# Not a step of the guide, whose Postfix listens everywhere. `inet_interfaces` comes from
# the parameters so that Postfix binds only the addresses meant for it (on a lab host, its
# own loopback address, since lab hosts share this machine's network).

# %%
await pf.ensure_listen_addresses(stage)

# %% [markdown]
# ## G10 · Who may relay
#
# `mynetworks` lists the clients Postfix trusts to send mail anywhere; everyone else may
# only send to the domains this server receives for. The guide looks at what Postfix
# worked out by itself and narrows it; here it is set to the networks the parameters
# name, with `mynetworks_style` recorded as well.

# %%
await pf.ensure_trusted_networks(stage)

# %% [markdown]
# ## G11 · The alias database
#
# `alias_maps` and `alias_database` name the aliases file, the entries from the parameters
# are written into it, and `postalias` rebuilds the database Postfix reads — only when the
# file changed or the database is missing or older than the file. **On OpenBSD 5.0** the
# guide moves the aliases into Postfix's own `/etc/postfix/aliases`; **on OpenBSD 7.x** the
# platform's usual `/etc/mail/aliases` and **on Debian** `/etc/aliases` are kept, unless
# the parameters name another table. (Postfix's commands are in `/usr/local/sbin` on
# OpenBSD, `/usr/sbin` on Debian.)

# %%
await pf.ensure_aliases(stage)

# %% [markdown]
# ## G12 · Subdomain matching is a decision
#
# `parent_domain_matches_subdomains` decides which features let `example.org` also match
# `sub.example.org`. Its default has changed between Postfix versions, so the guide sets
# it explicitly; here it takes the parameters' list (empty, as in the guide, by default).

# %%
await pf.ensure_parent_domain_matching(stage)

# %% [markdown]
# ## Further settings named in the parameters
#
# `postfix.extra_settings`, set like the values above. Lab hosts use it so their mail can
# never leave this machine (`default_transport` and `relay_transport` are `error:`).

# %%
await pf.ensure_extra_settings(stage)

# %% [markdown]
# ## What changed: `postconf -n` before and after

# %%
await pf.settings_diff(stage)

# %%
end(stage)
