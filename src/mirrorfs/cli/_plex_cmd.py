"""plex offline|online|add|remove: change a volume's membership (mounted: through its daemon)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import Parser, add_volume_args, opened, print_json, via_daemon


def register(sub: Any) -> None:
    plex = sub.add_parser("plex", help="take plexes offline or online, add or remove them",
                          description="Change which plexes hold the volume. Offline keeps a "
                                      "plex's data and pins a resync base so its return copies "
                                      "only what changed; add attaches an empty plex as stale "
                                      "(a resync fills it); remove detaches one for good and "
                                      "wipes its label.")
    psub = plex.add_subparsers(dest="plex_command", metavar="ACTION", parser_class=Parser)
    psub.required = True
    for name, func, text in (
        ("offline", cmd_offline, "take an in-sync plex out of the in-sync set"),
        ("online", cmd_online, "mark an offline plex stale, ready for a resync"),
        ("add", cmd_add, "attach a new empty plex (image file, device or nbd://) as stale"),
        ("remove", cmd_remove, "detach a plex for good"),
    ):
        p = psub.add_parser(name, help=text, description=text)
        add_volume_args(p, writes=True)
        p.add_argument("target", metavar="PLEX")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(func=func)


def _via_daemon(args: argparse.Namespace) -> bool:
    """Run the action in the daemon of a mounted volume and print its report."""
    routed, doc = via_daemon(args, f"plex {args.plex_command}", {"target": args.target},
                             writes=True)
    if routed:
        _report(args, doc["action"], doc["plex"], doc["state"])
    return bool(routed)


def _report(args: argparse.Namespace, action: str, spec: str, state: str) -> int:
    if args.json:
        print_json({"plex": spec, "action": action, "state": state})
    else:
        print(f"plex {spec}: {action}; now {state}")
    return 0


def cmd_offline(args: argparse.Namespace) -> int:
    if _via_daemon(args):
        return 0
    with opened(args, writes=True) as vol:
        slot = vol.plex_offline(args.target)
        return _report(args, "offline", slot.spec, slot.state.label)


def cmd_online(args: argparse.Namespace) -> int:
    if _via_daemon(args):
        return 0
    with opened(args, writes=True) as vol:
        slot = vol.plex_online(args.target)
        return _report(args, "online", slot.spec, slot.state.label)


def cmd_add(args: argparse.Namespace) -> int:
    if _via_daemon(args):
        return 0
    with opened(args, writes=True) as vol:
        slot = vol.plex_add(args.target)
        return _report(args, "added", slot.spec, slot.state.label)


def cmd_remove(args: argparse.Namespace) -> int:
    if _via_daemon(args):
        return 0
    with opened(args, writes=True) as vol:
        vol.plex_remove(args.target)
        return _report(args, "removed", args.target, "removed")
