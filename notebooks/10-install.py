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
# # 10 · Install Postfix (guide steps G1, G2)
#
# The guide begins by adding the Postfix package, then reads the notes the package prints
# about what is left to do. This stage installs the package and stops there: nothing it
# installs may start serving mail until the later stages have configured it.
#
# Run it again at any time: an installed package is left alone.

# %% tags=["parameters"]
target = {}
platform = {}
postfix = {}
dovecot = {}
mode = "batch"
run_dir = ""
dry_run = False

# %% [markdown]
# Every parameter is checked before anything connects; then the stage opens its audit
# record, connects and identifies the platform (which decides how packages are installed).

# %%
from runbook.run.stage import begin, end, validate
from runbook.services import postfix as pf

params = validate(target=target, platform=platform, postfix=postfix, dovecot=dovecot)
stage = await begin("10-install", params, mode=mode, run_dir=run_dir, dry_run=dry_run)

# %% [markdown]
# ## G1 · The Postfix package
#
# The guide's `pkg_add` leaves a Postfix that could be started by hand. Here the package
# manager installs it, together with what the later steps rely on when the host lacks it:
# a system logger that writes the mail log (the guide reads it in G18) and a command-line
# mail reader (the guide's `mail -u` in G19).
#
# **On OpenBSD** (5.0 as the guide has it, and 7.x) it is the guide's own step:
# `pkg_add` of the package the parameters name (`platform.postfix_package`, a flavoured
# name such as the guide's `postfix-2.8.7-mysql` allowed). The package leaves
# `/etc/mailer.conf.postfix`, `/etc/postfix`, the spool and chroot under
# `/var/spool/postfix` and `/etc/rc.d/postfix`, and starts nothing; syslogd and `mail(1)`
# are part of the base system.
#
# **On Debian** the package would start Postfix straight away, listening on every address
# with a configuration nobody has reviewed. So the install runs with a `policy-rc.d` that
# refuses every service start, and removes it again afterwards, also when the install
# fails (left behind, it would keep any service from ever starting on that host). The
# package's questions are answered beforehand, so no dialog waits for a keyboard. rsyslog
# is installed here and gets its Postfix socket in G5/G8 of the next stage.

# %%
await pf.install(stage)

# %% [markdown]
# ## G2 · The documentation, readable on the host (optional)
#
# The guide copies Postfix's HTML manual into a local web root. It is only done when the
# parameters name a directory (`postfix.html_docs_dir`); otherwise this step is skipped.
# **On OpenBSD** the guide's `mkdir -p` and `cp -R /usr/local/share/doc/postfix/html`;
# **on Debian** the manual is in the postfix-doc package, installed first.

# %%
await pf.publish_docs(stage)

# %%
end(stage)
