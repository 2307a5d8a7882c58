"""A peer flooding one node of a real network: its requests are dropped, its STOREs held to its allowance.

Twenty real nodes on loopback (nineteen honest ones on 127.0.0.1 and the
victim, whose limits are set low so that a short flood passes them many times
over) and a flooding process on 127.0.0.2 (:mod:`aether.simulations.flood`)
that proves its node ID like any aether node and then sends FIND_NODE, FIND_VALUE and STORE of valid blocks as fast as its
socket goes. No assert is about elapsed time: the allowance the flooder's
stored bytes are held to is computed from the time the flood lasted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from kademlia.node import Node

from aether.node.values import Block, block_key
from aether.simulations.flood import BLOCK_BYTES
from aether.simulations.network import address_of, local_network, start_node
from aether.storage.store import value_charge

from .conftest import QUIET, wait_for

VICTIM = QUIET.replace(requests_per_second=20.0, requests_burst=100, store_bytes_per_second=16 * 1024,
                       store_burst_bytes=256 * 1024)
FLOODER = "127.0.0.2"


async def start_flooder(victim: tuple[str, int], seconds: float) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aether.simulations.flood", victim[0], str(victim[1]), "--bind", FLOODER,
        "--seconds", str(seconds), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 22,
    )
    assert (await asyncio.wait_for(process.stdout.readline(), 30)).strip() == b"ready"
    return process


async def stop_flooder(process: asyncio.subprocess.Process) -> dict:
    process.stdin.close()
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    await asyncio.wait_for(process.wait(), 30)
    return json.loads(line)


async def test_flooder_is_held_to_its_allowance_while_honest_lookups_succeed(tmp_path):
    async with local_network(tmp_path / "net", 19, QUIET, seed=3) as honest:
        victim = await start_node(tmp_path / "victim", VICTIM)
        try:
            await victim.bootstrap([address_of(honest[0])])
            blocks = [os.urandom(2000) for _ in range(10)]
            for i, data in enumerate(blocks):
                assert (await honest[i].put_block(data)).stored > 0
            via_victim = Node(victim.node.id, *address_of(victim))
            before = dict(victim.protocol.stats)

            started = time.monotonic()
            flooder = await start_flooder(address_of(victim), seconds=60)
            try:
                flooding = victim.protocol.stats["rpc_store"] + 1000
                assert await wait_for(lambda: victim.protocol.stats["rpc_store"] > flooding, timeout=30)
                # Honest peers, during the flood: lookups that start at the victim find every block,
                # and the victim itself still answers them. The flooder can fill the victim's socket
                # buffer faster than any node empties it (the kernel then drops datagrams before the
                # limits see them), so a given query may be lost: the victim must answer some of them.
                answered = 0
                for node, data in zip(honest[10:], blocks):
                    result = await node.lookup(block_key(data), want_value=True, seeds=[via_victim])
                    assert isinstance(result.value, Block) and result.value.data == data
                    replies = [await node.protocol.query(via_victim, node.node.id, False) for _ in range(5)]
                    answered += sum(reply.ok for reply in replies)
                assert answered > 0
            finally:
                sent = await stop_flooder(flooder)
            elapsed = time.monotonic() - started

            stats = victim.protocol.stats
            finds = sum(stats[f"rpc_{n}"] - before.get(f"rpc_{n}", 0) for n in ("find_node", "find_value"))
            dropped = stats["rate_dropped"] - before.get("rate_dropped", 0)
            assert dropped > 0.8 * finds, (dropped, finds)

            held = sum(value_charge(20, BLOCK_BYTES) for key in sent["keys"] if victim.store.contains(bytes.fromhex(key)))
            allowance = VICTIM.store_burst_bytes + VICTIM.store_bytes_per_second * elapsed
            assert sent["proven"], "the flooder proved its node ID: its STOREs are judged by the rate limit alone"
            assert sent["store_bytes"] > 4 * allowance, "the flood must offer far more than the allowance"
            assert held <= allowance, (held, allowance)
        finally:
            victim.stop()
            victim.store.close()
