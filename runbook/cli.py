"""The `runbook` command: a thin shell over the package's modules."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from pathlib import Path

from runbook.errors import ParamsError, RunbookError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["run"], ["check"]):  # from a warm process of this code, if one runs
        from runbook.run import warm

        if (code := warm.delegate(argv)) is not None:
            return code
    return run_here(argv)


def run_here(argv: list[str]) -> int:
    """The command, in this process."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ParamsError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return 2
    except RunbookError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"runbook: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        # What is alive now lives until exit: frozen, the interpreter's last collections
        # skip it (0.15 s after a run).
        gc.freeze()


@contextlib.contextmanager
def _collection_paused():
    """Imports make objects that live until exit; collecting among them is a fifth of the
    import time, and frozen afterwards later collections skip them too."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


FLEET_FLAGS = ("forks", "strategy", "serial", "max_fail_percent", "hosts_from", "failed",
               "host", "cluster", "ssh_slots")


def _run(args) -> int:
    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    if any(getattr(args, flag) not in (None, False) for flag in FLEET_FLAGS):
        return _run_fleet(args, stages)
    with _collection_paused():
        from runbook.run import kernel
    # One host's kernel first: it boots while the rest is imported and the params are read.
    with kernel.Kernel() as booting:
        with _collection_paused():
            from runbook import inventory
            from runbook.run import runner
        if inventory.is_inventory(inventory.read(args.params)):
            booting.stop()  # each host of a fleet has its own process, and kernel
            return _run_fleet(args, stages)
        runner.quiet_papermill_logging()
        run_dir = runner.run(args.params, stages=stages, start=args.start,
                             dry_run=args.dry_run, run_dir=args.run_dir,
                             sign_key=args.sign_key, anchor=args.anchor, kernel=booting)
    how = " --allowed-signers FILE" if args.sign_key else ""
    how += f" --anchor {args.anchor}" if args.anchor else ""
    print(f"record: {run_dir}\nverify it with: runbook audit verify {run_dir}{how}")
    return 0


def _check(args) -> int:
    from runbook.run import check

    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    return check.main(args.params, stages, _names(args.host),
                      **({"runs_root": args.runs} if args.runs else {}))


def _run_fleet(args, stages) -> int:
    from runbook import inventory
    from runbook.fleet import controller, record

    if args.run_dir:
        raise ParamsError([("--run-dir", "names one host's folder; a fleet makes one a host")])
    hosts = inventory.select(inventory.load(args.params), _names(args.host))
    options = controller.Options(
        stages=stages, start=args.start,
        forks=controller.DEFAULT_FORKS if args.forks is None else args.forks,
        strategy=args.strategy or "free", serial=args.serial,
        max_fail_percent=args.max_fail_percent, dry_run=args.dry_run, cluster=args.cluster,
        sign_key=args.sign_key, anchor=args.anchor,
        ssh_slots=controller.SSH_SLOTS if args.ssh_slots is None else args.ssh_slots)
    if args.failed and not args.hosts_from:
        raise ParamsError([("--failed", "goes with --hosts-from FLEET_RUN")])
    if args.hosts_from:
        hosts = controller.from_fleet(args.hosts_from, hosts, options, failed=args.failed)
    fleet_dir = controller.run(hosts, options, source=str(args.params))
    data = record.read(fleet_dir)
    return 0 if len(data["succeeded"]) == len(data["hosts"]) else 1


def _status(args) -> int:
    from runbook.run import status

    print(status.report(args.what, **({"runs_root": args.runs} if args.runs else {})))
    return 0


def _plan(args) -> int:
    from runbook import inventory
    from runbook.run import plan

    stages = [s for s in args.stages.split(",") if s] if args.stages else None
    if not inventory.is_inventory(inventory.read(args.params)):
        print(plan.main(args.params, stages), end="")
        return 0
    for host in inventory.select(inventory.load(args.params), _names(args.host)):
        print(f"=== host {host.name} ===")
        print(plan.render(plan.make(host.params, stages), host.params,
                          f"{args.params} ({host.name})"), end="")
    return 0


def _validate(args) -> int:
    from runbook import inventory

    hosts = inventory.load(args.params)
    if inventory.is_inventory(inventory.read(args.params)):
        print(f"{args.params}: valid, {len(hosts)} hosts")
    for host in hosts:
        target = host.params.target
        name = f"  {host.name}: " if len(hosts) > 1 or host.name != target.host else ""
        user = f"{target.user}@" if target.user else ""
        print(f"{name or f'{args.params}: valid '}({user}{target.host}, "
              f"platform {host.params.platform.name})")
        if args.show_target:
            from runbook.remote import destination, sudo

            print(destination.describe(destination.resolve(target)), end="")
            print(f"privilege: {sudo.describe(target)}")
    return 0


def _names(text: str | None) -> list[str] | None:
    return [name for name in text.split(",") if name] if text else None


def _audit_verify(args) -> int:
    from runbook import signing

    verdict = signing.verify_run(args.run_dir, allowed_signers=args.allowed_signers,
                                 anchor_file=args.anchor,
                                 require_signature=args.require_signature)
    print(verdict.report(args.run_dir))
    return 0


def _report(args) -> int:
    from runbook import report

    folder = report.write(args.folders, out=args.out)
    print(f"report: {folder / report.REPORT_HTML}")
    return 0


def _docs(args) -> int:
    from runbook.report import site

    index = site.build(args.out, run=args.run)
    print(f"site: {index}")
    return 0


def _lab(args) -> int:
    from runbook import lab

    if args.lab_command == "up":
        hosts = lab.up(args.hosts, checkout=Path.cwd(), flavor=args.flavor,
                       release=args.release)
        _print_hosts(hosts, args)
    elif args.lab_command == "down":
        stopped = lab.down(args.names or None)
        print("stopped: " + (", ".join(stopped) or "no lab host was running"))
    elif args.lab_command == "reset":
        _print_hosts([lab.reset(args.name)], args)
    elif args.lab_command == "reboot":
        _print_hosts([lab.reboot(args.name)], args)
    else:
        _print_hosts(lab.status(), args)
    return 0


def _session(args) -> int:
    from runbook.interactive import session

    return session.serve(args.params, port=args.port)


def _print_hosts(hosts: list[dict], args) -> None:
    if getattr(args, "json", False):
        print(json.dumps(hosts, indent=2, default=str))
        return
    if not hosts:
        print("no lab hosts (runbook lab up)")
    for h in hosts:
        state = "running" if h.get("running") else "stopped"
        print(f"{h['name']:8} {h['address']:15} {state:8} {h.get('flavor', '')} "
              f"{h.get('release', '')}  params: {h.get('params_file')}")


def _warm(args) -> int:
    from runbook.run import warm

    if args.status:
        return warm.status()
    if args.stop:
        return warm.stop()
    # a run it serves is this CLI's, in a process forked for it (with its own argv)
    return warm.serve(run_here, idle=args.idle)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runbook", description="Set up Postfix and Dovecot from parameterised notebooks."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="execute the stage notebooks against one host, or every "
                         "host of an inventory")
    run.add_argument("params", type=Path, help="params or inventory file (YAML)")
    run.add_argument("--stages", help="comma-separated stages (default: the default run)")
    run.add_argument("--from", dest="start", metavar="STAGE",
                     help="resume the host's latest run from this stage")
    run.add_argument("--run-dir", type=Path, help="run folder to use (default: a new one)")
    run.add_argument("--dry-run", action="store_true",
                     help="read facts and show every change, change nothing")
    run.add_argument("--sign-key", type=Path, metavar="KEY_FILE",
                     help="sign the record at the end (ssh-keygen -Y sign): a private key "
                          "file, or a public key whose private half is in the agent")
    run.add_argument("--anchor", type=Path, metavar="FILE",
                     help="append the record's head to this file, outside the run folder")
    fleet = run.add_argument_group("fleets (an inventory)")
    fleet.add_argument("--forks", type=int, help="hosts worked on at once (default 10; see "
                       "docs/fleet.md)")
    fleet.add_argument("--strategy", choices=("free", "linear"),
                       help="free (default): each host as fast as it can; linear: every host "
                       "finishes a stage before any starts the next")
    fleet.add_argument("--serial", metavar="N|P%",
                       help="batches of N hosts (or P%% of the fleet); the next batch starts "
                       "only if the last one succeeded")
    fleet.add_argument("--max-fail-percent", type=float, metavar="P",
                       help="stop starting new hosts once more than P%% of the fleet failed")
    fleet.add_argument("--host", help="only these hosts of the inventory (comma-separated)")
    fleet.add_argument("--hosts-from", type=Path, metavar="FLEET_RUN",
                       help="the hosts of an earlier fleet run (runs/<UTC>-fleet)")
    fleet.add_argument("--failed", action="store_true",
                       help="with --hosts-from: only its failed and unreachable hosts, each "
                       "resumed from the stage it stopped at")
    fleet.add_argument("--cluster", metavar="tcp://SCHEDULER:8786",
                       help="run the hosts on a Dask cluster's workers")
    fleet.add_argument("--ssh-slots", type=int,
                       help="SSH handshakes under way at once (default 8, below sshd's "
                       "MaxStartups of 10)")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="dry-run the stages: exit 0 if nothing would "
                           "change, 3 listing each drifted setting and file")
    check.add_argument("params", type=Path, help="params or inventory file (YAML)")
    check.add_argument("--stages", help="comma-separated stages (default: the default run)")
    check.add_argument("--host", help="inventory: only these hosts (comma-separated names)")
    check.add_argument("--runs", type=Path, metavar="DIR",
                       help="where the check's dry-run records go (default: runs/)")
    check.set_defaults(func=_check)

    status = sub.add_parser("status", help="the last run on a host, its state, pending "
                            "backups and stray temp files an unfinished run left")
    status.add_argument("what", metavar="HOST_OR_PARAMS",
                        help="a params or inventory file, or a host as runs/ names it")
    status.add_argument("--runs", type=Path, metavar="DIR", help="run folders (default: runs/)")
    status.set_defaults(func=_status)

    plan = sub.add_parser("plan", help="print every command and file edit for a fresh host, "
                                       "without connecting")
    plan.add_argument("params", type=Path, help="params or inventory file (YAML) naming "
                      "the platform")
    plan.add_argument("--stages", help="comma-separated stages (default: the default run)")
    plan.add_argument("--host", help="inventory: only these hosts (comma-separated names)")
    plan.set_defaults(func=_plan)

    validate = sub.add_parser("validate", help="check a params or inventory file without "
                              "connecting")
    validate.add_argument("params", type=Path)
    validate.add_argument("--show-target", action="store_true",
                          help="print where each host is reached (params over ssh_config: user, "
                          "address, port, jump hosts, keys, known_hosts, policy) and where each "
                          "value came from, without connecting")
    validate.set_defaults(func=_validate)

    report = sub.add_parser("report", help="write report.html and report.json for a run or a "
                                           "fleet (several runs given: their matrix)")
    report.add_argument("folders", type=Path, nargs="+", metavar="RUN_OR_FLEET_FOLDER")
    report.add_argument("--out", type=Path,
                        help="folder for the report of several runs (default: a new "
                             "<UTC>-report folder beside the first)")
    report.set_defaults(func=_report)

    docs = sub.add_parser("docs", help="build the notebooks into a static site")
    docs.add_argument("--out", type=Path, help="the site's folder (default: docs/site)")
    docs.add_argument("--run", type=Path, help="show this run's real output on every page")
    docs.set_defaults(func=_docs)

    audit = sub.add_parser("audit", help="work with a run's audit record")
    audit_sub = audit.add_subparsers(required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify", help="check a run's hash chain, its signed head and notebook digests")
    verify.add_argument("run_dir", type=Path)
    verify.add_argument("--allowed-signers", type=Path, metavar="FILE",
                        help="check the signature against these keys (OpenSSH allowed_signers)")
    verify.add_argument("--anchor", type=Path, metavar="FILE",
                        help="check the chain against the heads anchored in this file")
    verify.add_argument("--require-signature", action="store_true",
                        help="an unsigned run fails instead of being reported as unsigned")
    verify.set_defaults(func=_audit_verify)

    warm = sub.add_parser("warm", help="keep the runner and a kernel loaded, so that each "
                          "`runbook run` of this checkout starts from it (see README)")
    warm.add_argument("--idle", type=float, default=3600.0, metavar="SECONDS",
                      help="end after this long without a run (default: an hour)")
    which = warm.add_mutually_exclusive_group()
    which.add_argument("--status", action="store_true",
                       help="say which warm processes serve (exit 0: one serves this code)")
    which.add_argument("--stop", action="store_true",
                       help="end this checkout's warm processes (runs in flight go on)")
    warm.set_defaults(func=_warm)

    session = sub.add_parser(
        "session", help="fresh notebook copies in runs/session-<UTC>/, served by JupyterLab "
        "on 127.0.0.1")
    session.add_argument("--params", type=Path, help="prepare the stage notebooks for this file")
    session.add_argument("--port", type=int, default=8888, help="port (another if taken)")
    session.set_defaults(func=_session)

    lab = sub.add_parser("lab", help="disposable local target hosts (needs root)")
    lab_sub = lab.add_subparsers(required=True, dest="lab_command", metavar="ACTION")
    up = lab_sub.add_parser("up", help="boot lab hosts (idempotent)")
    up.add_argument("--hosts", type=int, default=1, help="at least this many hosts of the flavor")
    up.add_argument("--flavor", choices=("debian", "openbsd"), default="debian",
                    help="openbsd: an emulated OpenBSD layout over Debian (see README)")
    up.add_argument("--release", help='debian: "12" (default, deb1 …) or "13" (trixie1 …); '
                    'openbsd: the era it imitates, "5.0" or "7.6"')
    up.add_argument("--json", action="store_true")
    down = lab_sub.add_parser("down", help="stop every lab host (or those named), leave "
                              "nothing behind")
    down.add_argument("names", nargs="*", metavar="NAME", help="only these hosts")
    for action in ("reset", "reboot"):
        p = lab_sub.add_parser(action, help=f"{action} one lab host")
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
    status = lab_sub.add_parser("status", help="list lab hosts")
    status.add_argument("--json", action="store_true")
    lab.set_defaults(func=_lab)
    return parser


if __name__ == "__main__":
    sys.exit(main())
