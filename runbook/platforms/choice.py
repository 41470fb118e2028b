"""Which profile a host gets: from what it says it is (`uname -sr`, /etc/os-release), or from
what the parameters say, once per connection."""

from __future__ import annotations

import contextlib
import weakref

from runbook.ops import facts
from runbook.platforms.debian import debian
from runbook.platforms.openbsd import openbsd
from runbook.platforms.profile import Profile, UnsupportedPlatform

# name as params.platform.name spells it -> profile for a release ("12", "7.6").
FAMILIES = {"debian": debian, "openbsd": openbsd}


def identify(uname: str, os_release: str) -> tuple[str, str]:
    """(family, release) from `uname -sr` and /etc/os-release, e.g. ("debian", "12")."""
    system, _, kernel_release = uname.strip().partition(" ")
    if system == "OpenBSD":
        return "openbsd", kernel_release.strip()
    info = facts.parse_os_release(os_release)
    family = info.get("ID", system.lower() or "unknown")
    return family, info.get("VERSION_ID", "")


def choose(family: str, release: str, wanted_name: str = "auto",
           wanted_release: str | None = None) -> Profile:
    """The profile for what the host is, or for what the parameters say it is."""
    name = family if wanted_name == "auto" else wanted_name
    if wanted_name != "auto" and wanted_release is None and name != family:
        raise UnsupportedPlatform(
            f"platform.name is {wanted_name} but the host looks like {family} {release}: "
            f"give platform.release too (the release cannot be detected)")
    release = wanted_release or release
    factory = FAMILIES.get(name)
    if factory is None:
        known = ", ".join(sorted(FAMILIES))
        raise UnsupportedPlatform(
            f"{name} {release} is not a platform the runbook supports (known: {known}); "
            "nothing was changed")
    if not release:
        raise UnsupportedPlatform(f"cannot tell which {name} release this is: set "
                                  "platform.release")
    return factory(release)


# What each open connection's host turned out to be: the stages of a run share one
# connection, and the system does not change under it.
_identified: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def detect(stage) -> Profile:
    """The host's profile: `uname -sr` and /etc/os-release in one command (once per
    connection), honouring params.platform when it names the system. Raises
    UnsupportedPlatform."""
    try:
        family, release = _identified[stage.target]
    except (KeyError, TypeError):
        marker = "@@os-release"
        result = await stage.run(f"uname -sr; echo {marker}; cat /etc/os-release 2>/dev/null",
                                 privileged=False, check=False, stream=False, quiet=True)
        uname, _, os_release = result.stdout.partition(f"{marker}\n")
        family, release = identify(uname, os_release)
        with contextlib.suppress(TypeError):
            _identified[stage.target] = family, release
    wanted = stage.params.platform
    try:
        return choose(family, release, wanted.name, wanted.release)
    except UnsupportedPlatform as e:
        raise UnsupportedPlatform(f"{stage.target.host}: {e}") from None


