"""tools/client_cpu_probe.py builds the pair its ``--protocol`` names (socket-free: the
configs only), and refuses a protocol it does not know."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
import client_cpu_probe  # noqa: E402


@pytest.mark.parametrize("protocol", ["vmess", "vless"])
@pytest.mark.parametrize("stream", ["tls", "ws"])
def test_each_protocol_builds_its_own_pair(protocol: str, stream: str) -> None:
    server, client = client_cpu_probe.PAIRS[protocol](1080, *client_cpu_probe.STREAMS[stream]())
    assert [i["protocol"] for i in server["inbounds"]] == [protocol]
    assert client["outbounds"][0]["protocol"] == protocol
    assert client["outbounds"][0]["streamSettings"]["security"] == "tls"
    assert server["inbounds"][0]["streamSettings"].get("network", "tcp") == (
        "ws" if stream == "ws" else "tcp")


def test_an_unknown_protocol_is_refused() -> None:
    result = subprocess.run([sys.executable, str(TOOLS / "client_cpu_probe.py"),
                             "--protocol", "trojan"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr
