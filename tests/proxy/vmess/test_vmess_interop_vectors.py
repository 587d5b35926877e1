"""Known-answer tests against bytes exchanged with the real v2ray 4.34 binary (tests/vectors/).

* ``vmess_v2ray_client_capture.json``: requests the v2ray *client* sent (AEAD with alterId 0,
  legacy with alterId 4; gcm, chacha20-poly1305, none). v2sync's server side must decode the
  header at the recorded time and the first body chunk and end-of-stream chunk.
* ``vmess_v2ray_server_capture.json``: requests made by v2sync's ``ClientSession`` (seeded, so
  reproducible) and the responses the v2ray *server* returned through an echo server.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, List

import pytest

from v2sync.common.net import Address
from v2sync.proxy.vmess.encoding import ClientSession, Command, RequestHeader
from v2sync.proxy.vmess.ids import Security, VMessUser
from v2sync.proxy.vmess.validator import RequestHeaderDecoder, SessionHistory, UserTable

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
CLIENT = json.loads((VECTORS / "vmess_v2ray_client_capture.json").read_text())
SERVER = json.loads((VECTORS / "vmess_v2ray_server_capture.json").read_text())
SECURITY_BY_NAME = {"aes-128-gcm": Security.AES128_GCM,
                    "chacha20-poly1305": Security.CHACHA20_POLY1305, "none": Security.NONE}


def case_id(case: Dict[str, Any]) -> str:
    return f"alter{case['alter_id']}-{case['security']}-{case.get('command', 'TCP')}"


@pytest.mark.parametrize("case", CLIENT["cases"], ids=case_id)
def test_v2ray_client_request_decodes(case: Dict[str, Any]) -> None:
    now = case["captured_at"]
    clock = lambda: now  # noqa: E731 - the capture's time, so the AuthID/auth is fresh
    table = UserTable(clock=clock)
    user = VMessUser.from_text(CLIENT["uuid"], alter_id=case["alter_id"])
    table.add(user)
    wire = bytes.fromhex(case["request_hex"])
    decoder = RequestHeaderDecoder(table, SessionHistory(clock=clock))
    for n in range(0, 60):  # partial headers only ask for more (and have no side effects)
        assert decoder.decode(wire[:n]) is None
    session, consumed = decoder.decode(wire)
    header = session.header
    security = SECURITY_BY_NAME[case["security"]]
    assert session.is_aead is (case["alter_id"] == 0)
    assert (header.command, header.security, str(header.address), header.port) == \
        (Command.TCP, security, "example.com", 80)
    assert header.option == (0x05 if security is Security.NONE else 0x0D)  # 4.34 client options
    reader = session.request_body_reader()
    body: List[bytes] = []
    for byte in wire[consumed:]:
        body += reader.feed(bytes([byte]))
    assert b"".join(body) == bytes.fromhex(CLIENT["payload_hex"])
    assert reader.eof and reader.unused == b""


def test_v2ray_client_request_is_refused_at_another_time() -> None:
    case = CLIENT["cases"][0]
    later = case["captured_at"] + 1000
    table = UserTable(clock=lambda: later)
    table.add(VMessUser.from_text(CLIENT["uuid"]))
    from v2sync.proxy.vmess.validator import DrainRequired, decode_request_header
    with pytest.raises(DrainRequired):
        decode_request_header(bytes.fromhex(case["request_hex"]), table,
                              SessionHistory(clock=lambda: later))


@pytest.mark.parametrize("case", SERVER["cases"], ids=case_id)
def test_v2ray_server_response_decodes(case: Dict[str, Any]) -> None:
    user = VMessUser.from_text(SERVER["uuid"], alter_id=case["alter_id"])
    client = ClientSession(user, random_bytes=random.Random(case["seed"]).randbytes)
    header = RequestHeader(Command[case["command"]], Security[case["security"]], case["option"],
                           Address.parse("127.0.0.1"), case["target_port"])
    request = client.encode_request_header(header, case["now"])
    # The request v2ray accepted is reproduced byte for byte (body padding aside).
    assert bytes.fromhex(case["request_hex"]).startswith(request)
    response = bytes.fromhex(case["response_hex"])
    decoded = None
    for n in range(len(response) + 1):
        decoded = client.decode_response_header(response[:n])
        if decoded is not None:
            break
    assert decoded is not None
    response_header, consumed = decoded
    assert response_header.response_auth == client.response_auth and response_header.command is None
    reader = client.response_body_reader(header)
    chunks = reader.feed(response[consumed:])
    payload = bytes.fromhex(SERVER["payload_hex"])
    if header.is_packet:
        assert chunks == [payload]  # one echoed datagram
    else:
        assert b"".join(chunks) == payload and reader.eof  # echo closed: v2ray sent EOS
