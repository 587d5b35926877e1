"""Where the config comes from, as 4.34's main.go looks for it, run against v2ray 4.34 and
``python -m v2sync`` on the same files: ``-confdir`` or the environment's confdir after the
``-config`` files, the working directory's config.json, the environment's config.json, and
stdin. Also the v2ray flags v2sync takes (``-format json``, ``--test``), and a listen address
of 0.0.0.0 serving IPv6 as Go's does."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from support.peers import free_port
from support.procs import REPO_ROOT, V2RayProcess, V2SyncProcess, find_v2ray

TIMEOUT = 30.0
POLL = 0.05
OK_EXIT = 0


def good(port: int) -> Dict[str, Any]:
    return {"inbounds": [{"tag": "in", "protocol": "socks", "listen": "127.0.0.1",
                          "port": port, "settings": {}}],
            "outbounds": [{"protocol": "freedom"}]}


BAD = {"inbounds": [{"tag": "in", "protocol": "socks", "listen": "127.0.0.1", "port": 70000}]}


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def run(command: List[str], cwd: Path, env: Optional[Dict[str, str]] = None,
        stdin: bytes = b"") -> Tuple[int, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("V2RAY_", "v2ray."))}
    full_env.update(PYTHONPATH=str(REPO_ROOT), V2SYNC_CPU="all", **(env or {}))
    done = subprocess.run(command, cwd=cwd, env=full_env, input=stdin, capture_output=True,
                          timeout=TIMEOUT)
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def both_test(args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None,
              stdin: bytes = b"") -> Tuple[bool, bool]:
    """(v2ray -test passed, v2sync test passed) on the same arguments."""
    v2ray = run([find_v2ray() or "v2ray", "-test", *args], cwd, env, stdin)
    ours = run([sys.executable, "-m", "v2sync", "-test", *args], cwd, env, stdin)
    return "Configuration OK" in v2ray[1], ours[0] == OK_EXIT


@pytest.mark.parametrize("place", ["working-directory", "environment"])
def test_config_json_is_found_as_4_34_finds_it(place: str, tmp_path: Path, v2ray_bin: str) -> None:
    holder = tmp_path if place == "working-directory" else tmp_path / "etc"
    env = {"V2RAY_LOCATION_CONFIG": str(holder)} if place == "environment" else {}
    write(holder / "config.json", BAD)
    assert both_test([], tmp_path, env) == (False, False)  # read, and refused by both
    write(holder / "config.json", good(free_port()))
    assert both_test([], tmp_path, env) == (True, True)


def test_piped_stdin_is_read_when_nothing_else_is_given(tmp_path: Path, v2ray_bin: str) -> None:
    assert both_test([], tmp_path, stdin=json.dumps(BAD).encode()) == (False, False)
    assert both_test([], tmp_path, stdin=json.dumps(good(free_port())).encode()) == (True, True)


def _serves_piped_config(command: List[str], cwd: Path) -> bool:
    """Start ``command`` with a good config piped in and no file anywhere: does it listen
    where that config says?"""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("V2RAY_", "v2ray."))}
    env.update(PYTHONPATH=str(REPO_ROOT), V2SYNC_CPU="all")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               stdin=subprocess.PIPE)
    try:
        assert process.stdin is not None
        process.stdin.write(json.dumps(good(port)).encode())
        process.stdin.close()
        return _listening_within(port, process)
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def _listening_within(port: int, process: "subprocess.Popen[bytes]") -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            time.sleep(POLL)
    return False


def test_a_piped_config_is_run_as_4_34_runs_it(tmp_path: Path, v2ray_bin: str) -> None:
    """``cat config.json | v2ray`` runs that config; so does ``| v2sync`` (and ``| v2sync
    run``). With /dev/null as its input (a service's), v2sync takes its embedded default
    (``scenarios/embedded_default_check.py``), where 4.34 fails on the empty config."""
    assert _serves_piped_config([v2ray_bin], tmp_path)
    for args in ([], ["run"]):
        assert _serves_piped_config([sys.executable, "-m", "v2sync", *args], tmp_path)


def test_the_environments_confdir_follows_the_config_files(tmp_path: Path,
                                                           v2ray_bin: str) -> None:
    main = write(tmp_path / "main.json", good(free_port()))
    write(tmp_path / "confdir" / "later.json", {"inbounds": [BAD["inbounds"][0]]})
    env = {"V2RAY_LOCATION_CONFDIR": str(tmp_path / "confdir")}
    assert both_test(["-config", str(main)], tmp_path, env) == (False, False)
    assert both_test(["-config", str(main)], tmp_path) == (True, True)


def test_v2ray_flags_v2sync_takes(tmp_path: Path, v2ray_bin: str) -> None:
    config = str(write(tmp_path / "c.json", good(free_port())))
    assert both_test(["-format", "json", "-config", config], tmp_path) == (True, True)
    code, out = run([sys.executable, "-m", "v2sync", "--test", "-config", config], tmp_path)
    assert code == OK_EXIT and "Configuration OK." in out
    code, out = run([sys.executable, "-m", "v2sync", "-test", "-format", "pb", "-config",
                     config], tmp_path)
    assert code != OK_EXIT and "not supported by v2sync" in out


@pytest.mark.parametrize("flags", [["-test=true"], ["-test=1"], ["--test=T"],
                                   ["-test=false", "-test"], ["-test=x"], ["-version=true"],
                                   ["-version=false", "-test"], ["-help"],
                                   ["-test", "-help"], ["-format", "json", "--h"]])
def test_go_flag_forms_as_4_34_reads_them(flags: List[str], tmp_path: Path,
                                          v2ray_bin: str) -> None:
    """A boolean flag's ``=VALUE`` (strconv.ParseBool), and ``-help``: the same exit code
    from both, and a test that passes or a usage alike (``-version=true`` would run the
    config, and time out, were it not read as ``-version``)."""
    config = str(write(tmp_path / "c.json", good(free_port())))
    results = {}
    for name, command in (("v2ray", [v2ray_bin]), ("v2sync", [sys.executable, "-m", "v2sync"])):
        code, out = run([*command, *flags, "-config", config], tmp_path)
        results[name] = (code, "Configuration OK." in out.splitlines(), "usage" in out.lower())
    assert results["v2sync"] == results["v2ray"]


def test_a_url_is_refused_by_name(tmp_path: Path) -> None:
    code, out = run([sys.executable, "-m", "v2sync", "test", "-c", "https://example.test/c.json"],
                    tmp_path)
    assert code == 23 and "from a URL is not supported" in out


def test_an_allocation_without_strategy_is_refused_as_4_34_refuses_it(tmp_path: Path,
                                                                     v2ray_bin: str) -> None:
    doc = good(free_port())
    doc["inbounds"][0]["allocate"] = {}
    assert both_test(["-config", str(write(tmp_path / "c.json", doc))], tmp_path) == (False, False)


def test_what_a_later_file_replaces_may_be_unsupported(tmp_path: Path, v2ray_bin: str) -> None:
    """4.34 builds only the merged config: a kcp outbound or an mtproto inbound that a later
    file replaces by tag is never built. v2sync refused each file's unsupported parts before
    merging; what the merge keeps is still refused."""
    port = free_port()
    base = good(port)
    base["inbounds"][0] = {"tag": "in", "protocol": "mtproto", "listen": "127.0.0.1",
                           "port": port, "settings": {"users": [
                               {"secret": "b0cbcef5a486d9636472ac27f8e11a9d"}]}}
    base["outbounds"].append({"tag": "o2", "protocol": "freedom",
                              "streamSettings": {"network": "kcp"}})
    a = str(write(tmp_path / "a.json", base))
    b = str(write(tmp_path / "b.json", {"outbounds": [{"tag": "o2", "protocol": "blackhole"}]}))
    c = str(write(tmp_path / "c.json", {"inbounds": [good(port)["inbounds"][0]]}))
    assert both_test(["-config", a, "-config", b, "-config", c], tmp_path) == (True, True)
    assert both_test(["-config", a, "-config", b], tmp_path) == (True, False)  # mtproto kept
    assert both_test(["-config", a, "-config", c], tmp_path) == (True, False)  # kcp kept


def test_listen_0_0_0_0_takes_ipv6_too_as_4_34(v2ray_bin: str) -> None:
    """Go listens on [::] for 0.0.0.0 (dual-stack): a client of ::1 is served by both."""
    for process_class in (V2SyncProcess, V2RayProcess):
        port = free_port()
        config = good(port)
        config["inbounds"][0]["listen"] = "0.0.0.0"
        with process_class(config), \
                socket.create_connection(("::1", port), timeout=TIMEOUT) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendall(b"\x05\x01\x00")
            assert sock.recv(2) == b"\x05\x00", process_class.__name__
