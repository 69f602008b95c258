"""The ``iotsentry incidents`` subcommand: the incident queue from a terminal (wired in by :func:`register`).

::

    iotsentry incidents list    [--db STORE] [--status S]... [--device D] [--cause C]... [--min-severity N]
                                [--limit N] [--json]
    iotsentry incidents show    ID [--db STORE] [--json]
    iotsentry incidents ack     ID [--note TEXT]
    iotsentry incidents assign  ID (ASSIGNEE | --unassign) [--note TEXT]
    iotsentry incidents expect  ID [--scope device|group] [--note TEXT]
    iotsentry incidents resolve ID [--note TEXT]
    iotsentry incidents reopen  ID [--note TEXT]

``--db`` is a store file or a ``postgresql://`` DSN (default ``iotsentry-out/iotsentry.db``).
Every change is recorded in the incident's audit trail in the name ``--as`` gives (default: the
login name) and, with ``--audit-log FILE``, in that hash-chained audit log (as ``iotsentry api
--audit-log`` records the API's changes). ``expect`` asks the baseline to absorb the behaviour
(``--scope group``: every device of its type / peer group); ``reopen`` / ``resolve`` of an
expected incident asks it to revert that. Network-derived text is printed literally.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from iotsentry.errors import InputError, IotSentryError

__all__ = ["cmd_incidents", "register"]

DEFAULT_STORE = str(Path("iotsentry-out") / "iotsentry.db")
_STATUS = {"ack": "acknowledged", "expect": "expected", "resolve": "resolved", "reopen": "open"}
_AUDIT = {"ack": "incident.ack", "expect": "incident.expected", "resolve": "incident.resolve",
          "reopen": "incident.reopen", "assign": "incident.assign"}  # fmt: skip
_SEV = {1: "high", 2: "medium", 3: "low", 4: "info"}


def _open_store(target: str) -> Any:
    from iotsentry.store import open_store, sqlite_path

    local = sqlite_path(target)  # None for a postgresql:// DSN (the server says what is wrong)
    if local is not None and local != ":memory:" and not Path(local).is_file():
        raise InputError(target, "no such store (run `iotsentry analyze` first, or pass --db)")
    return open_store(target)


def _who(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "cli")


def _when(ts: float | None) -> str:
    from iotsentry.schema import rfc3339

    return "-" if ts is None else rfc3339(ts)[:19].replace("T", " ") + "Z"


def _plain(text: Any) -> str:
    """One line of network-derived text: control characters shown as escapes, never acted on."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _list(args: argparse.Namespace) -> int:
    from iotsentry.store.records import IncidentQuery

    query = IncidentQuery(
        statuses=tuple(args.status or ()),
        device_id=args.device,
        causes=tuple(args.cause or ()),
        min_severity=args.min_severity,
    )
    with _open_store(args.db) as store:
        items, total = store.query_incidents(query, limit=args.limit)
    if args.json:
        print(json.dumps({"total": total, "items": [i.to_dict() for i in items]}, indent=2))
        return 0
    if not items:
        print("no incidents match")
        return 0
    print(f"{'incident':<21} {'status':<12} {'sev':<6} {'device':<26} {'cause':<15} {'count':>6}  "
          f"{'first seen':<20} {'last seen':<20} assignee")  # fmt: skip
    for i in items:
        print(
            f"{i.incident_id:<21} {i.status:<12} {_SEV.get(i.severity, '?'):<6} "
            f"{_plain(i.device_id)[:26]:<26} "
            f"{_plain(i.cause)[:15]:<15} {i.count:>6}  {_when(i.first_ts):<20} {_when(i.last_ts):<20} "
            f"{_plain(i.assignee or '-')}"
        )
    if total > len(items):
        print(f"... {total - len(items)} more (--limit)")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _open_store(args.db) as store:
        inc = store.get_incident(args.id)
        if inc is None:
            raise IotSentryError(f"no incident {args.id}")
        alerts = store.incident_alerts(args.id)
        history = store.incident_actions(args.id)
        feedback = store.baseline_feedback(args.id)
    if args.json:
        doc = {
            **inc.to_dict(),
            "alerts": [a.to_dict() for a in alerts],
            "history": [h.to_dict() for h in history],
            "feedback": [f.to_dict() for f in feedback],
        }
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(f"incident {inc.incident_id}: {inc.status}, {_SEV.get(inc.severity, '?')}, {inc.count} alerts")
    print(f"  device   {_plain(inc.device_id)} (site {_plain(inc.site_id)})")
    print(f"  cause    {_plain(inc.cause)}: {', '.join(_plain(c) for c in inc.categories)}")
    print(f"  seen     {_when(inc.first_ts)} .. {_when(inc.last_ts)}")
    print(f"  assignee {_plain(inc.assignee or '-')}")
    if inc.previous_id:
        print(f"  follows  {inc.previous_id}")
    print("evidence:")
    for s in inc.evidence:
        where = f"{s.get('dest_ip', '')}:{s.get('dest_port', '')}/{s.get('proto', '')}"
        kind = f"{s.get('category')}" + (f"/{s['feature']}" if s.get("feature") else "")
        print(f"  {_when(s.get('ts'))}  {_plain(kind)}  {_plain(where)}  {_plain(s.get('reason', ''))}")
    print(f"alerts: {len(alerts)} rows")
    for h in history:
        extra = f" ({_plain(h.value)})" if h.value else ""
        note = f": {_plain(h.note)}" if h.note else ""
        print(f"  {_when(h.at)}  {h.action}{extra} by {_plain(h.actor)}{note}")
    for f in feedback:
        state = f"applied {_when(f.applied_at)}: {_plain(f.result)}" if f.applied_at else "pending"
        print(f"  baseline feedback #{f.id}: {f.action} ({f.scope}) by {_plain(f.created_by)}, {state}")
    return 0


def _change(args: argparse.Namespace) -> int:
    who = _who(args)
    with _open_store(args.db) as store:
        if args.incidents_command == "assign":
            assignee = None if args.unassign else args.assignee
            if assignee is None and not args.unassign:
                raise IotSentryError("incidents assign: give an ASSIGNEE or --unassign")
            done = store.assign_incident(args.id, assignee, who, note=args.note)
            details: dict[str, Any] = {"assignee": assignee, "note": args.note}
        else:
            status = _STATUS[args.incidents_command]
            scope = args.scope if args.incidents_command == "expect" else None
            done = store.set_incident_status(args.id, status, who, scope, note=args.note)
            details = {"status": status, "note": args.note, **({"scope": scope} if scope else {})}
        if done is None:
            raise IotSentryError(f"no incident {args.id}")
    if args.audit_log:
        from iotsentry.integrity.audit import AuditLog  # CLI wiring, as `iotsentry api --audit-log`

        with AuditLog(args.audit_log, actor="iotsentry-cli") as log:
            log.append(_AUDIT[args.incidents_command], f"incident/{args.id}", details, actor=who)
    assignee = _plain(done.assignee or "-")
    print(f"incident {done.incident_id}: {done.status}, assignee {assignee} (by {_plain(who)})")
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    """Run one ``iotsentry incidents`` action."""
    if args.incidents_command == "list":
        return _list(args)
    if args.incidents_command == "show":
        return _show(args)
    return _change(args)


def register(subparsers: Any) -> None:
    """Add ``incidents`` to the ``iotsentry`` subcommands (an ``add_subparsers`` object)."""
    inc = subparsers.add_parser("incidents", help="the incident queue: list, show, ack, assign, expect, ...")
    sub = inc.add_subparsers(dest="incidents_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--db", default=DEFAULT_STORE, help=f"store file or postgresql:// DSN ({DEFAULT_STORE})"
        )
        p.set_defaults(func=cmd_incidents)

    def change(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("id", help="incident id (inc-...)")
        p.add_argument("--note", help="recorded with the action")
        p.add_argument("--as", dest="actor", help="who does it (default: the login name)")
        p.add_argument("--audit-log", help="hash-chained audit log that records the change")

    ls = sub.add_parser("list", help="incidents, most recently active first")
    common(ls)
    ls.add_argument("--status", action="append", choices=("open", "acknowledged", "expected", "resolved"))
    ls.add_argument("--device", help="only this device's incidents")
    ls.add_argument("--cause", action="append", help="only these causes (scan, c2, flood, ...)")
    ls.add_argument("--min-severity", type=int, choices=(1, 2, 3), help="1: high only; 2: high and medium")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")

    sh = sub.add_parser("show", help="one incident: evidence, history, baseline feedback")
    common(sh)
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true")

    for name, help_ in (
        ("ack", "acknowledge: someone is on it (an escalation re-opens it)"),
        ("resolve", "resolved: the next alert of its device and cause opens a new incident"),
        ("reopen", "back to open (from expected: the baseline reverts what it absorbed)"),
    ):
        change(sub.add_parser(name, help=help_))
    ex = sub.add_parser("expect", help="expected behaviour: the baseline absorbs it")
    change(ex)
    ex.add_argument("--scope", choices=("device", "group"), default="device",
                    help="this device's baseline, or every device of its type / peer group")  # fmt: skip
    asg = sub.add_parser("assign", help="assign to a person (or --unassign)")
    change(asg)
    asg.add_argument("assignee", nargs="?")
    asg.add_argument("--unassign", action="store_true")


def main(argv: list[str] | None = None) -> int:
    """Run ``incidents ...`` alone."""
    parser = argparse.ArgumentParser(prog="iotsentry-incidents")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except IotSentryError as e:
        print(f"iotsentry: error: {e}", file=sys.stderr)
        return 2
