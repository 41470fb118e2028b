"""The guide's numbered steps, G1 … G24, as the notebooks name them: short titles in our own
words, so the site can link every step id to a page that lists them in the guide's order.

The numbering follows the guide's own order of steps (postfix-on-openbsd-5.0); the notebooks
carry them out in stage order, which differs where checking first is safer (40-start).
"""

from __future__ import annotations

import re

STEPS: dict[str, str] = {
    "G1": "Install the Postfix package",
    "G2": "Optionally, make Postfix's documentation readable on the host",
    "G3": "Postfix becomes the program behind `sendmail` (the system mailer)",
    "G4": "The previous mail server no longer starts at boot",
    "G5": "The system logger gets a log socket inside Postfix's chroot",
    "G6": "Postfix starts at boot",
    "G7": "The old server's queue runner in root's crontab is commented out, kept",
    "G8": "The system logger re-reads its configuration, so the new socket exists",
    "G9": "A minimal main.cf: the host's name and domain, and what follows from them",
    "G10": "Which clients may relay (mynetworks), narrowed where needed",
    "G11": "The alias database: edited, then rebuilt",
    "G12": "Subdomain matching set explicitly",
    "G13": "The previous mail server is stopped",
    "G14": "`postfix check` finds nothing to complain about",
    "G15": "`postconf -n` reviewed: every non-default setting is intended",
    "G16": "Postfix is started",
    "G17": "An SMTP session by hand, from greeting to QUIT, queueing a message",
    "G18": "The mail log follows that message's queue id to its delivery",
    "G19": "The recipient reads the message",
    "G20": "The files Postfix needs inside its chroot are current",
    "G21": "Before meeting the Internet: relaying reviewed again, no open relay",
    "G22": "Dovecot, so users read their mail with a mail client",
    "G23": "Going back to the previous mail server stays possible",
    "G24": "Troubleshooting: where to look when something does not work",
}

STEP_ID = re.compile(r"\bG([1-9]\d?)\b")


def ids_in(text: str) -> list[str]:
    """The known step ids named in `text`, in order of first mention; a range "G3–G8" (or
    "G3-G8") names every step from G3 to G8."""
    found: list[str] = []
    for match in re.finditer(r"\bG([1-9]\d?)(?:\s*[–-]\s*G([1-9]\d?))?\b", text):
        first = int(match.group(1))
        last = int(match.group(2) or first)
        for n in range(first, max(first, last) + 1):
            step = f"G{n}"
            if step in STEPS and step not in found:
                found.append(step)
    return found
