"""The ``v2sync`` command line (v2ray ``main/main.go`` + ``v2ctl uuid``).

    v2sync run [-c FILE]... [--confdir DIR]   # no -c: ./config.json, else the embedded default
    v2sync run LINK... | --subscription FILE   # a local SOCKS5 + HTTP proxy to those servers
    v2sync test -c FILE                        # "Configuration OK." or every error, exit 23
    v2sync link import LINK... | export -c FILE [--host NAME] [--qr]
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
import socket
import stat
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
    parser.add_argument("--format", "-format", dest="format", default="json",
                        type=_config_format, metavar="json",
                        help="the config's format: json (v2ray's protobuf is not read)")


def _config_format(text: str) -> str:
    if text.lower() != "json":
        raise argparse.ArgumentTypeError(f"config format {text!r} is not supported by v2sync "
                                         "(supported: json)")
    return "json"


def _add_link_args(parser: argparse.ArgumentParser) -> None:
    from v2sync.infra.share.client import DEFAULT_HTTP_PORT, DEFAULT_SOCKS_PORT

    parser.add_argument("links", nargs="*", metavar="LINK",
                        help="vmess://, vless://, trojan:// or ss:// (several: a balancer)")
    parser.add_argument("--subscription", metavar="FILE|-",
                        help="a subscription: links one a line, or their base64 ('-': stdin)")
    parser.add_argument("--socks-port", type=_port, metavar="N",
                        help=f"local SOCKS5 port on 127.0.0.1 (default {DEFAULT_SOCKS_PORT})")
    parser.add_argument("--http-port", type=_port, metavar="N",
                        help=f"local HTTP proxy port on 127.0.0.1 (default {DEFAULT_HTTP_PORT})")


def _port(text: str) -> int:
    from v2sync.common.net import decimal

    port = decimal(text)
    if port is None or not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def _add_link_command(sub) -> None:
    link = sub.add_parser("link", help="share links: import to a config, export from one")
    actions = link.add_subparsers(dest="link_command")
    actions.required = True
    imp = actions.add_parser("import", help="print a 4.34 client config for the links")
    _add_link_args(imp)
    exp = actions.add_parser("export", help="print the links of a config's servers and users")
    _add_config_args(exp)
    exp.add_argument("--host", metavar="NAME",
                     help="the address clients dial, for a server config's inbounds")
    exp.add_argument("--qr", action="store_true", help="draw each link as a QR code too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="v2sync", description="A V2Ray-compatible proxy in Python.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run with the given config (default: ./config.json, else the embedded one), "
                                     "or as a local proxy to the servers of share links")
    _add_config_args(run)
    _add_link_args(run)
    run.add_argument("--cpu", "-cpu", dest="cpu", default=None, metavar="auto|all|N",
                     help="keep all threads on one CPU: auto (default; claims a CPU no other "
                          "v2sync process holds), all (no pinning) or a CPU number; "
                          "default from $V2SYNC_CPU")
    run.add_argument("--metrics", default=None, metavar="HOST:PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics (overrides "
                          "the config's metrics.listen)")
    test = sub.add_parser("test", help="check a config: 'Configuration OK.' or every error")
    _add_config_args(test)
    _add_link_command(sub)
    sub.add_parser("version", help="print versions")
    sub.add_parser("uuid", help="print a random UUID")
    from v2sync.infra.control import api as api_command
    api_command.add_parser(sub)
    top = sub.add_parser("top", help="a live dashboard of a v2sync or v2ray from its API")
    top.add_argument("--server", "-s", default="127.0.0.1:10085", metavar="HOST:PORT",
                     help="the API's address (default 127.0.0.1:10085)")
    top.add_argument("--interval", type=api_command.seconds, default=1.0,
                     help="seconds between refreshes")
    top.add_argument("--iterations", type=int, default=0,
                     help="stop after N refreshes (default 0: until Ctrl-C or q)")
    return parser


TEST_FLAGS = ("-test", "--test")  # Go's flag package takes either
VERSION_FLAGS = ("-version", "--version")
HELP_FLAGS = ("-h", "--help", "-help", "--h")
# strconv.ParseBool, which Go's flag package reads ``-test=VALUE`` with
GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False,
            "False": False}


def _v2ray_style(argv: List[str]) -> List[str]:
    """Map ``v2sync -config x`` / ``-test`` / ``-version`` onto the subcommands."""
    if not argv:
        return ["run"]
    if "://" in argv[0]:  # ``v2sync vmess://...``: the one-command client
        return ["run"] + argv
    if not argv[0].startswith("-"):
        return argv
    if set(argv) & set(HELP_FLAGS):  # Go's flag package: wherever it comes among the flags
        return ["--help"]
    argv = _go_bools(argv)
    if set(argv) & set(VERSION_FLAGS):
        return ["version"]  # main.go prints the version first, whatever else is asked
    rest = [a for a in argv if a not in TEST_FLAGS]
    return (["test"] if set(argv) & set(TEST_FLAGS) else ["run"]) + rest


def _go_bools(argv: List[str]) -> List[str]:
    """``-test=true`` as ``-test``, ``-test=false`` as nothing, as Go's flag package reads
    a boolean flag's value; any other value is its usage error (exit 2)."""
    out = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if not equals or name not in TEST_FLAGS + VERSION_FLAGS:
            out.append(arg)
        elif value not in GO_BOOLS:
            build_parser().error(f'invalid boolean value "{value}" for {name}: parse error')
        elif GO_BOOLS[value]:
            out.append(name)
    return out


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


def _complain(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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
    from v2sync.infra.conf.builder import config_from_dict
    from v2sync.infra.conf.model import MetricsConfig

    if _has_links(args):
        if args.config or args.confdir:
            raise _usage_error("give links or a config file (-c/--confdir), not both")
        config = config_from_dict(_client_config(args), LINKS_CONFIG_NAME)
    elif getattr(args, "socks_port", None) or getattr(args, "http_port", None):
        raise _usage_error("--socks-port and --http-port go with links; a config file "
                           "names its own ports")
    else:
        config = _load_files(args)
    if getattr(args, "metrics", None):
        config = replace(config, metrics=MetricsConfig(*parse_host_port(args.metrics,
                                                                       "--metrics")))
    return config


LINKS_CONFIG_NAME = "<links>"
# main.go getConfigFilePath's places, after -config and -confdir: the confdir and config file
# the environment names (platform.GetConfDirPath, GetConfigurationPath), and the working
# directory's config.json.
CONFDIR_ENV = ("v2ray.location.confdir", "V2RAY_LOCATION_CONFDIR")
CONFIG_ENV = ("v2ray.location.config", "V2RAY_LOCATION_CONFIG")
DEFAULT_FILE = "config.json"


def _load_files(args):
    """The config files as 4.34's main.go finds them. With none anywhere, standard input is
    read, as 4.34 reads it: by ``test`` unless it is a terminal, by ``run`` when it is a pipe,
    file or socket (``cat config.json | v2sync``). Otherwise ``run`` takes the embedded
    default: a terminal, and the /dev/null a service or daemon gets, hold no config."""
    from v2sync.infra.conf.builder import load_config, load_default

    confdirs = args.confdir or [d for d in (_env_value(CONFDIR_ENV),) if d and os.path.isdir(d)]
    if confdirs:
        log.info("Using confdir: %s", ", ".join(confdirs))
    if args.config or confdirs:
        return load_config(args.config, confdirs)
    found = _default_file()
    if found:
        log.info("Using default config: %s", found)
        return load_config([found])
    piped = _stdin_holds_config() if args.command == "run" else not sys.stdin.isatty()
    if piped:
        # Said at Warning, as 4.34 always prints it: a pipe that never ends waits here.
        log.warning("Using config from STDIN")
        args.stdin_config = True
        return load_config(["stdin:"])
    return load_default()


def _stdin_holds_config() -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # closed, or no descriptor at all
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def _env_value(names) -> str:
    return next((os.environ[name] for name in names if os.environ.get(name)), "")


def _default_file() -> str:
    """./config.json, else config.json in the directory the environment names."""
    for directory in (os.getcwd(), _env_value(CONFIG_ENV)):
        path = os.path.join(directory, DEFAULT_FILE) if directory else ""
        if path and os.path.isfile(path):
            return path
    return ""


def _has_links(args) -> bool:
    return bool(getattr(args, "links", None) or getattr(args, "subscription", None))


def _usage_error(message: str):
    from v2sync.common.errors import ConfigError

    return ConfigError(message, expected="see v2sync run --help")


def _client_config(args) -> dict:
    """The config for ``run LINK...`` / ``link import``; says which link fields it ignored."""
    from v2sync.infra.share.client import DEFAULT_HTTP_PORT, DEFAULT_SOCKS_PORT, client_config
    from v2sync.infra.share.source import ignored_fields, read_links

    skipped: list = []
    links = read_links(args.links, args.subscription, skipped=skipped)
    for error in skipped:
        print(f"v2sync: skipped: {error.render()}", file=sys.stderr)
    for line in ignored_fields(links):
        print(f"v2sync: {line}", file=sys.stderr)
    return client_config(links, socks_port=args.socks_port or DEFAULT_SOCKS_PORT,
                         http_port=args.http_port or DEFAULT_HTTP_PORT)


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

    # A SIGHUP while the config loads (``systemctl reload`` right after start) would kill
    # the process, and systemd counts that death as a clean exit: it becomes a reload
    # once serving.
    signals = _Signals()
    signal.signal(signal.SIGHUP, signals.on_reload)
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
    from v2sync.common import allocator
    allocator.tune()  # bulk buffers reused, not faulted in afresh: see there
    from v2sync.transport.internet.tls import quiet_server_name_errors
    quiet_server_name_errors()  # a non-ASCII SNI is a log line, not a traceback on stderr
    try:
        claim = affinity.apply(cpu)  # before start: every thread started later inherits it
    except ValueError as e:
        _say(f"v2sync: {e}")
        return EXIT_USAGE
    try:
        return _serve(instance, args, signals)
    finally:
        if claim is not None:
            claim.close()


class _Signals:
    """The flags SIGINT/SIGTERM (``stop``) and SIGHUP (``reload``) raise; ``wake`` ends
    the serving loop's wait."""

    def __init__(self) -> None:
        self.stop, self.reload, self.wake = threading.Event(), threading.Event(), threading.Event()

    def on_reload(self, *_: object) -> None:
        _raise_flag(self.reload, self.wake)

    def on_stop(self, *_: object) -> None:
        _raise_flag(self.stop, self.wake)


def _serve(instance, args, signals: _Signals) -> int:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the config (``v2sync.reload``)."""
    from v2sync.common import heap
    from v2sync.common.errors import V2SyncError

    stop, reload, wake = signals.stop, signals.reload, signals.wake
    signal.signal(signal.SIGINT, signals.on_stop)
    signal.signal(signal.SIGTERM, signals.on_stop)
    try:
        instance.start()
    except V2SyncError as e:
        _say(f"v2sync: failed to start: {e}")
        return EXIT_START_FAILURE
    except Exception as e:  # a bug: one clear line and the start failure's exit code
        _say(f"v2sync: failed to start: internal error: {type(e).__name__}: {e}")
        return EXIT_START_FAILURE
    _notify_systemd(b"READY=1")
    heap.settle()
    retiring: List[threading.Thread] = []
    while not stop.is_set():
        wake.wait(1.0)
        wake.clear()
        if reload.is_set() and not stop.is_set():
            reload.clear()
            instance = _reload(instance, args, stop, retiring)
            if instance is None:
                return EXIT_START_FAILURE
            heap.refreeze()  # the new Instance's objects join the frozen ones
        if any(not thread.is_alive() for thread in retiring):
            retiring[:] = [thread for thread in retiring if thread.is_alive()]
            heap.refreeze()  # a retired Instance is gone: collect what was frozen of it
    log.warning("v2sync %s shutting down", __version__)
    instance.close()  # the retired ones close at the same time, in their own threads
    for thread in retiring:
        thread.join(RETIRED_JOIN)
    if threading.active_count() > 1:
        _exit_now()
    return 0


def _notify_systemd(state: bytes) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (``Type=notify``
    units); nothing when it is unset, and a failure only costs systemd's timeout."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state, target)
    except OSError as e:
        log.warning("cannot tell systemd %r: %s", state, e)


def _raise_flag(flag: threading.Event, wake: threading.Event) -> None:
    flag.set()
    wake.set()


# A retired Instance closes with the same grace as the current one, in parallel.
RETIRED_JOIN = 3.0


def _reload(current, args, stop: threading.Event, retiring: List[threading.Thread]):
    from v2sync.app.log.setup import configure
    from v2sync.reload import reload

    if _reads_stdin(args):
        # Read once, and gone: a reload read the terminal again, blocking the main thread
        # (SIGTERM then went unheard), or found a spent pipe, "invalid JSON" (found by a
        # review).
        log.error("reload refused, still serving the previous config: it was read from "
                  "standard input, which cannot be read again; give a file to reload")
        return current
    return reload(current, lambda: _load(args),
                  lambda config: configure(config.log, _console_handler), stop, retiring)


def _reads_stdin(args) -> bool:
    names = list(getattr(args, "config", None) or ())
    return (getattr(args, "stdin_config", False) or "-" in names or "stdin:" in names
            or getattr(args, "subscription", None) == "-")


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

    return _needs_api_extra(lambda: api.run(args, _say, _complain))


def cmd_top(args) -> int:
    from v2sync.infra.control import top

    return _needs_api_extra(lambda: top.run(args, _say))


def cmd_link(args) -> int:
    import json

    from v2sync.common.errors import ConfigError

    try:
        if args.link_command == "import":
            _say(json.dumps(_client_config(args), indent=2, ensure_ascii=False))
            return 0
        return _export_links(args)
    except ConfigError as e:
        return _print_config_errors(e)


def _export_links(args) -> int:
    from v2sync.infra.conf.loader import expand_confdirs, read_json
    from v2sync.infra.share.links import format_link
    from v2sync.infra.share.outbounds import from_config

    names = [*args.config, *expand_confdirs(args.confdir)]
    if not names:
        raise _usage_error("link export needs a config: -c FILE or --confdir DIR")
    links = []
    notes: list = []
    for name in names:
        links += from_config(read_json(name), name, args.host, notes)
    for line in notes:
        print(f"v2sync: {line}", file=sys.stderr)
    for link in links:
        text = format_link(link)
        _say(f"# {link.name}" if link.name else "#")
        _say(text)
        if args.qr:
            _say(_qr_text(text))
    if not links:
        _say("# no VMess, VLESS, Trojan or Shadowsocks outbound (or inbound, with --host)")
    return 0


def _qr_text(text: str) -> str:
    from v2sync.infra.share.qr import draw

    drawing = io.StringIO()
    draw(text, drawing)
    return drawing.getvalue().rstrip("\n")


COMMANDS = {"run": cmd_run, "test": cmd_test, "version": cmd_version, "uuid": cmd_uuid,
            "link": cmd_link, "api": cmd_api, "top": cmd_top}


def main(argv: Optional[List[str]] = None) -> int:
    _escape_unencodable()
    args = build_parser().parse_args(_v2ray_style(list(sys.argv[1:] if argv is None else argv)))
    try:
        return COMMANDS[args.command](args)
    finally:
        _flush_stdout()
