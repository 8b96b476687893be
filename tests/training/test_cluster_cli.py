"""`learnrec features cluster`: form a local cluster, reuse it, stop it, bring it back from its nodes.conf."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from features.cluster_local import read_cluster, stop_cluster
from training.cli import app

pytestmark = pytest.mark.slow


def test_cluster_command_forms_reuses_stops_and_reforms(tmp_path: Path) -> None:
    runner = CliRunner()
    root = tmp_path / "cluster"
    nothing = runner.invoke(app, ["features", "cluster", "--dir", str(root), "--stop"])
    assert "no node running" in nothing.output
    try:
        first = runner.invoke(app, ["features", "cluster", "--dir", str(root)])
        assert first.exit_code == 0, first.output
        assert "formed" in first.output and "3 primaries, 3 replicas" in first.output
        url = re.search(r"LEARNREC_REDIS__URL=(\S+)", first.output)
        assert url is not None and "LEARNREC_REDIS__CLUSTER=true" in first.output
        client = redis.RedisCluster.from_url(url.group(1))
        client.set("k", "v")
        client.close()
        again = runner.invoke(app, ["features", "cluster", "--dir", str(root)])
        assert "running" in again.output
        stopped = runner.invoke(app, ["features", "cluster", "--dir", str(root), "--stop"])
        assert "stopped 6 node(s)" in stopped.output
        # started again, each node comes back on its port with its slots and data (AOF)
        back = runner.invoke(app, ["features", "cluster", "--dir", str(root)])
        assert back.exit_code == 0 and "running" in back.output, back.output
        client = redis.RedisCluster.from_url(url.group(1))
        assert client.get("k") == b"v"
        client.close()
    finally:
        stop_cluster(root)
    known = read_cluster(root)
    assert known is not None and len(known.nodes) == 6
