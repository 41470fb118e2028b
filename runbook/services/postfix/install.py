"""Stage 10-install (G1, G2): Postfix installed without starting, its documentation."""

from __future__ import annotations

from runbook.ops.operations import Plan, operation, platform_step
from runbook.services.postfix.common import prefetch

# G1: Postfix, a syslog daemon writing the mail log and a mail reader, none started.
install = platform_step("G1 install Postfix (services held until configured)", "install")


@operation("G2 Postfix documentation in a local web root (optional)")
async def publish_docs(stage) -> Plan:
    return await stage.platform.publish_docs(stage, _docs_dir(stage))


def _docs_dir(stage) -> str | None:
    directory = stage.params.postfix.html_docs_dir
    return str(directory) if directory else None


prefetch("10-install", lambda stage: stage.platform.docs_facts(_docs_dir(stage)))
