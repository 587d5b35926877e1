"""policy ``bufferSize`` (KiB) to a link's pipe limit, as 4.34 maps it: infra/conf/policy.go
multiplies by 1024 and turns a negative value into -1 (no limit); the inbound puts the
level's Buffer policy in the context and app/dispatcher/default.go builds both pipes of the
link with it (transport/pipe.OptionsFromContext). No sockets."""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import pytest
from support.outbounds import OneOutbound

from v2sync.app.dispatcher.default import DefaultDispatcher
from v2sync.app.log.access import AccessLog
from v2sync.app.policy.manager import UNLIMITED_BUFFER_CAP, PolicyManager
from v2sync.common.net import Address, Destination
from v2sync.common.session import Session
from v2sync.common.task import ThreadGroup
from v2sync.infra.conf.builder import config_from_dict
from v2sync.transport.link import Link, new_link_pair

KIB = 1024
WAIT = 5.0


def manager(level0: Optional[Dict[str, Any]] = None, **levels: Dict[str, Any]) -> PolicyManager:
    raw: Dict[str, Any] = {"outbounds": [{"protocol": "freedom"}]}
    if level0 is not None or levels:
        raw["policy"] = {"levels": {"0": level0 or {}, **levels}}
    return PolicyManager(config_from_dict(raw).policy)


def level_pipe_room(policy: PolicyManager, level: int) -> int:
    """An empty link pipe's room: its limit."""
    inbound, _ = new_link_pair(policy.pipe_limit(policy.for_level(level)), "t")
    assert inbound.writer.limit == inbound.reader.limit
    return inbound.writer.wait_room(timeout=0)


@pytest.mark.parametrize("policy", [manager(), manager({}), manager({"connIdle": 5})])
def test_the_default_is_512_kib_per_pipe(policy: PolicyManager) -> None:
    """defaultBufferSize on amd64 (features/policy/policy.go), configured level or not."""
    assert level_pipe_room(policy, 0) == 512 * KIB
    assert level_pipe_room(policy, 7) == 512 * KIB


def test_buffer_size_is_kib_and_a_write_is_let_in_up_to_it() -> None:
    policy = manager({"bufferSize": 4})
    assert level_pipe_room(policy, 0) == 4 * KIB
    inbound, _ = new_link_pair(policy.pipe_limit(policy.for_level(0)), "t")
    assert inbound.writer.try_write(b"x" * 4 * KIB)
    assert inbound.writer.try_write(b"y")  # holding exactly bufferSize: not full (impl.go)
    assert not inbound.writer.try_write(b"z")


def test_buffer_size_zero_hands_over_one_chunk_at_a_time() -> None:
    policy = manager({"bufferSize": 0})
    assert level_pipe_room(policy, 0) == 0
    inbound, _ = new_link_pair(policy.pipe_limit(policy.for_level(0)), "t")
    assert inbound.writer.try_write(b"x" * 64 * KIB)
    assert not inbound.writer.try_write(b"y")


def test_a_negative_buffer_size_is_capped_not_unlimited() -> None:
    """4.34 buffers without limit; v2sync stops at UNLIMITED_BUFFER_CAP per pipe, so one
    stalled reader cannot grow the process without bound."""
    assert level_pipe_room(manager({"bufferSize": -1}), 0) == UNLIMITED_BUFFER_CAP


def test_each_level_has_its_own_buffer_size() -> None:
    policy = manager({"bufferSize": 16}, **{"1": {"bufferSize": 1024}})
    assert level_pipe_room(policy, 0) == 16 * KIB
    assert level_pipe_room(policy, 1) == 1024 * KIB
    assert level_pipe_room(policy, 2) == 512 * KIB  # not configured: SessionDefault()


class RecordingOutbound:
    tag = "direct"

    def __init__(self) -> None:
        self.links: List[Link] = []
        self.dispatched = threading.Event()

    def dispatch_steps(self, session: Session, link: Link):
        self.links.append(link)
        self.dispatched.set()
        return
        yield  # steps that never wait, as OutboundHandler.dispatch_steps may be


@pytest.mark.parametrize("level, room", [(0, 8 * KIB), (3, 0)])
def test_dispatch_builds_both_pipes_from_the_session_level(level: int, room: int) -> None:
    policy = manager({"bufferSize": 8}, **{"3": {"bufferSize": 0}})
    outbound = RecordingOutbound()
    threads = ThreadGroup("dispatch-test")
    dispatcher = DefaultDispatcher(OneOutbound(outbound), policy, threads, AccessLog())
    here = Destination(Address.parse("127.0.0.1"), 1)
    try:
        inbound_side = dispatcher.dispatch(Session("t", here, user_level=level), here)
        assert outbound.dispatched.wait(WAIT)
    finally:
        assert threads.shutdown(WAIT)
    outbound_side = outbound.links[0]
    assert inbound_side.writer is outbound_side.reader
    for pipe in (inbound_side.writer, inbound_side.reader):
        assert pipe.wait_room(timeout=0) == room
