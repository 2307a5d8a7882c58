"""Benchmark: what meeting new contacts costs a node that holds much, ours against stock ``kademlia``.

    python -m aether.simulations.bench_handoff [--held 1000,10000,50000] [--newcomers 10] [--seed 1] [--out FILE.json]

Kademlia (§2.5) has a node hand a newly met node the values it now belongs
with. Stock ``welcome_if_new`` does it for each new contact, inside the
datagram handler: for every stored key, a k-closest query of the routing
table. Ours gathers new contacts for ``handoff_delay`` and makes one pass for
all of them (``AetherNode._hand_off_plan``): it reads keys without bytes,
decides once per place, and skips by bisection the places a known contact is
closer to. A node that meets contacts all day (every lookup through a large
network meets some) pays this each time, in proportion to what it holds.

For each held count H, one node of each implementation in this process:

* **the network around it** (from ``--seed`` alone): ``NETWORK`` random node
  IDs; the node's routing table holds, for each bucket depth along its own ID,
  up to k = 20 of them from that bucket's range (what a full table holds);
* **what it holds**: H values of ``VALUE_BYTES`` under keys near its own ID
  (sharing its first ``log2(NETWORK / k)`` bits, where the keys it is among
  the k closest to lie) — ours as replica blocks in its SQLite store, stock in
  its in-memory storage under the same keys;
* **the newcomers**: ``--newcomers`` new contacts: half are nodes joining next
  to this one (sharing two more bits of its ID than the keys it holds: they
  are handed values), half are nodes of the network it had not met.

Measured, in CPU seconds of this process (``time.process_time``), the decision
of what goes to whom; the STOREs themselves are not timed on either side:

* **stock**: ``welcome_if_new(newcomer)`` for each newcomer in turn (each
  starts its STOREs as tasks and returns);
* **ours, one at a time**: one pass per newcomer, as when contacts trickle in
  more than ``handoff_delay`` apart;
* **ours, batched**: one pass for all newcomers, as when they arrive together.

Reported per H: milliseconds per newcomer for each, the ratio stock / ours,
and how many STOREs each decided on. The counts differ by design: stock
hashes its stored keys once more before it compares distances (its
``digest(key)`` of a key that is already a digest), so it decides about other
places than the keys it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from aether.simulations.bench_dht import machine, source_revision
from aether.simulations.network import QUIET, start_node
from aether.storage.store import BLOCK

NETWORK = 100_000
"""Node IDs in the modelled network around the measured node."""
K = 20
VALUE_BYTES = 1024


def neighbourhood(seed: int, held: int, newcomers: int) -> dict[str, Any]:
    """The node's ID, its contacts, the keys it holds and the newcomers, from the seed alone."""
    rng = random.Random(seed)
    own = rng.getrandbits(160)
    ids = [rng.getrandbits(160) for _ in range(NETWORK)]
    by_depth: dict[int, list[int]] = {}
    for other in ids:
        by_depth.setdefault(160 - (other ^ own).bit_length(), []).append(other)
    contacts = [c for depth in sorted(by_depth) for c in by_depth[depth][:K]]
    shared = math.ceil(math.log2(NETWORK / K))
    keys = sorted({own ^ rng.getrandbits(160 - shared) for _ in range(held)})
    known = set(contacts)
    strangers = [i for i in ids if i not in known]
    # Half are nodes joining next to this one (a full table already knows every node there).
    joining = [own ^ rng.getrandbits(160 - shared - 2) for _ in range(newcomers // 2)]
    chosen = joining + rng.sample(strangers, newcomers - newcomers // 2)
    return {"own": own, "contacts": contacts, "keys": keys, "newcomers": chosen}


def _node(i: int, port: int) -> Node:
    # Ports nobody listens on: stock pings a full bucket's head, and those pings go nowhere.
    return Node(i.to_bytes(20, "big"), "127.0.0.1", port)


async def measure_stock(hood: dict[str, Any]) -> dict[str, Any]:
    server = Server(ksize=K, node_id=hood["own"].to_bytes(20, "big"))
    await server.listen(0, interface="127.0.0.1")
    try:
        for i, c in enumerate(hood["contacts"]):
            server.protocol.router.add_contact(_node(c, 20000 + i % 20000))
        value = bytes(VALUE_BYTES)
        for key in hood["keys"]:
            server.storage[key.to_bytes(20, "big")] = value
        started = []
        original = server.protocol.call_store

        def counted(node: Node, key: bytes, value: bytes):
            started.append(key)
            return original(node, key, value)

        server.protocol.call_store = counted
        t = time.process_time()
        for i, newcomer in enumerate(hood["newcomers"]):
            server.protocol.welcome_if_new(_node(newcomer, 40000 + i))
        cpu = time.process_time() - t
        return {"cpu_s": cpu, "stores": len(started)}
    finally:
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        server.stop()


async def measure_ours(hood: dict[str, Any], home: Path) -> dict[str, Any]:
    node = await start_node(home, QUIET)
    try:
        # XOR distances are unchanged when every ID is XORed with one constant: the
        # modelled neighbourhood is moved onto this node's own ID.
        shift = hood["own"] ^ node.node.long_id
        for i, c in enumerate(hood["contacts"]):
            node.protocol.router.add_contact(_node(c ^ shift, 20000 + i % 20000))
        value = bytes(VALUE_BYTES)
        for key in hood["keys"]:
            node.store.put((key ^ shift).to_bytes(20, "big"), value, kind=BLOCK, role="replica")
        newcomers = [_node(n ^ shift, 40000 + i) for i, n in enumerate(hood["newcomers"])]
        t = time.process_time()
        single = sum([len(await node._hand_off_plan([n])) for n in newcomers])
        one_at_a_time = time.process_time() - t
        t = time.process_time()
        batched = len(await node._hand_off_plan(newcomers))
        return {"cpu_s": one_at_a_time, "stores": single,
                "batched_cpu_s": time.process_time() - t, "batched_stores": batched}
    finally:
        node.stop()


async def run(held_counts: list[int], newcomers: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for held in held_counts:
        hood = neighbourhood(seed, held, newcomers)
        stock = await measure_stock(hood)
        with tempfile.TemporaryDirectory(prefix="aether-bench-handoff-") as tmp:
            ours = await measure_ours(hood, Path(tmp) / "node")
        per = lambda s: round(1000 * s / newcomers, 3)  # noqa: E731
        row = {
            "held": len(hood["keys"]), "contacts": len(hood["contacts"]), "newcomers": newcomers,
            "stock_ms_per_newcomer": per(stock["cpu_s"]),
            "ours_ms_per_newcomer": per(ours["cpu_s"]),
            "ours_batched_ms_per_newcomer": per(ours["batched_cpu_s"]),
            "stock_stores": stock["stores"], "ours_stores": ours["stores"], "ours_batched_stores": ours["batched_stores"],
        }
        row["ratio_stock_to_ours"] = round(stock["cpu_s"] / ours["cpu_s"], 2) if ours["cpu_s"] else None
        row["ratio_stock_to_ours_batched"] = round(stock["cpu_s"] / ours["batched_cpu_s"], 2) if ours["batched_cpu_s"] else None
        rows.append(row)
        print(f"held {row['held']:>7,}: stock {row['stock_ms_per_newcomer']:>9.2f} ms per newcomer, ours "
              f"{row['ours_ms_per_newcomer']:>8.2f} ({row['ratio_stock_to_ours']}x), batched "
              f"{row['ours_batched_ms_per_newcomer']:>7.2f} ({row['ratio_stock_to_ours_batched']}x); STOREs decided: "
              f"stock {row['stock_stores']}, ours {row['ours_stores']} / {row['ours_batched_stores']}", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aether.simulations.bench_handoff", description=__doc__.split("\n\n")[0])
    p.add_argument("--held", default="1000,10000,50000", help="values held, comma-separated (default 1000,10000,50000)")
    p.add_argument("--newcomers", type=int, default=10, help="new contacts met (default 10)")
    p.add_argument("--seed", type=int, default=1, help="seed of the network, keys and newcomers (default 1)")
    p.add_argument("--out", type=Path, help="write the results as JSON to this file")
    args = p.parse_args(argv)
    try:
        args.held_list = [int(s) for s in args.held.split(",") if s.strip()]
    except ValueError:
        p.error("--held must be whole numbers separated by commas")
    if not args.held_list or min(args.held_list) < 1:
        p.error("every held count must be at least 1")
    if args.newcomers < 2:
        p.error("--newcomers must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = {
        "command": " ".join(["python -m aether.simulations.bench_handoff", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "revision": source_revision(), "machine": machine(),
        "network": NETWORK, "k": K, "value_bytes": VALUE_BYTES,
        "results": asyncio.run(run(args.held_list, args.newcomers, args.seed)),
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
