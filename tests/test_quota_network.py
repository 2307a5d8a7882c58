"""Quota enforcement and light roles across real nodes on 127.0.0.1.

Every node is a real :class:`~aether.node.server.AetherNode` with its own
SQLite home and UDP socket. Most tests share one 30-node network with k = 8;
each sets the quotas and roles it needs on the nodes it picks (closest to a
pattern's key, or not) and the ``net`` fixture gives every node its default
quota and the full role back afterwards. The mixed device population builds a
network of its own.

No assert is about elapsed time: waits poll for a state, with a bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_asyncio
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.crypto.records import create_record
from aether.node import api
from aether.node import entries as E
from aether.node.chunks import BLOCK_BYTES, split
from aether.node.lookup import LookupResult
from aether.node.patterns import PatternLibrary
from aether.node.server import LIGHT, AetherNode, QuotaExceeded, charge_of
from aether.node.values import block_key, check_value
from aether.simulations.network import address_of, join_all, local_network, start_node, stop_all
from aether.storage.store import RESERVED_BYTES, Store, value_charge

from .conftest import QUIET, wait_for
from .corpus import corpus
from .test_patterns import closest_to, count_calls, holds, make_pattern, remote_nodes, store_snapshot
from .test_store import assert_accounting

SIZE = 30
K = 8
CONFIG = QUIET.replace(ksize=K)
BLOCK_CHARGE = value_charge(20, BLOCK_BYTES)
"""What one full block costs a holder."""
EXAMPLES = Path(__file__).resolve().parents[1] / "simulations" / "patterns"
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def network(tmp_path_factory):
    async with local_network(tmp_path_factory.mktemp("quota"), SIZE, CONFIG, seed=17) as nodes:
        yield nodes


@pytest_asyncio.fixture(loop_scope="module")
async def net(network):
    """The shared network; afterwards every node serves fully again, with the default quota."""
    await settle(network)
    yield network
    for node in network:
        node.light = False
        if node.config.quota_bytes != CONFIG.quota_bytes:
            node.set_quota(CONFIG.quota_bytes)
    await settle(network)


# ---------------------------------------------------------------------- helpers
async def settle(nodes: list[AetherNode]) -> None:
    """Until no node has hand-offs, caching or repairs pending (a readiness wait)."""
    assert await wait_for(lambda: not any(n.busy for n in nodes), timeout=30)


def squeeze(node: AetherNode, room: int) -> None:
    """Set the quota so that ``room`` bytes are left beside the node's own and pinned data."""
    node.set_quota(RESERVED_BYTES + node.store.usage().pinned + room)


def key_of(data: bytes) -> bytes:
    return E.pattern_key(hashlib.sha256(data).hexdigest())


def complete(node: AetherNode, data: bytes) -> bool:
    """Whether the node holds a manifest of the pattern and every one of its blocks."""
    manifest, _ = split(data)
    return node.store.has_entries(key_of(data)) and all(node.store.contains(k) for k in manifest.blocks)


def over_budget(nodes: list[AetherNode]) -> list[tuple[int, int, int]]:
    """(index, used, budget) of every node whose rows are charged more than its quota allows."""
    return [(i, n.store.used_bytes(), n.budget) for i, n in enumerate(nodes) if n.store.used_bytes() > n.budget]


def pattern_where(pattern_id: str, name: str, accept: Callable[[bytes], bool], *, size: int) -> bytes:
    """A pattern document whose key satisfies ``accept`` (its text varies until it does)."""
    for variant in range(2000):
        data = make_pattern(pattern_id, name, text=f"Variant {variant} of the problem.", size=size)
        if accept(key_of(data)):
            return data
    raise AssertionError(f"no variant of {pattern_id} has a key that fits")


async def replica_on(net: list[AetherNode], node: AetherNode, publisher: AetherNode, pattern_id: str,
                     *, size: int) -> bytes:
    """A pattern ``publisher`` publishes with a key so close to ``node`` that it holds a replica."""
    others = [n for n in net if n is not publisher]
    data = pattern_where(pattern_id, "Held as a replica",
                         lambda key: node in closest_to(others, key, K // 2), size=size)
    await PatternLibrary(publisher).publish(data)
    await settle(net)
    assert complete(node, data)
    return data


async def cached_on(net: list[AetherNode], node: AetherNode, publisher: AetherNode, pattern_id: str,
                    *, size: int) -> bytes:
    """A pattern ``publisher`` publishes far from ``node``, which then fetches it: a cached copy."""
    others = [n for n in net if n is not publisher]
    data = pattern_where(pattern_id, "Held as a cached copy",
                         lambda key: node not in closest_to(others, key, K + 4), size=size)
    published = await PatternLibrary(publisher).publish(data)
    await settle(net)
    assert not holds(node, data)
    assert (await PatternLibrary(node).fetch(published.pattern.hash)).data == data
    assert await wait_for(lambda: complete(node, data))
    return data


def record_lookups(monkeypatch, node: AetherNode) -> dict[bytes, LookupResult]:
    """The result of the first lookup ``node`` makes of each target from now on (the real method, wrapped).

    A placement that runs out of spares looks the same key up again, wider; the
    first lookup is the one that chose the k closest.
    """
    results: dict[bytes, LookupResult] = {}
    real = node.lookup

    async def recording(key: bytes, **kwargs) -> LookupResult:
        result = await real(key, **kwargs)
        results.setdefault(key, result)
        return result

    monkeypatch.setattr(node, "lookup", recording)
    return results


def assert_placed(holders: list[AetherNode], found: LookupResult, refusing: list[AetherNode]) -> None:
    """A placement ends on the k closest less those refusing, each refused copy made up by a node past them."""
    refused = {n.node.id for n in refusing}
    closest = {n.id for n in found.closest}
    held = ids(holders)
    assert closest - refused <= held
    assert len(held) == len(closest)
    assert not held & refused


def ids(nodes: list[AetherNode]) -> set[bytes]:
    return {n.node.id for n in nodes}


def contact(node: AetherNode) -> Node:
    return Node(node.node.id, *address_of(node))


async def offer(sender: AetherNode, receiver: AetherNode, key: bytes, value: bytes):
    """A STORE from ``sender`` to ``receiver`` over UDP: the reply's body (True, or an error dict)."""
    ok, body = await sender.protocol.call_store(contact(receiver), key, value)
    assert ok, "the STORE went unanswered"
    return body


def refusal(body) -> str | None:
    return body.get("error") if isinstance(body, dict) else None


def held_state(node: AetherNode) -> tuple:
    """Rows and charges of a node's store."""
    return node.store.count(), len(node.store.iter_entries()), node.store.used_bytes_by_role()


# ---------------------------------------------------------------------- 1. full nodes
def fill_closest(net: list[AetherNode], data: bytes, count: int) -> tuple[AetherNode, AetherNode, list[AetherNode]]:
    """The node farthest from the pattern's key (to publish), the next farthest (to read), and the
    ``count`` other nodes closest to the key, each left less room than one block takes."""
    by_distance = closest_to(net, key_of(data), len(net))
    publisher, reader = by_distance[-1], by_distance[-2]
    full = closest_to([n for n in net if n is not publisher], key_of(data), count)
    for node in full:
        squeeze(node, BLOCK_CHARGE // 2)
    return publisher, reader, full


async def test_full_nodes_answer_full_and_the_next_closest_nodes_take_their_copies(net, monkeypatch):
    data = make_pattern("Pattern-FULL-001", "Full nodes pass replicas on", size=4 * BLOCK_BYTES)
    manifest, blocks = split(data)
    assert all(len(b) == BLOCK_BYTES for b in blocks)  # so that no block fits half a block of room
    publisher, reader, full = fill_closest(net, data, 4)
    others = [n for n in net if n is not publisher]
    refused_before = [n.protocol.stats["store_refused_full"] for n in full]
    lookups = record_lookups(monkeypatch, publisher)

    published = await PatternLibrary(publisher).publish(data)
    await settle(net)

    for node, before in zip(full, refused_before):
        assert node.protocol.stats["store_refused_full"] > before, "a full node did not answer full"
        assert not any(node.store.contains(k) for k in manifest.blocks)
        # Nor the manifest: a node without room for the blocks takes none of the pattern.
        assert not node.store.has_entries(key_of(data))
    holders = [n for n in others if complete(n, data)]
    assert published.replicas == len(holders)
    assert len(holders) > K - len(full), "no copy a full node refused was placed elsewhere"
    # Those copies went to the next closest nodes the lookup met, past the k closest.
    found = lookups[key_of(data)]
    assert ids(full) <= {n.id for n in found.closest}
    assert_placed(holders, found, full)
    assert over_budget(net) == []

    fetched = await PatternLibrary(reader).fetch(published.pattern.hash)
    assert fetched.data == data and not fetched.local
    await settle(net)
    assert over_budget(net) == []


async def test_k_copies_go_out_when_all_but_one_of_the_k_closest_nodes_are_full(net):
    """Five patterns, each with all but one of its k closest nodes full: every one still gets k copies.

    The copies come from 7 spares, which the lookup meets by chance only now and then (a few
    percent of lookups here): five patterns in a row do not get them by chance.
    """
    copies = []
    for i in range(5):
        data = make_pattern(f"Pattern-FULL-{i + 10:03d}", "Nearly every close node is full", size=2 * BLOCK_BYTES)
        publisher, reader, full = fill_closest(net, data, K - 1)
        published = await PatternLibrary(publisher).publish(data)
        await settle(net)
        holders = [n for n in net if n is not publisher and complete(n, data)]
        assert not set(holders) & set(full)
        assert published.replicas == len(holders)
        assert over_budget(net) == []
        assert (await PatternLibrary(reader).fetch(published.pattern.hash)).data == data
        copies.append(len(holders))
        for node in full:
            node.set_quota(CONFIG.quota_bytes)
    assert copies == [K] * 5


async def test_a_node_holding_only_its_own_data_answers_full(net):
    owner, peer = net[1], net[2]
    data = make_pattern("Pattern-FULL-002", "Own data fills the quota", size=2 * BLOCK_BYTES)
    published = await PatternLibrary(owner).publish(data)
    await settle(net)
    squeeze(owner, 0)
    usage = owner.store.usage()
    assert usage.evictable == 0 and usage.used == usage.pinned <= owner.budget
    before = held_state(owner)

    block = os.urandom(BLOCK_BYTES)
    assert refusal(await offer(peer, owner, block_key(block), block)) == "full"
    record = create_record(peer.identity, E.INDEX_KIND, b"term:ownfull#Pattern-FULL-002", 1, b"s" * 200, 3600)
    assert refusal(await offer(peer, owner, record.topic_key, record.encode())) == "full"

    assert held_state(owner) == before
    assert not owner.store.contains(block_key(block))
    mine = await PatternLibrary(owner).fetch(published.pattern.hash)
    assert mine.data == data and mine.local


async def test_a_peers_replica_pushes_out_only_replicas_farther_from_the_node(net):
    holder, peer = net[3], net[4]
    squeeze(holder, 0)  # no replica or cached copy left
    blocks = sorted((os.urandom(BLOCK_BYTES) for _ in range(8)),
                    key=lambda b: int.from_bytes(block_key(b), "big") ^ holder.node.long_id)
    nearest, middle, farthest = blocks[0], blocks[1:-1], blocks[-1]
    squeeze(holder, len(middle) * BLOCK_CHARGE)
    for block in middle:
        assert (await offer(peer, holder, block_key(block), block))["stored"] is True
    assert holder.store.used_bytes() <= holder.budget

    # Everything held is closer to the holder than this one: it is refused, nothing goes.
    assert refusal(await offer(peer, holder, block_key(farthest), farthest)) == "full"
    assert all(holder.store.contains(block_key(b)) for b in middle)
    assert not holder.store.contains(block_key(farthest))

    # This one is closer than all of them: the farthest held replica makes room for it.
    assert (await offer(peer, holder, block_key(nearest), nearest))["stored"] is True
    assert holder.store.contains(block_key(nearest))
    assert not holder.store.contains(block_key(middle[-1]))
    assert all(holder.store.contains(block_key(b)) for b in middle[:-1])
    assert holder.store.used_bytes() <= holder.budget


@pytest.mark.parametrize("kind", ["entry", "record"])
async def test_a_newer_version_of_a_held_value_is_charged_against_the_quota(net, kind):
    """A peer re-stores a value this node holds, now larger: it must fit the quota or be refused."""
    holder, peer = net[5], net[6]
    author = Identity.generate()
    name = b"term:quotagrowth#Pattern-GROW-001" if kind == "entry" else b"growing record"

    def version(seq: int, size: int):
        record = create_record(author, E.INDEX_KIND, name, seq, bytes([seq]) * size, 3600)
        key = record.topic_key if kind == "entry" else record.key
        return key, record.encode()

    key, small = version(1, 100)
    squeeze(holder, 0)
    squeeze(holder, charge_of(check_value(key, small)))  # room for the small version and no more
    assert (await offer(peer, holder, key, small))["stored"] is True
    assert holder.store.used_bytes() <= holder.budget

    key, large = version(2, 4000)
    body = await offer(peer, holder, key, large)
    assert body.get("stored") is True or refusal(body) == "full"
    assert over_budget([holder]) == [], f"the larger version was accepted past the quota ({body!r})"


# ---------------------------------------------------------------------- 2. local publish past the quota
async def test_a_publish_past_the_quota_is_refused_naming_the_bytes_and_stores_nothing(net):
    node = net[7]
    squeeze(node, 3 * BLOCK_CHARGE)
    data = make_pattern("Pattern-OVER-001", "Too large for this node", size=5 * BLOCK_BYTES)
    before = store_snapshot(net)
    state = held_state(node)

    with pytest.raises(QuotaExceeded) as refused:
        await PatternLibrary(node).publish(data)

    needed = refused.value.needed
    message = str(refused.value)
    assert needed > 5 * BLOCK_CHARGE
    assert f"needs {needed:,} bytes" in message and f"quota of {node.config.quota_bytes:,} bytes" in message
    assert "aether-node storage set" in message
    await settle(net)
    assert store_snapshot(net) == before, "something was stored, here or on the network"
    assert held_state(node) == state
    assert not any(h.summary.id == "Pattern-OVER-001" for h in PatternLibrary(node).held())

    # The quota was the only obstacle.
    node.set_quota(CONFIG.quota_bytes)
    published = await PatternLibrary(node).publish(data)
    assert published.replicas == K


async def test_a_pin_past_the_quota_is_refused_and_pins_nothing(net):
    publisher = net[8]
    data = make_pattern("Pattern-OVER-002", "Too large to pin here", size=4 * BLOCK_BYTES)
    manifest, _ = split(data)
    await PatternLibrary(publisher).publish(data)
    pinner = remote_nodes(net, data, besides=(publisher,))[0]
    squeeze(pinner, 2 * BLOCK_CHARGE)

    with pytest.raises(QuotaExceeded, match=r"pinning Pattern-OVER-002 .* needs [\d,]+ bytes"):
        await PatternLibrary(pinner).pin("Pattern-OVER-002")
    await settle(net)
    assert not any(h.pinned for h in PatternLibrary(pinner).held() if h.summary.id == "Pattern-OVER-002")
    assert not any((s := pinner.store.get(k, touch=False)) is not None and s.pinned for k in manifest.blocks)
    assert over_budget([pinner]) == []


async def test_pinning_a_cached_pattern_reserves_room_for_its_mirror_manifest(net):
    publisher = net[10]
    data = make_pattern("Pattern-OVER-003", "Pinned from the cache", size=2 * BLOCK_BYTES)
    published = await PatternLibrary(publisher).publish(data)
    pinner = remote_nodes(net, data, besides=(publisher,))[0]
    library = PatternLibrary(pinner)
    await library.fetch(published.pattern.hash)
    assert await wait_for(lambda: complete(pinner, data))
    pinner.set_quota(RESERVED_BYTES + pinner.store.used_bytes())  # exactly full: nothing evicted

    try:
        await library.pin(published.pattern.hash)
    except QuotaExceeded:
        pass  # refusing is fine too; going past the quota is not
    assert over_budget([pinner]) == []


# ---------------------------------------------------------------------- 3. quota lowered at run time
def replica_distances(node: AetherNode) -> dict[tuple, int]:
    """Each unpinned replica held, with its distance from the node (a block at its pattern's key)."""
    me = node.node.long_id
    found: dict[tuple, int] = {}
    for held in node.store.iter_values(role="replica"):
        if not held.pinned:
            place = node.store.group_of(held.key) or held.key
            found[("value", held.key)] = int.from_bytes(place, "big") ^ me
    for held in node.store.iter_entries(role="replica"):
        if not held.pinned:
            found[("entry", *held.ident)] = int.from_bytes(held.key, "big") ^ me
    return found


async def test_lowering_the_quota_evicts_cached_copies_then_the_farthest_replicas(net):
    node, publisher = net[11], net[12]
    await replica_on(net, node, publisher, "Pattern-LOW-001", size=3 * BLOCK_BYTES)
    await cached_on(net, node, publisher, "Pattern-LOW-002", size=3 * BLOCK_BYTES)
    usage = node.store.usage()
    assert usage.by_role["cache"] > 0 and usage.by_role["replica"] > 0
    distances = replica_distances(node)

    eviction = node.set_quota(RESERVED_BYTES + usage.pinned + usage.by_role["replica"] // 2)

    after = node.store.usage()
    assert eviction.fits and eviction.cached >= 1 and eviction.replicas >= 1
    assert after.used <= node.budget
    assert after.by_role["cache"] == 0, "cached copies go before any replica"
    assert after.pinned == usage.pinned
    kept = replica_distances(node)
    evicted = set(distances) - set(kept)
    assert len(evicted) == eviction.replicas
    assert max(kept.values()) <= min(distances[i] for i in evicted), "a nearer replica went before a farther one"


async def own_and_replica(net: list[AetherNode], node: AetherNode, publisher: AetherNode, number: int) -> bytes:
    """``node`` publishes a pattern of its own and holds a replica of one of ``publisher``'s."""
    mine = make_pattern(f"Pattern-LOW-{number:03d}", "Own data over the quota", size=4 * BLOCK_BYTES)
    await PatternLibrary(node).publish(mine)
    await replica_on(net, node, publisher, f"Pattern-LOW-{number + 1:03d}", size=2 * BLOCK_BYTES)
    assert node.store.usage().evictable > 0
    return mine


async def test_a_quota_below_the_pinned_data_evicts_all_else_and_reports_the_rest(net):
    node = net[13]
    mine = await own_and_replica(net, node, net[14], 3)
    usage = node.store.usage()
    quota = RESERVED_BYTES + usage.pinned // 2

    reply = await api.handle(PatternLibrary(node), "set-quota", {"bytes": quota})

    after = node.store.usage()
    assert reply["quota"] == quota == node.config.quota_bytes
    assert after.pinned == usage.pinned, "own data was evicted"
    assert reply["over_by"] == after.used - node.budget > 0
    assert (await PatternLibrary(node).fetch(hashlib.sha256(mine).hexdigest())).data == mine


async def test_a_quota_below_the_pinned_data_leaves_no_replica_or_cached_copy(net):
    node = net[15]
    await own_and_replica(net, node, net[16], 5)
    usage = node.store.usage()

    node.set_quota(RESERVED_BYTES + usage.pinned // 2)

    after = node.store.usage()
    assert after.pinned == usage.pinned
    assert after.evictable == 0, f"{after.evictable} bytes of replicas and cached copies kept past the quota"


# ---------------------------------------------------------------------- 4. restart
async def test_a_restarted_node_keeps_its_accounting(net):
    index, publisher = 17, net[18]
    node = net[index]
    await PatternLibrary(node).publish(make_pattern("Pattern-RST-001", "Own, across a restart", size=BLOCK_BYTES + 7))
    replica = await replica_on(net, node, publisher, "Pattern-RST-002", size=2 * BLOCK_BYTES)
    cached = await cached_on(net, node, publisher, "Pattern-RST-003", size=2 * BLOCK_BYTES)
    await settle(net)
    by_role = node.store.used_bytes_by_role()
    assert all(by_role.values()), by_role
    assert_accounting(node.store)
    home, port = node.store.path.parent, address_of(node)[1]

    stop_all([node])
    net.remove(node)
    await asyncio.sleep(0)  # the socket closes on the loop's next turn
    with Store(home / "node.db") as store:
        assert_accounting(store)
        assert store.used_bytes_by_role() == by_role
    # On its old port, as a device restarts: the others' routing tables stay right for the tests after this one.
    again = await start_node(home, CONFIG, port=port)
    net.insert(index, again)  # stopped with the network

    assert again.node.id == node.node.id
    assert again.store.used_bytes_by_role() == by_role
    assert_accounting(again.store)
    await again.bootstrap([address_of(publisher)])
    assert complete(again, replica) and complete(again, cached)
    # The restarted node counts from what it holds: room is refused past it, as before.
    squeeze(again, 0)
    block = os.urandom(BLOCK_BYTES)
    assert refusal(await offer(publisher, again, block_key(block), block)) == "full"
    assert_accounting(again.store)


# ---------------------------------------------------------------------- 5. light clients
async def test_a_light_node_answers_light_and_publishers_leave_it_out(net, monkeypatch):
    publisher = net[19]
    others = [n for n in net if n is not publisher]
    first = make_pattern("Pattern-LIGHT-001", "Light nodes hold no replicas", size=2 * BLOCK_BYTES)
    light = closest_to(others, key_of(first), 1)[0]
    light.light = True
    refused_before = light.protocol.stats["store_refused_light"]
    lookups = record_lookups(monkeypatch, publisher)

    published = await PatternLibrary(publisher).publish(first)
    await settle(net)

    assert light.protocol.stats["store_refused_light"] > refused_before
    assert not holds(light, first)
    holders = [n for n in others if complete(n, first)]
    assert published.replicas == len(holders) == K
    assert_placed(holders, lookups[key_of(first)], [light])
    targets, _ = publisher.replica_targets(key_of(first), [contact(light)], [])
    assert targets == [], "the publisher did not remember the light node"

    # The next pattern near the light node: not one STORE is sent to it.
    second = pattern_where("Pattern-LIGHT-002", "Left out of the placement",
                           lambda key: light in closest_to(others, key, K // 2), size=2 * BLOCK_BYTES)
    stores_before = light.protocol.stats["rpc_store"]
    published = await PatternLibrary(publisher).publish(second)
    await settle(net)
    assert light.protocol.stats["rpc_store"] == stores_before
    holders = [n for n in others if complete(n, second)]
    assert published.replicas == len(holders) == K and light not in holders
    assert_placed(holders, lookups[key_of(second)], [light])


async def test_a_light_node_hands_nothing_to_newcomers_and_defers_re_replication(net, tmp_path, monkeypatch):
    newcomer_identity = Identity.generate()
    newcomer_long = int.from_bytes(newcomer_identity.node_id, "big")
    # A block closer to the newcomer than to any node of the network: the newcomer belongs among its holders.
    while True:
        data = os.urandom(64)
        key = int.from_bytes(block_key(data), "big")
        if all(key ^ newcomer_long < key ^ n.node.long_id for n in net):
            break
    report = await net[20].put_block(data)
    assert report.stored == K
    holders = [n for n in net if n.store.contains(block_key(data))]
    closest = closest_to(holders, block_key(data), 1)[0]
    for node in holders:
        node.light = True
    stores = count_calls(monkeypatch, closest.protocol, "call_store")
    lookups = count_calls(monkeypatch, closest, "lookup")

    (tmp_path / "newcomer").mkdir()
    newcomer_identity.save(tmp_path / "newcomer")
    newcomer = await start_node(tmp_path / "newcomer", CONFIG)
    net.append(newcomer)  # stopped with the network
    await newcomer.bootstrap([address_of(closest)])
    assert newcomer.node.id in {c.id for c in closest.protocol.contacts()}
    await asyncio.sleep(2 * CONFIG.handoff_delay)  # when a full node's hand-off would have run
    await settle(net)
    assert not newcomer.store.contains(block_key(data))
    assert stores == []

    await closest.replicate_held()
    assert lookups == [] and closest.store.meta_get("last_replicate") is None

    # Plugged in again: it hands off, re-replicates and takes replicas.
    closest.light = False
    closest.on_new_contact(contact(newcomer))
    assert await wait_for(lambda: newcomer.store.contains(block_key(data)))
    await closest.replicate_held()
    assert closest.store.meta_get("last_replicate") is not None
    sender = next(n for n in net if n not in holders)
    block = os.urandom(BLOCK_BYTES)
    assert (await offer(sender, closest, block_key(block), block))["stored"] is True
    assert closest.store.contains(block_key(block))
    other = next(n for n in holders if n is not closest)
    assert refusal(await offer(sender, other, block_key(block), block)) == LIGHT


async def test_a_light_node_publishes_fetches_and_searches(net):
    light, author, reader = net[22], net[23], net[24]
    light.light = True
    mine = make_pattern("Pattern-LIGHT-003", "Zebralight from a phone", size=2 * BLOCK_BYTES)
    theirs = make_pattern("Pattern-LIGHT-004", "Zebralight from a desktop", size=BLOCK_BYTES + 100)

    published = await PatternLibrary(light).publish(mine)
    await PatternLibrary(author).publish(theirs)
    await settle(net)

    assert published.replicas == K
    assert (await PatternLibrary(reader).fetch("Pattern-LIGHT-003")).data == mine
    fetched = await PatternLibrary(light).fetch("Pattern-LIGHT-004")
    assert fetched.data == theirs and not fetched.local
    found = await PatternLibrary(light).search(["zebralight"])
    assert sorted(r.summary.id for r in found) == ["Pattern-LIGHT-003", "Pattern-LIGHT-004"]
    await settle(net)
    roles = {h.summary.id: h.role for h in PatternLibrary(light).held()}
    assert roles["Pattern-LIGHT-003"] == "own" and roles["Pattern-LIGHT-004"] == "cache"


# ---------------------------------------------------------------------- 6. a mixed device population
DEVICES = {
    # class: (nodes, quota, light)
    "desktop": (9, 10**9, False),
    "laptop": (7, 500 * 10**6, False),
    "phone": (6, 50 * 10**6, True),
    "tiny": (10, RESERVED_BYTES + 3 * BLOCK_CHARGE + 6000, False),
}


def mixed_corpus() -> list[bytes]:
    """20 patterns of 74 bytes to 60 KiB: the project's examples and most of the test corpus."""
    cases = corpus()
    picked = [cases[name] for name in ("minimal", "typical", "crlf", "unicode", "block_6144", "block_6145",
                                       "block_12288", "many_references", "size_20k")]
    examples = [path.read_bytes() for path in sorted(EXAMPLES.glob("*.md"))]
    assert len(examples) == 10
    large = make_pattern("Pattern-MIX-001", "Ten blocks among small devices", size=10 * BLOCK_BYTES)
    return [*picked, large, *examples]


async def test_a_mixed_population_keeps_every_quota_and_every_pattern(tmp_path):
    rng = random.Random(5)
    kinds = [kind for kind, (count, _, _) in DEVICES.items() for _ in range(count)]
    rng.shuffle(kinds)
    assert len(kinds) >= 30
    nodes: list[AetherNode] = []
    try:
        for i, kind in enumerate(kinds):
            _, quota, light = DEVICES[kind]
            node = await start_node(tmp_path / f"{kind}-{i:02d}", CONFIG.replace(quota_bytes=quota))
            node.light = light
            nodes.append(node)
        await join_all(nodes, seed=5)
        publishers = [n for n, kind in zip(nodes, kinds) if kind != "tiny"]
        documents = mixed_corpus()

        published = []
        for data in documents:
            publisher = rng.choice(publishers)
            result = await PatternLibrary(publisher).publish(data)
            assert result.replicas >= 1
            published.append((publisher, data))
        await settle(nodes)
        assert over_budget(nodes) == []

        # A round of re-replication, every replica due, on every node at once.
        for node in nodes:
            node.config = node.config.replace(replicate_interval=0.001)
        await asyncio.sleep(0.01)
        await asyncio.gather(*(n.replicate_held() for n in nodes))
        await settle(nodes)
        assert over_budget(nodes) == []

        for publisher, data in published:
            assert any(complete(n, data) for n in nodes if n is not publisher), "only its publisher holds it"
        for publisher, data in published:
            reader = rng.choice([n for n in nodes if n is not publisher])
            fetched = await PatternLibrary(reader).fetch(hashlib.sha256(data).hexdigest())
            assert fetched.data == data
        await settle(nodes)
        assert over_budget(nodes) == []

        tiny = [n for n, kind in zip(nodes, kinds) if kind == "tiny"]
        phones = [n for n, kind in zip(nodes, kinds) if kind == "phone"]
        assert sum(n.protocol.stats["store_refused_full"] for n in tiny) > 0, "no tiny node was ever full"
        assert all(n.store.used_bytes_by_role()["replica"] == 0 for n in phones), "a phone holds replicas"
        assert sum(n.protocol.stats["store_refused_light"] for n in phones) > 0
    finally:
        stop_all(nodes)
