"""Flag plumbing shared by netd and netctl: typed flags that also read NETD_<FLAG> from the environment."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from netd.model.flags import env_name, parse_bool, parse_endpoints

if TYPE_CHECKING:
    from netd.adapters.etcd import EtcdRegistry

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/coreos.com/network"
class _Unset:
    """Stands for "not on the command line" during a parse; prints as the real default (for --help)."""

    def __init__(self, default: Any) -> None:
        self.default = default

    def __str__(self) -> str:
        return str(self.default)


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A netd.model.flags parser as an argparse type: its ValueError becomes argparse's message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def add_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, env: str | None = None,
             **kw: Any) -> argparse.Action:
    """An option that also reads an environment variable (NETD_<FLAG> unless ``env`` names another).

    The parser must be a FlagParser: it gives the variable's value the option's type, choices and
    boolean spelling, and refuses a bad one naming the variable."""
    action = p.add_argument(*names, **kw)
    long = next((n for n in names if n.startswith("--")), names[0])
    action.env_var = env or env_name(long)  # type: ignore[attr-defined]
    return action


class FlagParser(argparse.ArgumentParser):
    """argparse, plus: an option added with add_flag that is not on the command line takes its
    environment variable, parsed exactly as the option's own text would be (type, choices; for a
    switch: 1/true/yes/on or 0/false/no/off). An empty variable counts as unset. Subcommands made
    with add_subparsers are FlagParsers too."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        flags = [a for a in self._actions if getattr(a, "env_var", None)]
        saved = [(a, a.default) for a in flags]
        for a in flags:
            a.default = _Unset(a.default)  # tells "not given" apart from "given as the default"
        try:
            ns, rest = super().parse_known_args(args, namespace)
        finally:
            for a, default in saved:
                a.default = default
        for a, default in saved:
            if isinstance(getattr(ns, a.dest, None), _Unset):
                setattr(ns, a.dest, self._from_env(a, default))
        return ns, rest

    def _from_env(self, a: argparse.Action, default: Any) -> Any:
        name: str = a.env_var  # type: ignore[attr-defined]
        raw = os.environ.get(name, "")
        if not raw.strip():
            return a.type(default) if isinstance(default, str) and callable(a.type) else default
        try:
            if isinstance(a, argparse._StoreTrueAction):
                return parse_bool(raw)
            value = a.type(raw) if callable(a.type) else raw
        except (argparse.ArgumentTypeError, ValueError) as exc:
            self.error(f"{name}={raw!r}: {exc}")
        if a.choices is not None and value not in a.choices:
            self.error(f"{name}={raw!r}: expected one of {', '.join(map(str, a.choices))}")
        return value


def add_etcd_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("etcd")
    add_flag(g, "--etcd-endpoints", default=DEFAULT_ENDPOINTS, type=arg_type(checked_endpoints),
             help="comma-separated etcd URLs (default %(default)s)")
    add_flag(g, "--etcd-prefix", default=DEFAULT_PREFIX, help="flannel key prefix (default %(default)s)")
    add_flag(g, "--etcd-cafile", default=None, help="CA for etcd's TLS cert")
    add_flag(g, "--etcd-certfile", default=None, help="client TLS cert")
    add_flag(g, "--etcd-keyfile", default=None, help="client TLS key")


def checked_endpoints(spec: str) -> str:
    """--etcd-endpoints stays text (EtcdRegistry parses it); here it is only checked."""
    parse_endpoints(spec)
    return spec


def config_key(prefix: str) -> str:
    """Where flannel keeps the network config under --etcd-prefix."""
    return f"{prefix.rstrip('/')}/config"


def make_registry(args: argparse.Namespace) -> EtcdRegistry:
    from netd.adapters.etcd import EtcdRegistry, EtcdTLS  # grpc is slow to import: only when needed

    tls = EtcdTLS(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
    return EtcdRegistry(args.etcd_endpoints, prefix=args.etcd_prefix, tls=tls)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pyroute2 logs every netlink message at debug: keep it out of netd's own debug output
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, root.level))
