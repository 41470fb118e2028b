"""G22: Dovecot serves the mailboxes Postfix delivers to — the named operations of 70-dovecot.

The guide's stated aim is "Postfix and Dovecot"; it gives no Dovecot steps. This stage
installs Dovecot's IMAP server (POP3 by parameter) and configures it with ONE file the
runbook owns (`profile.dovecot_conf`, read after the package's files, which stay as
shipped): the mailboxes Postfix delivers to, the listen addresses from the parameters,
TLS with a given or a generated self-signed certificate, plaintext authentication only
over TLS. Then it proves it:

- an IMAP session over TLS (IMAPS through the SSH connection, the certificate pinned to
  the one read from the host) logs in as the test recipient and finds the validation
  stage's message by its subject, read-only (EXAMINE, BODY.PEEK);
- a plaintext login without TLS is refused, tried from THIS machine straight to port 143
  from `postfix.probe_source`: Dovecot counts a connection from the server itself as
  secure, so a probe through the SSH tunnel would prove nothing.

The test recipient's password is read at run time from `dovecot.test_password_env` (a
variable's name) or `dovecot.test_password_file` (a file on this machine), registered as
a secret of the audit (no record carries it), and never printed. The plaintext probe sends
a made-up password: a real one never crosses the network in clear.

Modules: `wanted` (pure: the configuration from the parameters), `common` (what the steps
share), `tls` (the certificate and the pinned TLS connection), `setup` (installing to
listening, and the way back), `login` (the logins that prove it). What differs per platform
is in the profile's `dovecot_*` members (runbook/platforms/). The IMAP and POP3 clients are
in runbook/remote/imap.py.
"""

from runbook.services.dovecot.login import imap_login, pop3_login, probe_plaintext_refused
from runbook.services.dovecot.setup import (
    check_config,
    check_delivery,
    check_password,
    ensure_at_boot,
    ensure_config,
    ensure_login_class,
    install,
    start,
    stop_for_rollback,
    verify_listening,
)
from runbook.services.dovecot.tls import ensure_certificate

__all__ = [
    "check_config",
    "check_delivery",
    "check_password",
    "ensure_at_boot",
    "ensure_certificate",
    "ensure_config",
    "ensure_login_class",
    "imap_login",
    "install",
    "pop3_login",
    "probe_plaintext_refused",
    "start",
    "stop_for_rollback",
    "verify_listening",
]
