from v2sync.common.errors import MAX_CHAIN, SHOWN_CHARS, TransportError, detached, shown


def _raise_chain() -> BaseException:
    """A TransportError raised from a KeyError raised while handling a ValueError."""
    try:
        try:
            raise ValueError("first")
        except ValueError:
            raise KeyError("second")  # noqa: B904 (the implicit context is what is tested)
    except KeyError as e:
        try:
            raise TransportError("third") from e
        except TransportError as outer:
            return outer


def test_detached_drops_every_traceback_along_the_chain_and_keeps_the_messages():
    exc = _raise_chain()
    assert exc.__traceback__ is not None and exc.__cause__.__context__.__traceback__ is not None
    assert detached(exc) is exc
    chain = [exc, exc.__cause__, exc.__cause__.__context__]
    assert [type(e) for e in chain] == [TransportError, KeyError, ValueError]
    assert all(e.__traceback__ is None for e in chain)
    assert str(exc) == "third" and str(chain[2]) == "first"


def test_detached_stops_after_max_chain_links():
    links = [ValueError(str(i)) for i in range(MAX_CHAIN + 2)]
    for outer, inner in zip(links, links[1:]):
        outer.__context__ = inner
    for link in links:
        try:
            raise link
        except ValueError:
            pass  # gives each its own traceback
    detached(links[0])
    assert all(link.__traceback__ is None for link in links[:MAX_CHAIN])
    assert all(link.__traceback__ is not None for link in links[MAX_CHAIN:])


def test_shown_quotes_scalars_as_json_and_cuts_long_ones():
    assert [shown(v) for v in (True, False, None, 3, 1.5, "ab")] == \
        ["true", "false", "null", "3", "1.5", "'ab'"]
    long = shown("x" * 500)
    assert len(long) == SHOWN_CHARS and long.endswith("...")


def test_shown_never_walks_into_containers():
    deep: object = None
    for _ in range(10_000):  # repr() of this raises RecursionError
        deep = [deep]
    assert shown(deep) == "[...]" and shown({"a": deep}) == "{...}"
