"""common.affinity: the CPU setting and CPU claims (real abstract unix sockets; this
process's own affinity is never changed here, the pinning itself is tested on real v2sync
processes in tests/scenarios/test_cpu_affinity.py)."""
from __future__ import annotations

import os
import uuid

import pytest

from v2sync.common import affinity

linux_only = pytest.mark.skipif(not affinity.supported(), reason="CPU affinity is Linux-only")


@pytest.mark.parametrize("text, expected", [("auto", "auto"), (" ALL ", "all"), ("0", 0),
                                            ("12", 12)])
def test_parse_setting(text, expected) -> None:
    assert affinity.parse_setting(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "one", "0,1", "1.5"])
def test_parse_setting_rejects_anything_else(text) -> None:
    with pytest.raises(ValueError, match="expected auto, all or a CPU number"):
        affinity.parse_setting(text)


@pytest.fixture
def prefix() -> str:
    """A claim namespace of this test's own, so a v2sync running on the host is no bother."""
    return f"v2sync-test-{uuid.uuid4().hex}"


@linux_only
def test_claims_go_from_the_highest_cpu_down_until_none_is_left(prefix) -> None:
    claims = [affinity.claim_cpu([0, 1, 2], prefix) for _ in range(4)]
    try:
        assert [c.cpu for c in claims[:3]] == [2, 1, 0]
        assert claims[3] is None
    finally:
        for claim in claims[:3]:
            claim.close()


@linux_only
def test_a_closed_claim_is_free_again(prefix) -> None:
    first = affinity.claim_cpu([0, 1], prefix)
    second = affinity.claim_cpu([0, 1], prefix)
    assert (first.cpu, second.cpu) == (1, 0)
    first.close()
    first.close()  # idempotent
    again = affinity.claim_cpu([0, 1], prefix)
    try:
        assert again.cpu == 1
    finally:
        again.close()
        second.close()


@linux_only
def test_all_and_unavailable_cpus_leave_this_process_alone() -> None:
    before = os.sched_getaffinity(0)
    assert affinity.apply(affinity.ALL) is None
    missing = max(before) + 1
    with pytest.raises(ValueError, match=f"CPU {missing} is not available"):
        affinity.apply(missing)
    assert os.sched_getaffinity(0) == before


def test_each_namespace_has_its_own_prefix() -> None:
    assert affinity.claim_prefix() == affinity.CLAIM_PREFIX
    assert affinity.claim_prefix("tests-1") == f"{affinity.CLAIM_PREFIX}-tests-1"


@pytest.mark.parametrize("namespace", ["x" * (affinity.MAX_NAMESPACE_BYTES + 1), "a\0b"])
def test_a_bad_namespace_is_refused(namespace) -> None:
    with pytest.raises(ValueError, match="V2SYNC_CPU_NAMESPACE: .* is not a CPU claim namespace"):
        affinity.claim_prefix(namespace)


@linux_only
def test_a_bad_namespace_is_refused_before_anything_is_pinned() -> None:
    before = os.sched_getaffinity(0)
    with pytest.raises(ValueError, match="not a CPU claim namespace"):
        affinity.apply(affinity.AUTO, "x" * (affinity.MAX_NAMESPACE_BYTES + 1))
    assert os.sched_getaffinity(0) == before


@linux_only
def test_namespaces_do_not_see_each_other_claims(prefix) -> None:
    ours = affinity.claim_cpu([0], affinity.claim_prefix(prefix))
    theirs = affinity.claim_cpu([0], affinity.claim_prefix(f"{prefix}-other"))
    try:
        assert (ours.cpu, theirs.cpu) == (0, 0)
        assert affinity.claim_cpu([0], affinity.claim_prefix(prefix)) is None
    finally:
        ours.close()
        theirs.close()
