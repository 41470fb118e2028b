"""The guide's Postfix steps as named operations: what the stage notebooks call.

Each function is one step of the guide (its id in the operation's name, see
../shared/guide/STEPS.md): `await pf.ensure_identity(stage)` in a cell is guide step G9.
One module per stage notebook (install, enable, configure, start, validate, harden,
troubleshoot, rollback); `wanted` holds the pure wanted state, `common` what the stages
share. The platform profile (`stage.platform`) supplies what differs between systems;
everything here is the same on every platform. Every operation is recorded, reported ok /
changed / failed / skipped, and undone with its stage if the stage fails (runbook.ops).
"""

from runbook.services.postfix.configure import (
    current_settings,
    ensure_aliases,
    ensure_extra_settings,
    ensure_identity,
    ensure_listen_addresses,
    ensure_parent_domain_matching,
    ensure_trusted_networks,
    settings_diff,
)
from runbook.services.postfix.enable import (
    ensure_chroot_log_socket,
    ensure_postfix_at_boot,
    ensure_previous_mta_off_at_boot,
    ensure_queue_runner_commented,
    ensure_syslog_reloaded,
    ensure_system_mailer,
)
from runbook.services.postfix.harden import ensure_chroot_files, probe_open_relay, review_mynetworks
from runbook.services.postfix.install import install, publish_docs
from runbook.services.postfix.rollback import (
    postfix_off_at_boot,
    previous_mta_back,
    restore_edited_files,
    restore_system_mailer,
    show_changes,
    stop_postfix_for_rollback,
    verify_restored,
)
from runbook.services.postfix.start import (
    check_postfix,
    review_settings,
    start_postfix,
    stop_previous_mta,
    verify_listening,
)
from runbook.services.postfix.troubleshoot import (
    show_check,
    show_dns,
    show_listeners,
    show_mail_log,
    show_queue,
    show_settings,
)
from runbook.services.postfix.validate import follow_mail_log, read_mailbox, send_test_message
from runbook.services.postfix.wanted import (
    expected_listeners,
    smtp_address,
    test_address,
    wanted_settings,
)

__all__ = [
    "check_postfix",
    "current_settings",
    "ensure_aliases",
    "ensure_chroot_files",
    "ensure_chroot_log_socket",
    "ensure_extra_settings",
    "ensure_identity",
    "ensure_listen_addresses",
    "ensure_parent_domain_matching",
    "ensure_postfix_at_boot",
    "ensure_previous_mta_off_at_boot",
    "ensure_queue_runner_commented",
    "ensure_syslog_reloaded",
    "ensure_system_mailer",
    "ensure_trusted_networks",
    "expected_listeners",
    "follow_mail_log",
    "install",
    "postfix_off_at_boot",
    "previous_mta_back",
    "probe_open_relay",
    "publish_docs",
    "read_mailbox",
    "restore_edited_files",
    "restore_system_mailer",
    "review_mynetworks",
    "review_settings",
    "send_test_message",
    "settings_diff",
    "show_changes",
    "show_check",
    "show_dns",
    "show_listeners",
    "show_mail_log",
    "show_queue",
    "show_settings",
    "smtp_address",
    "start_postfix",
    "stop_postfix_for_rollback",
    "stop_previous_mta",
    "test_address",
    "verify_listening",
    "verify_restored",
    "wanted_settings",
]
