"""Patterns through real networks on 127.0.0.1: publish, fetch, versions, search, limits, pins, lies.

Every node is a real :class:`~aether.node.server.AetherNode` with its own SQLite
home and UDP socket. Most tests share one 24-node network with k = 8, so a
pattern lives on 8 of the 24 nodes and a fetching node can be picked that holds
nothing of it: its fetch is truly remote. Tests that stop nodes or need other
settings build a network of their own.

Nothing of our own code is mocked. A few tests wrap a method of one node
*instance* (``lookup``, ``pull_block``, ``local_value``) to count calls or to
make that node lie on the wire; the wrapper always delegates to (or replaces
the answer of) the real method.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
import pytest_asyncio
from kademlia.node import Node

from aether.node import entries as E
from aether.node.chunks import split
from aether.node.pattern import PatternError, parse_pattern
from aether.node.patterns import AmbiguousPattern, PatternLibrary, PatternNotFound
from aether.node.server import AetherNode
from aether.node.values import check_value
from aether.simulations.network import address_of, local_network, start_node, stop_all

from .conftest import QUIET, wait_for
from .corpus import corpus, invalid_corpus

SIZE = 24
K = 8
CONFIG = QUIET.replace(ksize=K)
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def network(tmp_path_factory):
    async with local_network(tmp_path_factory.mktemp("patterns"), SIZE, CONFIG, seed=11) as nodes:
        yield nodes


# ---------------------------------------------------------------------- helpers
def make_pattern(
    pattern_id: str, name: str, *, status: str = "Active", category: str = "Overlay Routing",
    text: str = "A problem worth writing down.", size: int | None = None,
) -> bytes:
    """A valid pattern document; with ``size``, padded with ASCII lines to exactly that many bytes."""
    head = (
        f"# {pattern_id}: {name}\n\n**CREATED:** 2025-11-05T09:30:00Z\n**STATUS:** {status}\n"
        f"**CATEGORY:** {category}\n\n## Problem\n{text}\n\n## Solution\n"
    ).encode()
    if size is None:
        return head + b"Keep it short.\n"
    lines, n = [head], 0
    while sum(map(len, lines)) < size:
        n += 1
        lines.append(f"Line {n:05d} of {pattern_id}: a holder answers, the block is checked.\n".encode())
    data = b"".join(lines)[: size - 1] + b"\n"
    parse_pattern(data)  # a helper that made an invalid document would make every test here misleading
    return data


def node_hex(node: AetherNode) -> str:
    return node.node.id.hex()


def holds(node: AetherNode, data: bytes) -> bool:
    """Whether the node holds any manifest entry or block of the pattern."""
    manifest, _ = split(data)
    key = E.pattern_key(manifest.pattern_hash.hex())
    return node.store.has_entries(key) or any(node.store.contains(k) for k in manifest.blocks)


def remote_nodes(nodes: list[AetherNode], data: bytes, *, besides: tuple = ()) -> list[AetherNode]:
    """Nodes holding nothing of the pattern (no manifest, no block): their fetches are remote."""
    return [n for n in nodes if n not in besides and not holds(n, data)]


def count_calls(monkeypatch, node: AetherNode, method: str) -> list:
    """Record each call of ``node.<method>`` (an instance attribute that delegates to the real method)."""
    calls: list = []
    real = getattr(node, method)

    async def counting(*args, **kwargs):
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(node, method, counting)
    return calls


async def next_second() -> None:
    """Wait until the wall-clock second changes: summaries and expiries are whole seconds."""
    start = int(time.time())
    while int(time.time()) == start:
        await asyncio.sleep(0.01)


def entry_snapshot(nodes: list[AetherNode], key: bytes) -> list[list[tuple]]:
    return [[(e.author, e.name, e.seq, e.value) for e in n.store.entries(key)] for n in nodes]


def store_snapshot(nodes: list[AetherNode]) -> list[tuple[int, int]]:
    return [(n.store.count(), len(n.store.iter_entries())) for n in nodes]


def forged(block: bytes) -> bytes:
    """The block with one byte altered."""
    return bytes([block[0] ^ 0x01]) + block[1:]


def lie_about(monkeypatch, node: AetherNode, real: dict[bytes, bytes]) -> None:
    """Make the node answer every FIND_VALUE for one of ``real``'s blocks with a forgery of it."""

    def lying(value_key, offset=0, _real=node.local_value):
        if value_key in real:
            return forged(real[value_key])
        return _real(value_key, offset)

    monkeypatch.setattr(node, "local_value", lying)


# ---------------------------------------------------------------------- 1. round trips
@pytest.mark.parametrize("case", sorted(corpus()))
async def test_every_corpus_case_round_trips_byte_identical_through_remote_nodes(network, case):
    data = corpus()[case]
    publisher = network[0]
    published = await PatternLibrary(publisher).publish(data, source=f"{case}.md")
    assert not published.unchanged
    assert published.replicas >= 1
    pattern_hash = hashlib.sha256(data).hexdigest()
    assert published.pattern.hash == pattern_hash

    by_hash_node, by_id_node = remote_nodes(network, data, besides=(publisher,))[:2]
    by_hash = await PatternLibrary(by_hash_node).fetch(pattern_hash)
    by_id = await PatternLibrary(by_id_node).fetch(published.pattern.id)
    for fetched in (by_hash, by_id):
        assert fetched.data == data, f"{case}: {len(fetched.data)} bytes back for {len(data)}"
        assert fetched.hash == pattern_hash
        assert hashlib.sha256(fetched.data).hexdigest() == pattern_hash
        assert fetched.authors == [node_hex(publisher)]
        assert fetched.summary.id == published.pattern.id
        assert fetched.summary.size == len(data)
        assert fetched.local is False
        assert fetched.tampered == 0
    resolved = await PatternLibrary(by_id_node).resolve(published.pattern.id)
    assert resolved.author_id == node_hex(publisher)
    assert resolved.summary.hash == pattern_hash


# ---------------------------------------------------------------------- 2. fetch cost
async def test_a_remote_fetch_by_hash_is_one_lookup_and_blocks_come_from_holders(network, monkeypatch):
    data = make_pattern("Pattern-COST-001", "One lookup for many blocks", size=40 * 1024)
    manifest, blocks = split(data)
    assert len(blocks) == 7
    publisher = network[5]
    published = await PatternLibrary(publisher).publish(data)
    fetcher = remote_nodes(network, data, besides=(publisher,))[0]

    lookups = count_calls(monkeypatch, fetcher, "lookup")
    pulls = count_calls(monkeypatch, fetcher, "pull_block")
    block_lookups = count_calls(monkeypatch, fetcher, "get_block")
    fetched = await PatternLibrary(fetcher).fetch(published.pattern.hash)

    assert fetched.data == data and not fetched.local
    assert [args[0] for args in lookups] == [E.pattern_key(published.pattern.hash)], "exactly one iterative lookup"
    assert block_lookups == []
    assert sorted(args[0] for args in pulls) == sorted(manifest.blocks), "each block pulled once from holders"


# ---------------------------------------------------------------------- 3. publisher offline
async def test_a_pattern_outlives_its_publisher(tmp_path):
    data = corpus()["size_20k"]  # several blocks; the 1 MiB case is covered by the round trips above
    async with local_network(tmp_path / "net", 20, CONFIG, seed=3) as nodes:
        publisher = nodes[0]
        published = await PatternLibrary(publisher).publish(data)
        pattern_hash = published.pattern.hash
        nodes.remove(publisher)
        stop_all([publisher])  # offline: socket closed, store closed

        by_hash_node, by_id_node = remote_nodes(nodes, data)[:2]
        by_hash = await PatternLibrary(by_hash_node).fetch(pattern_hash)
        by_id = await PatternLibrary(by_id_node).fetch(published.pattern.id)
        for fetched in (by_hash, by_id):
            assert fetched.data == data
            assert hashlib.sha256(fetched.data).hexdigest() == pattern_hash
            assert fetched.authors == [node_hex(publisher)]
            assert not fetched.local


# ---------------------------------------------------------------------- 4. versions
async def test_a_new_version_replaces_the_old_and_history_lists_both(network):
    author, reader, other = network[6], network[7], network[8]
    library = PatternLibrary(author)
    v1 = make_pattern("Pattern-VER-001", "Versioned pattern", text="The first way to do it.")
    v2 = make_pattern("Pattern-VER-001", "Versioned pattern", text="A better way, learned later.")
    first = await library.publish(v1)
    (head_v1,) = await PatternLibrary(reader).heads("Pattern-VER-001")
    assert head_v1.summary.hash == first.pattern.hash
    await next_second()  # so that the two versions carry different times
    second = await library.publish(v2)
    assert not second.unchanged and second.pattern.hash != first.pattern.hash

    fetched = await PatternLibrary(reader).fetch("Pattern-VER-001")
    assert fetched.data == v2
    assert fetched.authors == [node_hex(author)]

    (newest, versions), = await PatternLibrary(other).history("Pattern-VER-001")
    assert newest.author_id == node_hex(author)
    assert [h for h, _ in versions] == [second.pattern.hash, first.pattern.hash]
    assert versions[1][1] == head_v1.summary.time
    assert versions[0][1] == newest.summary.time > versions[1][1]

    id_key = E.id_key("Pattern-VER-001")
    before_network = await other.get_entries(id_key)
    before_stores = entry_snapshot(network, id_key)
    again = await library.publish(v2)
    assert again.unchanged
    after_network = await other.get_entries(id_key)
    assert [(e.record.seq, e.data) for e in after_network.entries] == [
        (e.record.seq, e.data) for e in before_network.entries
    ]
    assert entry_snapshot(network, id_key) == before_stores
    assert (await PatternLibrary(other).fetch("Pattern-VER-001")).data == v2


# ---------------------------------------------------------------------- 5. search
async def test_search_finds_every_author_and_filters_by_terms_and_fields(network):
    a, b, c, searcher = network[9], network[10], network[11], network[12]
    a_text = make_pattern("Pattern-SRCH-001", "Quokkasearch gossip tables", text="Author A's way.")
    b_text = make_pattern(
        "Pattern-SRCH-001", "Quokkasearch gossip rings", status="Deprecated", text="Author B's way."
    )
    c_text = make_pattern("Pattern-DHT-901", "Quokkasearch bucket splits", category="Storage Layer")
    shared = make_pattern("Pattern-SRCH-002", "Quokkashared identical text", text="Same bytes from two authors.")
    for node, data in ((a, a_text), (b, b_text), (c, c_text), (a, shared), (c, shared)):
        await PatternLibrary(node).publish(data)
    library = PatternLibrary(searcher)

    def found(results):
        return sorted((r.summary.id, r.author_id, r.summary.hash) for r in results)

    def expect(*items):
        return sorted((pid, node_hex(node), hashlib.sha256(data).hexdigest()) for pid, node, data in items)

    a_item = ("Pattern-SRCH-001", a, a_text)
    b_item = ("Pattern-SRCH-001", b, b_text)
    c_item = ("Pattern-DHT-901", c, c_text)
    assert found(await library.search(["quokkasearch"])) == expect(a_item, b_item, c_item)
    assert found(await library.search(["Quokkasearch", "gossip"])) == expect(a_item, b_item)
    assert found(await library.search(["gossip", "tables"])) == expect(a_item)
    assert found(await library.search(["quokkasearch", "type:DHT"])) == expect(c_item)
    assert found(await library.search(["quokkasearch", "type:SRCH"])) == expect(a_item, b_item)
    assert found(await library.search(["quokkasearch", "status:deprecated"])) == expect(b_item)
    assert found(await library.search(["quokkasearch", "category:Storage Layer"])) == expect(c_item)
    assert found(await library.search(["Pattern-SRCH-001"])) == expect(a_item, b_item)
    assert await library.search(["xylophonequark"]) == []
    assert await library.search(["quokkasearch", "xylophonequark"]) == []

    with pytest.raises(AmbiguousPattern):
        await library.fetch("Pattern-SRCH-001")
    by_a = await library.fetch("Pattern-SRCH-001", author=node_hex(a)[:16])
    by_b = await library.fetch("Pattern-SRCH-001", author=node_hex(b)[:12])
    assert (by_a.data, by_a.authors) == (a_text, [node_hex(a)])
    assert (by_b.data, by_b.authors) == (b_text, [node_hex(b)])

    same = await PatternLibrary(network[13]).fetch("Pattern-SRCH-002")  # two authors, one text: no ambiguity
    assert same.data == shared
    assert same.authors and set(same.authors) <= {node_hex(a), node_hex(c)}


# ---------------------------------------------------------------------- 6. bounded index keys
LIMIT = 5
LIMITED = [make_pattern(f"Pattern-LIM-{i:03d}", f"Wombatlimit number {i}") for i in range(8)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def full_key(tmp_path_factory):
    """20 nodes with ksize 20 (every node holds every key) and at most 5 entries per key; one
    author publishes 8 patterns sharing the word "wombatlimit", each in a later second (so each
    later entry expires later, i.e. is newer)."""
    config = QUIET.replace(max_entries_per_key=LIMIT)
    async with local_network(tmp_path_factory.mktemp("limited"), 20, config, seed=5) as nodes:
        author = nodes[0]
        for data in LIMITED:
            await next_second()
            await PatternLibrary(author).publish(data)
        yield nodes


async def test_a_full_index_key_keeps_at_most_the_limit_and_the_newest_on_every_node(full_key):
    nodes = full_key
    key = E.term_key("wombatlimit")
    newest = sorted(parse_pattern(d).id for d in LIMITED[-LIMIT:])
    held = []
    for node in nodes:
        ids = sorted(E.summary_of(check_value(key, e.value).record).id for e in node.store.entries(key))
        held.append(ids)
    assert all(len(ids) <= LIMIT for ids in held), held
    wrong = {i: ids for i, ids in enumerate(held) if ids != newest}
    assert not wrong, f"nodes not holding the newest {LIMIT} (node 0 is the author): {wrong}"


async def test_a_search_of_a_full_index_key_returns_only_the_newest(full_key):
    nodes = full_key
    newest = sorted(parse_pattern(d).id for d in LIMITED[-LIMIT:])
    results = await PatternLibrary(nodes[-1]).search(["wombatlimit"])
    assert sorted(r.summary.id for r in results) == newest


# ---------------------------------------------------------------------- 7. pin and unpin
async def test_a_pinned_pattern_survives_on_the_pinner_and_unpin_releases_it(tmp_path):
    data = make_pattern("Pattern-PIN-001", "Kept for good", size=20 * 1024)
    manifest, _ = split(data)
    async with local_network(tmp_path / "net", 20, CONFIG, seed=9) as nodes:
        publisher = nodes[0]
        published = await PatternLibrary(publisher).publish(data)
        pattern_hash = published.pattern.hash
        key = E.pattern_key(pattern_hash)
        pinner = remote_nodes(nodes, data, besides=(publisher,))[0]
        library = PatternLibrary(pinner)

        pinned = await library.pin("Pattern-PIN-001")
        assert pinned.data == data and not pinned.local
        (held,) = [h for h in library.held() if h.summary.hash == pattern_hash]
        assert held.pinned and held.complete
        for block_key in manifest.blocks:
            stored = pinner.store.get(block_key, touch=False)
            assert stored is not None and stored.pinned and stored.expires is None

        # The publisher goes offline; every other holder loses its copy.
        nodes.remove(publisher)
        stop_all([publisher])
        for node in nodes:
            if node is pinner:
                continue
            for stored in node.store.entries(key):
                node.store.delete_entry(key, stored.author, stored.name)
            for block_key in manifest.blocks:
                node.store.delete(block_key)
        assert [n for n in nodes if holds(n, data)] == [pinner]

        # The pinner's republishing (due every republish_interval; run now) keeps it findable.
        await pinner.republish_own()
        fresh = await start_node(tmp_path / "fresh", CONFIG)
        # Light, like the node of a one-off `aether-node fetch`: a holder that met it while it
        # joined could otherwise hand it the pattern first, and its fetch would read it locally.
        fresh.light = True
        nodes.append(fresh)  # stopped and closed with the network
        await fresh.bootstrap([address_of(nodes[1] if nodes[1] is not pinner else nodes[2])])
        fetched = await PatternLibrary(fresh).fetch("Pattern-PIN-001")
        assert fetched.data == data and not fetched.local
        assert fetched.mirrors == [node_hex(pinner)]

        assert await library.unpin("Pattern-PIN-001") == pattern_hash
        assert not any(h.pinned for h in library.held() if h.summary.hash == pattern_hash)
        for block_key in manifest.blocks:
            stored = pinner.store.get(block_key, touch=False)
            assert stored is not None and not stored.pinned and stored.expires is not None
        with pytest.raises(PatternNotFound):
            await library.unpin("ab" * 32)


# ---------------------------------------------------------------------- 8. tampered blocks
async def test_tampered_blocks_are_caught_and_read_from_an_honest_holder(network, monkeypatch):
    """Every node but one honest holder serves the true manifest but forges blocks: the fetch
    reads each block from the holder that tells the truth and counts the liars it caught."""
    data = make_pattern("Pattern-LIE-001", "Forged blocks are caught", size=24 * 1024)
    manifest, blocks = split(data)
    real = dict(zip(manifest.blocks, blocks))
    publisher = network[14]
    published = await PatternLibrary(publisher).publish(data)
    key = E.pattern_key(published.pattern.hash)
    fetcher = remote_nodes(network, data, besides=(publisher,))[0]
    # The honest holder is not among the first alpha nodes the fetcher asks, so that liars answer
    # before it and are among the nodes the fetcher reads blocks from.
    seeds = fetcher.protocol.router.find_neighbors(Node(key), k=fetcher.ksize)
    honest = next(
        n for n in (next(x for x in network if x.node.id == s.id) for s in seeds[CONFIG.alpha:])
        if n.store.has_entries(key) and all(n.store.contains(k) for k in manifest.blocks)
    )

    for node in network:
        if node not in (honest, fetcher):
            lie_about(monkeypatch, node, real)

    lookups = count_calls(monkeypatch, fetcher, "lookup")
    fetched = await PatternLibrary(fetcher).fetch(published.pattern.hash)
    assert fetched.data == data
    assert fetched.tampered >= 1
    assert len(lookups) == 1, "the honest holder found by the one lookup served every block"


async def test_when_every_holder_tampers_the_fetch_fails_and_returns_nothing(network, monkeypatch):
    data = make_pattern("Pattern-LIE-002", "Nobody tells the truth", size=14 * 1024)
    manifest, blocks = split(data)
    real = dict(zip(manifest.blocks, blocks))
    publisher = network[15]
    published = await PatternLibrary(publisher).publish(data)
    fetcher = remote_nodes(network, data, besides=(publisher,))[0]
    liars = 0
    for node in network:
        if node is fetcher:
            continue
        liars += any(node.store.contains(k) for k in real)

        def lying(value_key, offset=0, _real=node.local_value):
            value = _real(value_key, offset)
            if value is not None and value_key in real:
                return forged(value)
            return value

        monkeypatch.setattr(node, "local_value", lying)
    assert liars >= 2

    with pytest.raises(PatternNotFound):
        await PatternLibrary(fetcher).fetch(published.pattern.hash)
    await asyncio.sleep(0.1)  # nothing may be cached in the background either
    assert not any(fetcher.store.contains(k) for k in manifest.blocks)
    assert not any(h.summary.hash == published.pattern.hash for h in PatternLibrary(fetcher).held())


# ---------------------------------------------------------------------- 9. invalid patterns
@pytest.mark.parametrize("case", sorted(invalid_corpus()))
async def test_an_invalid_pattern_is_refused_before_anything_is_stored(network, case):
    data, message = invalid_corpus()[case]
    publisher, reader = network[16], network[17]
    # Earlier tests on this network may still be handing off or caching.
    assert await wait_for(lambda: not any(n.busy for n in network))
    before = store_snapshot(network)
    with pytest.raises(PatternError) as refused:
        await PatternLibrary(publisher).publish(data, source=f"{case}.md")
    assert message in str(refused.value)
    assert store_snapshot(network) == before
    await asyncio.sleep(0.05)  # no background work was started either
    assert store_snapshot(network) == before
    assert await PatternLibrary(reader).heads("Pattern-DHT-001") == []


# ---------------------------------------------------------------------- 10. caching
async def test_a_fetched_pattern_is_cached_and_served_by_the_fetcher(network):
    data = make_pattern("Pattern-CACHE-001", "Fetched copies are kept a while", size=13 * 1024)
    manifest, blocks = split(data)
    publisher = network[18]
    published = await PatternLibrary(publisher).publish(data)
    pattern_hash = published.pattern.hash
    fetcher, third = remote_nodes(network, data, besides=(publisher,))[:2]
    library = PatternLibrary(fetcher)

    fetched = await library.fetch(pattern_hash)
    assert fetched.data == data and not fetched.local

    def cached() -> bool:
        return any(h.summary.hash == pattern_hash and h.role == "cache" and h.complete for h in library.held())

    assert await wait_for(cached), library.held()
    (held,) = [h for h in library.held() if h.summary.hash == pattern_hash]
    assert not held.pinned
    for block_key in manifest.blocks:
        stored = fetcher.store.get(block_key, touch=False)
        assert stored.role == "cache" and not stored.pinned
        assert stored.expires is not None and stored.expires <= time.time() + CONFIG.cache_ttl + 1

    again = await library.fetch(pattern_hash)
    assert again.data == data and again.local
    # The fetcher answers another node's FIND_VALUE for the blocks and the manifest.
    for block_key, block in zip(manifest.blocks, blocks):
        ok, body = await third.protocol.find_value(address_of(fetcher), third.node.id, block_key)
        assert ok and body == {"value": block}
    ok, body = await third.protocol.find_value(address_of(fetcher), third.node.id, E.pattern_key(pattern_hash))
    assert ok and isinstance(body, dict) and isinstance(body.get("value"), bytes)


# ---------------------------------------------------------------------- 11. maintenance keeps blocks near their pattern
def closest_to(nodes: list[AetherNode], key: bytes, k: int) -> list[AetherNode]:
    target = int.from_bytes(key, "big")
    return sorted(nodes, key=lambda n: n.node.long_id ^ target)[:k]


def wipe(node: AetherNode, data: bytes) -> None:
    """Remove every trace of the pattern from a node's store, as if it had just joined."""
    manifest, _ = split(data)
    key = E.pattern_key(manifest.pattern_hash.hex())
    for entry in node.store.entries(key):
        node.store.delete_entry(key, entry.author, entry.name)
    for block in manifest.blocks:
        node.store.delete(block)


async def test_republish_restores_a_pattern_near_its_key_with_one_lookup_for_all_its_blocks(tmp_path, monkeypatch):
    data = make_pattern("Pattern-KEEP-001", "Republished as a whole", size=40 * 1024)  # 7 blocks
    manifest, _ = split(data)
    key = E.pattern_key(manifest.pattern_hash.hex())
    async with local_network(tmp_path / "net", 16, QUIET.replace(ksize=4), seed=5) as nodes:
        publisher = nodes[0]
        await PatternLibrary(publisher).publish(data)
        for node in nodes[1:]:
            wipe(node, data)
        lookups = count_calls(monkeypatch, publisher, "lookup")
        await publisher.republish_own()
        looked_up = [args[0] for args in lookups]
        # One lookup of the pattern key serves the manifest and all 7 blocks.
        assert looked_up.count(key) == 1
        assert not set(manifest.blocks) & set(looked_up)
        for holder in closest_to([n for n in nodes if n is not publisher], key, 4)[:3]:
            assert all(holder.store.contains(b) for b in manifest.blocks), holder
        reader = next(n for n in nodes[1:] if not holds(n, data))
        assert (await PatternLibrary(reader).fetch(manifest.pattern_hash.hex())).data == data


async def test_a_replica_holder_re_replicates_blocks_next_to_their_pattern(tmp_path):
    data = make_pattern("Pattern-KEEP-002", "Replicas stay together", size=20 * 1024)
    manifest, _ = split(data)
    key = E.pattern_key(manifest.pattern_hash.hex())
    config = QUIET.replace(ksize=4, replicate_interval=0.5)  # short, but not a job on every node every few ms
    async with local_network(tmp_path / "net", 16, config, seed=6) as nodes:
        publisher = nodes[0]
        await PatternLibrary(publisher).publish(data)
        holders = [n for n in nodes[1:] if holds(n, data)]
        keeper = holders[0]
        for node in nodes[1:]:
            if node is not keeper:
                wipe(node, data)
        await asyncio.sleep(0.6)  # every replica the keeper holds is now due
        await keeper.replicate_held()
        near = [n for n in closest_to(nodes, key, 4) if n not in (publisher, keeper)]
        assert near
        for node in near:
            assert node.store.has_entries(key)
            assert all(node.store.contains(b) for b in manifest.blocks)
