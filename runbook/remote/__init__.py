"""The remote side: everything that crosses the SSH connection to the target.

`target` (the asyncssh session: connect with host keys checked, `run`, privilege, tunnels),
`files` (remote file edits: atomic writes, backups, the baseline, restore), `lock` (the
target's run lock), and the clients that talk to the mail server as a mail client would:
`probes` (SMTP, the mail log, the mailbox) and `imap` (IMAP and POP3).
Imports only the foundation (`runbook.errors`, `runbook.audit`).
"""
