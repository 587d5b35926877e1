"""The ``v2sync`` command line (v2ray ``main/main.go`` + ``v2ctl uuid``).

    v2sync run [-c FILE]... [--confdir DIR]   # no -c: the embedded default config
    v2sync test -c FILE                        # "Configuration OK." or every error, exit 23
    v2sync version | uuid

V2Ray habits work too: ``-config``/``-confdir`` are aliases, and ``v2sync -config x.json``
or ``v2sync -test -c x.json`` behave like ``v2ray``. This is the only module importing rich.

No input ends in a traceback: config problems are ConfigErrors, printed (the first
``MAX_SHOWN``, then a count) with exit 23. A closed stdout (``v2sync test | head``) silences
further output and keeps the exit code; text the terminal cannot encode is escaped.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import signal
import sys
import threading
import uuid
from typing import List, Optional

from v2sync import __version__

EXIT_CONFIG_ERROR = 23  # v2ray's exit code for config and load errors
EXIT_START_FAILURE = 255  # v2ray exits -1 when Start fails
EXIT_USAGE = 2  # a bad command-line value, as argparse exits

log = logging.getLogger("v2sync.cli")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", "-config", dest="config", action="append", default=[],
                        metavar="FILE", help="config file (repeatable; '-' or 'stdin:' reads stdin)")
    parser.add_argument("--confdir", "-confdir", dest="confdir", action="append", default=[],
                        metavar="DIR", help="also load DIR/*.json in lexical order")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="v2sync", description="A V2Ray-compatible proxy in Python.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run with the given config (default: the embedded one)")
    _add_config_args(run)
    run.add_argument("--cpu", "-cpu", dest="cpu", default=None, metavar="auto|all|N",
                     help="keep all threads on one CPU: auto (default; claims a CPU no other "
                          "v2sync process holds), all (no pinning) or a CPU number; "
                          "default from $V2SYNC_CPU")
    run.add_argument("--metrics", default=None, metavar="HOST:PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics (overrides "
                          "the config's metrics.listen)")
    test = sub.add_parser("test", help="check a config: 'Configuration OK.' or every error")
    _add_config_args(test)
    sub.add_parser("version", help="print versions")
    sub.add_parser("uuid", help="print a random UUID")
    from v2sync.infra.control import api as api_command
    api_command.add_parser(sub)
    top = sub.add_parser("top", help="a live dashboard of a v2sync or v2ray from its API")
    top.add_argument("--server", "-s", default="127.0.0.1:10085", metavar="HOST:PORT",
                     help="the API's address (default 127.0.0.1:10085)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--iterations", type=int, default=0,
                     help="stop after N refreshes (default 0: until Ctrl-C or q)")
    return parser


def _v2ray_style(argv: List[str]) -> List[str]:
    """Map ``v2sync -config x`` / ``-test`` / ``-version`` onto the subcommands."""
    if not argv:
        return ["run"]
    if argv[0] in ("-version", "--version"):
        return ["version"]
    if argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        rest = [a for a in argv if a != "-test"]
        return (["test"] if "-test" in argv else ["run"]) + rest
    return argv


# --------------------------------------------------------------------------- output

def _silence_stdout() -> None:
    """Stdout's reader is gone: send the rest of the output, and the flush at exit, to
    /dev/null, so no BrokenPipeError escapes and the exit code stays the command's (the
    Python docs' "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        sys.stdout = open(os.devnull, "w")  # no descriptor to redirect (an in-memory stream)


def _say(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except (OSError, ValueError):
        pass  # stdout closed or gone some other way: nothing is left to say


def _escape_unencodable() -> None:
    # A config may hold text the terminal cannot encode (U+FFFD on an ASCII locale): escape it.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


class _QuietOnClosedStdout:
    """Mixed into a logging handler that writes to stdout: a closed stdout silences it."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            _silence_stdout()
            return
        super().handleError(record)  # type: ignore[misc]


class _StdoutHandler(_QuietOnClosedStdout, logging.StreamHandler):
    def __init__(self) -> None:
        super().__init__(sys.stdout)


def rich_handler(kind: str, console=None) -> logging.Handler:
    """Rich's handler shows the time (and, for the error log, the level) in its own columns,
    so its formatter adds only the message: one time and one level per line."""
    from rich.logging import RichHandler

    from v2sync.app.log.setup import DATE_FORMAT, MESSAGE_FORMAT, V2RayFormatter

    class _QuietRichHandler(_QuietOnClosedStdout, RichHandler):
        pass

    handler = _QuietRichHandler(console=console, show_path=False, show_level=kind == "error",
                                markup=False, log_time_format=DATE_FORMAT,
                                omit_repeated_times=False)  # every line has its time, as v2ray's
    handler.setFormatter(V2RayFormatter(MESSAGE_FORMAT))
    return handler


def _console_handler(kind: str) -> logging.Handler:
    """Rich on a terminal; else a plain handler, which app.log gives the v2ray format."""
    if sys.stdout.isatty():
        return rich_handler(kind)
    return _StdoutHandler()


def _log_load_warnings() -> None:
    """Warnings found while loading (unknown keys, ...) go to stdout, v2ray-like."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s",
                        handlers=[_StdoutHandler()])


def _load(args):
    from dataclasses import replace

    from v2sync.common.net import parse_host_port
    from v2sync.infra.conf.builder import load_config, load_default
    from v2sync.infra.conf.model import MetricsConfig

    config = load_config(args.config, args.confdir) if args.config or args.confdir \
        else load_default()
    if getattr(args, "metrics", None):
        config = replace(config, metrics=MetricsConfig(*parse_host_port(args.metrics,
                                                                       "--metrics")))
    return config


def _print_config_errors(err) -> int:
    from v2sync.infra.conf.validate import capped

    _say("v2sync: failed to load config:")
    errors = getattr(err, "errors", None) or [err]
    for line in capped([e.render() for e in errors]):
        _say("  " + line)
    return EXIT_CONFIG_ERROR


def _load_instance(args):
    """The config and its Instance (built, not started), or the exit code after printing
    why not. Building checks everything ``v2ray -test`` checks."""
    from v2sync.app.log.setup import check_files
    from v2sync.common.errors import ConfigError
    from v2sync.core import Instance

    try:
        config = _load(args)
        instance = Instance(config)
        check_files(config.log)
        return config, instance
    except ConfigError as e:
        return _print_config_errors(e)
    except Exception as e:  # a bug, not the config's fault: one line, not a traceback
        log.debug("loading the config failed", exc_info=True)
        _say(f"v2sync: failed to load config: internal error: {type(e).__name__}: {e}"[:2000])
        return EXIT_CONFIG_ERROR


def cmd_test(args) -> int:
    _log_load_warnings()
    loaded = _load_instance(args)
    if isinstance(loaded, int):
        return loaded
    _say("Configuration OK.")
    return 0


def _cpu_setting(args):
    """``--cpu``, else ``$V2SYNC_CPU``, else auto; ValueError names the bad value."""
    from v2sync.common import affinity

    if args.cpu is not None:
        source, value = "--cpu", args.cpu
    else:
        source, value = f"${affinity.ENV_VAR}", os.environ.get(affinity.ENV_VAR, affinity.AUTO)
    try:
        return affinity.parse_setting(value)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def cmd_run(args) -> int:
    from v2sync.app.log.setup import configure
    from v2sync.common import affinity
    from v2sync.common.errors import ConfigError

    _log_load_warnings()
    try:
        cpu = _cpu_setting(args)
    except ValueError as e:
        _say(f"v2sync: {e}")
        return EXIT_USAGE
    loaded = _load_instance(args)
    if isinstance(loaded, int):
        return loaded
    config, instance = loaded
    try:
        configure(config.log, _console_handler)
    except ConfigError as e:  # a log file gone since the check
        return _print_config_errors(e)
    try:
        claim = affinity.apply(cpu)  # before start: every thread started later inherits it
    except ValueError as e:
        _say(f"v2sync: {e}")
        return EXIT_USAGE
    try:
        return _serve(instance)
    finally:
        if claim is not None:
            claim.close()


def _serve(instance) -> int:
    from v2sync.common.errors import V2SyncError

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        instance.start()
    except V2SyncError as e:
        _say(f"v2sync: failed to start: {e}")
        return EXIT_START_FAILURE
    while not stop.wait(1.0):
        pass
    log.warning("v2sync %s shutting down", __version__)
    instance.close()
    if threading.active_count() > 1:
        _exit_now()
    return 0


def _exit_now() -> None:
    """Exit 0 without the interpreter's teardown. After a close with thousands of busy
    connections some daemon threads may still be ending; tearing the interpreter down
    beside them measured 0.2-0.9 s, and the process's exit ends them anyway. What the
    teardown would have done that matters here is flushing: done first."""
    logging.shutdown()
    _flush_stdout()
    os._exit(0)


def cmd_version(args) -> int:
    import ssl

    import Crypto
    import cryptography
    import OpenSSL
    from cryptography.hazmat.backends.openssl import backend

    _say(f"v2sync {__version__} (V2Ray 4.34 compatible)")
    _say(f"Python {platform.python_version()} ({platform.python_implementation()}, "
          f"{platform.system()}/{platform.machine()})")
    _say(f"crypto: cryptography {cryptography.__version__} on {backend.openssl_version_text()}, "
          f"pycryptodome {Crypto.__version__}")
    _say(f"tls: servers on the ssl module ({ssl.OPENSSL_VERSION}), "
          f"clients on pyOpenSSL {OpenSSL.__version__} (cryptography's OpenSSL)")
    return 0


def cmd_uuid(args) -> int:
    # v2ctl uuid: 16 random bytes, no version bits set (common/uuid/uuid.go New)
    _say(str(uuid.UUID(bytes=os.urandom(16))))
    return 0


def _needs_api_extra(run):
    """``v2sync api``/``top`` without h2 or protobuf: say how to install them (exit 2)."""
    try:
        return run()
    except ImportError as e:
        _say(f"v2sync: this command needs the api extra ({e.name or e}): "
             "pip install 'v2sync[api]'")
        return EXIT_USAGE


def cmd_api(args) -> int:
    from v2sync.infra.control import api

    return _needs_api_extra(lambda: api.run(args, _say))


def cmd_top(args) -> int:
    from v2sync.infra.control import top

    return _needs_api_extra(lambda: top.run(args, _say))


COMMANDS = {"run": cmd_run, "test": cmd_test, "version": cmd_version, "uuid": cmd_uuid,
            "api": cmd_api, "top": cmd_top}


def main(argv: Optional[List[str]] = None) -> int:
    _escape_unencodable()
    args = build_parser().parse_args(_v2ray_style(list(sys.argv[1:] if argv is None else argv)))
    try:
        return COMMANDS[args.command](args)
    finally:
        _flush_stdout()
