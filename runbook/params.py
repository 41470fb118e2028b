"""The parameter model: everything a run needs, validated before any connection.

One pydantic model is the single source for the params files, the notebooks' papermill
parameters (one per top-level section), the JupyterLab form and validation. Every value
that can reach a remote shell is checked here against a narrow grammar, and is still
quoted where it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runbook.errors import ParamsError
from runbook.grammar import (
    PACKAGE,
    PARENT_DOMAIN_FEATURES,
    AliasTarget,
    DnsName,
    DomainRef,
    HostName,
    Interface,
    IPAddress,
    JumpHost,
    LocalPath,
    LookupTable,
    Network,
    Release,
    RemotePath,
    SettingName,
    SettingValue,
    UserName,
    one_or_many,
    unsupported_release,
    whole,
)


def _features(values: list[str]) -> list[str]:
    unknown = sorted(set(values) - PARENT_DOMAIN_FEATURES)
    if unknown:
        known = ", ".join(sorted(PARENT_DOMAIN_FEATURES))
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {known}")
    return values


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(Section):
    """How to reach the host. Secrets are never here: keys come from a file or the agent.

    As on `ssh`'s command line, a value given here wins and a value left out comes from the
    ssh_config files (~/.ssh/config, /etc/ssh/ssh_config), then from ssh's own default;
    `runbook validate --show-target` shows the outcome and where each value came from.
    """

    host: HostName = Field(description="Host name, IP address or ssh_config alias.")
    port: int | None = Field(None, ge=1, le=65535,
                             description="SSH port; empty: ssh_config's Port, else 22.")
    user: UserName | None = Field(
        None, description="SSH login user; empty: ssh_config's User, else this machine's user.")
    key_file: LocalPath | None = Field(
        None, description="Private key file; empty: ssh_config's IdentityFile, the agent and "
        "the default keys."
    )
    use_agent: bool = Field(True, description="Offer keys held by the SSH agent.")
    known_hosts: LocalPath | None = Field(
        None, description="known_hosts file holding the host's key; empty: ssh_config's "
        "UserKnownHostsFile, else ~/.ssh/known_hosts."
    )
    host_key_policy: Literal["strict", "accept-new"] | None = Field(
        None,
        description="strict: the host key must already be known. accept-new: trust a host seen "
        "for the first time and record its key (a changed key is always refused). Empty: "
        "ssh_config's StrictHostKeyChecking, else strict.",
    )
    ssh_config: LocalPath | Literal["none"] | None = Field(None, description=(
        "ssh_config file to read instead of ~/.ssh/config and /etc/ssh/ssh_config; none: none."))
    jump: list[JumpHost] | None = Field(
        None, description="Jump hosts, [user@]host[:port] each, first to last (ssh's ProxyJump); "
        "empty: ssh_config's ProxyJump; [] for none."
    )
    privilege: Literal["none", "sudo", "doas"] = Field(
        "none",
        description="How a non-root user becomes root: sudo -n / doas -n, never asking; "
        "sudo with a password when sudo_password_env or sudo_password_file names it.",
    )
    sudo_password_env: str | None = Field(
        None,
        pattern=whole(r"[A-Z_][A-Z0-9_]{0,63}"),
        description="Name of the environment variable holding the SSH user's sudo password "
        "(fed to sudo -S on stdin; the password itself is never a parameter).",
    )
    sudo_password_file: LocalPath | None = Field(
        None, description="File on this machine holding the SSH user's sudo password."
    )
    connect_timeout: float | None = Field(
        None, gt=0, le=300, description="Seconds to wait for SSH; empty: ssh_config's "
        "ConnectTimeout, else 10.")
    command_timeout: float = Field(
        300, gt=0, le=3600, description="Seconds a remote command may run before it is killed."
    )

    @model_validator(mode="after")
    def _sudo_password(self):
        given = [n for n in ("sudo_password_env", "sudo_password_file") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError("target.sudo_password_env and target.sudo_password_file: give "
                             "one of them, not both")
        if given and self.privilege == "doas":
            raise ValueError(
                f"target.{given[0]}: doas takes no password here — OpenBSD's doas -n (even "
                "with persist) cannot be given one non-interactively; allow the user with "
                "`permit nopass USER` in /etc/doas.conf, or use sudo")
        if given and self.privilege != "sudo":
            raise ValueError(f"target.{given[0]} is only used with target.privilege: sudo")
        return self


class Platform(Section):
    """What kind of host it is; `auto` detects it in preflight."""

    name: Literal["auto", "debian", "openbsd"] = Field(
        "auto", description="Operating system of the target, or auto to detect it."
    )
    release: Release = Field(
        None, description='Release, e.g. "12" (Debian), "5.0" or "7.6" (OpenBSD); empty: detect.'
    )
    postfix_package: str | None = Field(
        None,
        pattern=whole(PACKAGE.pattern),
        description="OpenBSD package to pkg_add, flavour allowed (e.g. postfix-2.8.7-mysql).",
    )
    pkg_path: str | None = Field(
        None,
        pattern=whole(r"(https?|ftp|file)://[A-Za-z0-9._~:/%+-]+|/[A-Za-z0-9._/-]+"),
        description="OpenBSD: PKG_PATH for pkg_add (releases before installurl, e.g. 5.0).",
    )

    @field_validator("release")
    @classmethod
    def _release_is_supported(cls, release: str | None, info) -> str | None:
        """A named system and release must be one the runbook has a profile for: said here,
        before any connection, rather than in preflight."""
        name = info.data.get("name")
        if release is not None and name not in (None, "auto"):
            problem = unsupported_release(name, release)
            if problem:
                raise ValueError(problem)
        return release
        from runbook.platforms.choice import choose  # the profiles are pure: no connection
        from runbook.platforms.profile import UnsupportedPlatform

        try:
            choose(name, release, name, release)
        except UnsupportedPlatform as e:
            raise ValueError(str(e)) from None
        return release


class Postfix(Section):
    """The guide's minimal Postfix configuration (G9-G12) and the test message's recipient."""

    mydomain: DnsName = Field(description="The mail domain, e.g. example.org.")
    myhostname: DnsName = Field(description="This server's fully qualified name.")
    myorigin: DomainRef = Field(
        "$mydomain", description="Domain that locally posted mail appears to come from."
    )
    mydestination: Annotated[list[DomainRef], BeforeValidator(one_or_many)] = Field(
        ["$myhostname", "localhost.$mydomain", "localhost"],
        description="Domains this server delivers locally.",
    )
    mynetworks: Annotated[list[Network], BeforeValidator(one_or_many)] = Field(
        ["127.0.0.0/8", "[::1]/128"],
        min_length=1,
        description="Clients trusted to relay (Postfix notation; IPv6 in brackets).",
    )
    mynetworks_style: Literal["host", "subnet", "class"] = Field(
        "host", description="How Postfix derives mynetworks when it is not given."
    )
    inet_interfaces: Annotated[list[Interface], BeforeValidator(one_or_many)] = Field(
        ["loopback-only"], min_length=1, description="Addresses Postfix listens on."
    )
    alias_maps: LookupTable | None = Field(
        None, description="Alias lookup table; empty: the platform's usual aliases file."
    )
    alias_database: LookupTable | None = Field(
        None, description="Alias database that newaliases/postalias builds; empty: as alias_maps."
    )
    parent_domain_matches_subdomains: Annotated[
        list[str], BeforeValidator(one_or_many), AfterValidator(_features)
    ] = Field(
        [],
        description="Features that match subdomains implicitly; the guide sets none explicitly.",
    )
    aliases: dict[UserName, Annotated[list[AliasTarget], BeforeValidator(one_or_many)]] = Field(
        {}, description="Alias entries, e.g. postmaster: root."
    )
    test_recipient: UserName = Field(description="Local user who receives the test message.")
    probe_source: IPAddress | None = Field(
        None,
        description="Source address for the open-relay probe; must lie outside mynetworks.",
    )
    html_docs_dir: RemotePath | None = Field(
        None, description="OpenBSD (G2): copy Postfix's HTML documentation into this web root."
    )
    extra_settings: dict[SettingName, SettingValue] = Field(
        {}, description="Further main.cf settings, e.g. default_transport on a lab host."
    )


class Dovecot(Section):
    """Mailbox access (G22): Dovecot serves the mailboxes Postfix delivers to."""

    enabled: bool = Field(True, description="Set up Dovecot in the 70-dovecot stage.")
    listen: Annotated[list[IPAddress], BeforeValidator(one_or_many)] = Field(
        [], description="Addresses Dovecot listens on; empty: Postfix's inet_interfaces "
        "addresses (127.0.0.1 for loopback-only)."
    )
    mailbox_format: Literal["mbox", "maildir"] = Field(
        "mbox",
        description="mbox: the spool files Postfix delivers to by default. maildir: Postfix "
        "delivers to ~/Maildir/ and Dovecot reads it there (both switched together).",
    )
    pop3: bool = Field(False, description="Also serve POP3 (995 with TLS, 110 with STARTTLS).")
    ssl_cert_file: RemotePath | None = Field(
        None, description="Certificate on the host; empty: a self-signed one is generated."
    )
    ssl_key_file: RemotePath | None = Field(
        None, description="Private key on the host, matching ssl_cert_file."
    )
    test_password_env: str | None = Field(
        None,
        pattern=whole(r"[A-Z_][A-Z0-9_]{0,63}"),
        description="Name of the environment variable holding the test recipient's "
        "password (the password itself is never a parameter).",
    )
    test_password_file: LocalPath | None = Field(
        None, description="File on this machine holding the test recipient's password."
    )

    @model_validator(mode="after")
    def _certificate_and_key(self):
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("ssl_cert_file and ssl_key_file go together: give both, or "
                             "neither for a self-signed certificate made on the host")
        return self


class Params(Section):
    """A whole params file: each top-level key is one papermill parameter of every stage."""

    target: Target
    platform: Platform = Platform()
    postfix: Postfix
    dovecot: Dovecot = Dovecot()


SECTIONS: tuple[str, ...] = tuple(Params.model_fields)


def validate(source: str = "parameters", **sections: Any) -> Params:
    """Validate the sections (as papermill passes them) into Params, or raise ParamsError."""
    try:
        return Params.model_validate(sections)
    except ValidationError as e:
        raise ParamsError(_problems(e), source) from None


def load(path: str | Path) -> Params:
    """Read and validate a YAML params file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError([("(file)", f"{path} does not exist")], str(path)) from None
    except yaml.YAMLError as e:
        raise ParamsError([("(file)", f"not valid YAML: {e}")], str(path)) from None
    if not isinstance(data, dict):
        raise ParamsError([("(file)", "must be a mapping of sections (target, postfix, …)")],
                          str(path))
    return validate(str(path), **data)


def as_parameters(params: Params) -> dict[str, Any]:
    """The papermill parameters for a stage notebook: one plain dict per section."""
    return params.model_dump(mode="json", exclude_none=False)


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(file)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (not a parameter of mail-runbook; check its spelling)"
        problems.append((field, message))
    return problems
