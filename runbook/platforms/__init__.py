"""What differs per operating system: one `Profile` per platform, chosen once per stage.

The notebooks never ask which system they are on. Every guide step whose commands differ
between systems is a method of the profile returning a `Plan` (or the facts a check needs);
the steps that are the same everywhere live in runbook/services/ and only read the
profile's paths.

- profile.py: the contract (`Profile` for Postfix, `DovecotContract` for Dovecot);
- choice.py: which profile a host gets (`detect`, `choose`, the `FAMILIES` registry);
- debian/: Debian 12 and 13, a profile made of apt, systemd, rsyslog (the journal on 13)
  and Dovecot parts;
- openbsd/: OpenBSD in two eras, `OpenBSDRcConf` (5.0 as the guide has it, up to 5.6)
  and `OpenBSDRcctl` (5.7 and later), sharing `OpenBSD`;
- stock/: a fresh host's files per platform, for `runbook plan`.

Each profile also describes a fresh host (`fresh_host`) and the way back (G23, stage
95-rollback). A new platform is a new `Profile` subclass registered in `FAMILIES`.
"""

from runbook.platforms.choice import FAMILIES, choose, detect, identify
from runbook.platforms.debian import Debian, debian, parse_dpkg_status, parse_pairs
from runbook.platforms.openbsd import (
    OpenBSD,
    OpenBSDRcConf,
    OpenBSDRcctl,
    mailer_conf_program,
    openbsd,
)
from runbook.platforms.profile import STOCK, Profile, UnsupportedPlatform, stock_files

__all__ = ["FAMILIES", "STOCK", "Debian", "OpenBSD", "OpenBSDRcConf", "OpenBSDRcctl",
           "Profile", "UnsupportedPlatform", "choose", "debian", "detect", "identify",
           "mailer_conf_program", "openbsd", "parse_dpkg_status", "parse_pairs",
           "stock_files"]
