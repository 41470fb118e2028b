"""Stage 10-install (G1, G2): Postfix installed without starting, its documentation."""

from __future__ import annotations

from runbook.ops.operations import (
    Plan,
    operation,
)
from runbook.services.postfix.common import (
    prefetch,
)

# --- 10-install ------------------------------------------------------------------------------

@operation("G1 install Postfix (services held until configured)")
async def install(stage) -> Plan:
    """G1: Postfix, a syslog daemon writing the mail log, and a mail reader, installed
    without any service starting."""
    return await stage.platform.install(stage)


@operation("G2 Postfix documentation in a local web root (optional)")
async def publish_docs(stage) -> Plan:
    return await stage.platform.publish_docs(stage, _docs_dir(stage))


def _docs_dir(stage) -> str | None:
    directory = stage.params.postfix.html_docs_dir
    return str(directory) if directory else None




prefetch("10-install", lambda stage: stage.platform.docs_facts(_docs_dir(stage)))
