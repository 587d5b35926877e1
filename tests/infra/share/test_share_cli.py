"""``v2sync link import|export`` and ``v2sync run LINK`` as a user runs them: the printed
config passes the real ``v2ray -test`` (and ``v2sync test`` for what v2sync runs), export
reads configs back into links, and bad input ends with exit 23 and the part named, never a
traceback."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from v2sync.infra.conf.loader import read_json
from v2sync.infra.share.links import parse_link

REPO_ROOT = Path(__file__).resolve().parents[3]
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
TIMEOUT = 30

LINKS = {
    "vmess-tcp": f"vmess://{UUID}@203.0.113.7:10086?encryption=aes-128-gcm#plain",
    "vmess-ws-tls": f"vmess://{UUID}@proxy.example:443?type=ws&security=tls&host=cdn.example"
                    "&path=%2Fray&sni=proxy.example&alpn=h2%2Chttp%2F1.1#ws",
    "vmess-http-header": f"vmess://{UUID}@203.0.113.7:80?type=tcp&headerType=http"
                         "&host=a.example%2Cb.example&path=%2Findex.html#hdr",
    "vless-tls": f"vless://{UUID}@proxy.example:443?encryption=none&security=tls&type=tcp#v",
    "vless-ws": f"vless://{UUID}@[2001:db8::1]:443?security=tls&type=ws&path=%2Fv#v6",
    "trojan": "trojan://pass%20word@proxy.example:443?sni=proxy.example#t",
    "ss": "ss://YWVzLTI1Ni1nY206c2VjcmV0@203.0.113.7:8388#s",
    "ss-plain": "ss://chacha20-ietf-poly1305:p%40ss@203.0.113.7:8388#s2",
}


def v2sync(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "v2sync", *args], input=stdin,
                          capture_output=True, timeout=TIMEOUT, cwd=str(REPO_ROOT))


def _text(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


def _import(tmp_path: Path, links: List[str]) -> Path:
    result = v2sync("link", "import", *links)
    assert result.returncode == 0, _text(result)
    path = tmp_path / "client.json"
    path.write_bytes(result.stdout)
    return path


def _v2ray_test(v2ray_bin: str, path: Path) -> None:
    result = subprocess.run([v2ray_bin, "-test", "-config", str(path)], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and "Configuration OK" in result.stdout, result.stdout


@pytest.mark.parametrize("name", sorted(LINKS))
def test_imported_config_passes_v2ray_test(name: str, v2ray_bin: str, tmp_path: Path) -> None:
    path = _import(tmp_path, [LINKS[name]])
    _v2ray_test(v2ray_bin, path)
    config = json.loads(path.read_text())
    assert [i["port"] for i in config["inbounds"]] == [1080, 8080]
    assert {i["listen"] for i in config["inbounds"]} == {"127.0.0.1"}
    assert config["inbounds"][0]["settings"]["udp"] is True
    result = v2sync("test", "-c", str(path))  # every link protocol's outbound exists
    assert result.returncode == 0, _text(result)


def test_several_links_are_a_balancer_v2ray_accepts(v2ray_bin: str, tmp_path: Path) -> None:
    path = _import(tmp_path, [LINKS["vmess-tcp"], LINKS["vmess-ws-tls"],
                              LINKS["vmess-http-header"]])
    _v2ray_test(v2ray_bin, path)
    assert v2sync("test", "-c", str(path)).returncode == 0
    config = json.loads(path.read_text())
    tags = [o["tag"] for o in config["outbounds"]]
    assert tags == ["proxy-1", "proxy-2", "proxy-3"]
    assert config["routing"]["balancers"] == [{"tag": "balancer", "selector": ["proxy-"]}]


def test_export_reads_back_what_import_wrote(tmp_path: Path) -> None:
    links = [LINKS[name] for name in sorted(LINKS)]
    path = _import(tmp_path, links)
    result = v2sync("link", "export", "-c", str(path))
    assert result.returncode == 0, _text(result)
    exported = [line for line in result.stdout.decode().splitlines() if "://" in line]
    originals = [parse_link(text) for text in links]
    back = [parse_link(text) for text in exported]
    # Names become the outbound tags; everything a client dials with survives.
    assert [b.__class__(**{**b.__dict__, "name": ""}) for b in back] == \
        [o.__class__(**{**o.__dict__, "name": "", "sni": o.sni or _sni(o)}) for o in originals]


def _sni(link) -> str:
    # Import fills serverName from the WebSocket host when a TLS link has no sni (as v2rayN).
    return link.host.split(",")[0] if link.security == "tls" else ""


def test_export_a_server_config_needs_host_and_then_gives_each_user_a_link() -> None:
    server = str(REPO_ROOT / "conf" / "vmess-server.json")
    refused = v2sync("link", "export", "-c", server)
    assert refused.returncode == 23
    assert "inbounds[0]: is a server inbound" in _text(refused) and "--host" in _text(refused)
    result = v2sync("link", "export", "-c", server, "--host", "proxy.example")
    assert result.returncode == 0, _text(result)
    links = [parse_link(line) for line in result.stdout.decode().splitlines() if "://" in line]
    config = read_json(server)  # the file has comments
    inbound = config["inbounds"][0]
    assert [(k.address, k.port, k.secret) for k in links] == [
        ("proxy.example", inbound["port"], c["id"]) for c in inbound["settings"]["clients"]]


@pytest.mark.parametrize("example", sorted((REPO_ROOT / "conf").glob("*.json")),
                         ids=lambda p: p.name)
def test_every_conf_example_exports_and_its_links_import(example: Path, v2ray_bin: str,
                                                         tmp_path: Path) -> None:
    result = v2sync("link", "export", "-c", str(example), "--host", "proxy.example")
    assert result.returncode == 0, _text(result)
    links = [line for line in result.stdout.decode().splitlines() if "://" in line]
    if links:
        _v2ray_test(v2ray_bin, _import(tmp_path, links))


def test_qr_draws_each_link() -> None:
    pytest.importorskip("segno")
    result = v2sync("link", "export", "-c", str(REPO_ROOT / "conf" / "vmess-client.json"),
                    "--qr")
    assert result.returncode == 0, _text(result)
    text = result.stdout.decode()
    import segno

    link = next(line for line in text.splitlines() if "://" in line)
    rows = (segno.make(link, error="l").symbol_size()[1] + 1) // 2
    assert sum(1 for line in text.splitlines() if "▀" in line or "▄" in line) >= rows - 8


@pytest.mark.parametrize("args, stdin, part", [
    (["link", "import", "vless://nope@a.example:1"], b"", "links[0].id"),
    (["link", "import", "ss://YWVzLTEyOC1nY206dGVzdA@h.example:1?plugin=obfs-local"], b"",
     "links[0].plugin"),
    (["link", "import", "--subscription", "-"], b"\xff\xfe\x00garbage\n", "- line 1"),
    (["link", "import", "--subscription", "/nonexistent/sub"], b"", "/nonexistent/sub"),
    (["link", "import", "--subscription", "-"], base64.b64encode(b"vmess://e30"), "- line 1.port"),
    (["link", "import"], b"", "no link given"),
    (["run", "vmess://x", "-c", "conf/config.json"], b"", "not both"),
    (["run", "-c", "conf/config.json", "--socks-port", "1090"], b"", "go with links"),
    (["run", "trojan://@h.example:443"], b"", "links[0].password"),
    (["trojan://@h.example:443"], b"", "links[0].password"),  # v2sync LINK: run LINK
    (["link", "export", "-c", "/nonexistent.json"], b"", "/nonexistent.json"),
    (["link", "export"], b"", "needs a config"),
])
def test_bad_input_exits_23_naming_the_part(args: List[str], stdin: bytes, part: str) -> None:
    result = v2sync(*args, stdin=stdin)
    assert result.returncode == 23, _text(result)
    assert part in _text(result)
    assert "Traceback" not in _text(result)


def test_a_subscription_line_v2sync_cannot_use_is_skipped_and_said(tmp_path: Path) -> None:
    sub = tmp_path / "sub.txt"
    sub.write_text("grpc-only://x\n" + LINKS["trojan"] + "\n")
    result = v2sync("link", "import", "--subscription", str(sub))
    assert result.returncode == 0, _text(result)
    assert f"v2sync: skipped: {sub} line 1: " in result.stderr.decode()
    assert json.loads(result.stdout)["outbounds"][0]["protocol"] == "trojan"


def test_export_reaches_a_local_inbound_through_the_fallback_that_leads_to_it(tmp_path: Path
                                                                            ) -> None:
    uuid = "b831381d-6324-4d53-ad4f-8cda48b30811"
    vless = {"decryption": "none", "clients": [{"id": uuid, "email": "a@x"}]}
    config = {"inbounds": [
        {"tag": "front", "protocol": "vless", "port": 443,
         "settings": {**vless, "fallbacks": [{"path": "/ws", "dest": 10444, "xver": 1}]},
         "streamSettings": {"security": "tls", "tlsSettings": {"alpn": ["h2", "http/1.1"]}}},
        {"tag": "inner", "protocol": "vless", "listen": "127.0.0.1", "port": 10444,
         "settings": {"decryption": "none", "clients": [{"id": uuid}]},
         "streamSettings": {"network": "ws", "wsSettings": {"path": "/ws"}}},
        {"tag": "local", "protocol": "trojan", "listen": "127.0.0.1", "port": 10445,
         "settings": {"clients": [{"password": "pw"}]}},
        {"tag": "sock", "protocol": "trojan", "listen": "/run/t.sock",
         "settings": {"clients": [{"password": "pw"}]}}]}
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    result = v2sync("link", "export", "-c", str(path), "--host", "srv.example")
    assert result.returncode == 0, _text(result)
    links = [parse_link(line) for line in result.stdout.decode().splitlines()
             if "://" in line]
    inner = links[1]
    assert (inner.port, inner.security, inner.network, inner.path, inner.alpn) == (
        443, "tls", "ws", "/ws", ())  # a WebSocket client offers http/1.1 alone
    assert [link.port for link in links] == [443, 443, 10445]  # no link to a unix socket
    notes = result.stderr.decode()
    assert "inbounds[2]: listens on 127.0.0.1 and no fallback leads to it" in notes
    assert "inbounds[3]: listens on /run/t.sock and no fallback leads to it: no link" in notes


def test_a_bad_port_option_is_a_usage_error() -> None:
    result = v2sync("run", "--http-port", "0", LINKS["trojan"])
    assert result.returncode == 2 and "'0' is not a port (1-65535)" in _text(result)


def test_ignored_link_fields_are_said(tmp_path: Path) -> None:
    result = v2sync("link", "import", LINKS["trojan"].replace("#", "&fp=chrome&allowInsecure=1#"))
    assert result.returncode == 0
    assert "ignored: allowInsecure, fp" in result.stderr.decode()
