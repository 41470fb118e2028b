"""Debian: one profile (profile.py) made of its packages, services, logger and Dovecot."""

from runbook.platforms.debian.apt import parse_dpkg_status
from runbook.platforms.debian.profile import Debian, debian
from runbook.platforms.debian.systemd import parse_pairs

__all__ = ["Debian", "debian", "parse_dpkg_status", "parse_pairs"]
