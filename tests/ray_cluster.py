"""A real two-node Ray cluster on this machine, for tests: started, stopped, a node killed.

Each node is one ``ray start --block`` in a session of its own, so every process it starts
(GCS, raylet, workers and their children) shares its process group: stopping a node is one
``killpg`` of processes this helper started, never ``ray stop`` (which kills every Ray process
of the machine by name, other people's included). Ray gets its own ``--temp-dir``, random free
ports for what would otherwise take fixed ones, no dashboard and no usage stats.

Ray 2.60 replaces 127.0.0.1 in ``--node-ip-address`` and ``--address`` with the host's routable
address (``services.resolve_ip_for_localhost``), so the nodes listen on this host's own address;
the traffic still never leaves the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 120.0  # a contended 2-core machine takes 10-25 s per node
READY = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_env(base: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in base.items() if not key.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray 2.60 turns on token auth when ~/.ray/auth_token exists: keep the test the same anywhere.
    env["RAY_AUTH_MODE"] = "disabled"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


class Cluster:
    """A head and one more node; each with ``cpus`` CPUs and ``gpus`` declared (fake) GPUs."""

    def __init__(self, temp_dir: Path, env: dict[str, str], cpus: int = 2, gpus: int = 2):
        self.temp_dir, self.env = temp_dir, ray_env(env)
        self.cpus, self.gpus = cpus, gpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}

    def _start(self, role: str, args: list[str]) -> None:
        log = self.temp_dir / f"{role}.log"
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
                   f"--num-cpus={self.cpus}", f"--num-gpus={self.gpus}",
                   f"--resources={json.dumps({role: 1})}", "--disable-usage-stats",
                   f"--temp-dir={self.temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--object-store-memory={100 << 20}",
                   *args]  # fmt: skip
        with log.open("w") as out:
            self.nodes[role] = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # the node's processes form one group: killpg ends it
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while READY not in log.read_text(errors="replace"):
            if self.nodes[role].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {role} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def start(self) -> Cluster:
        self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                             f"--ray-client-server-port={free_port()}",
                             f"--dashboard-port={free_port()}"])  # fmt: skip
        self.add_node()
        return self

    def add_node(self) -> None:
        """(Re)start the second node; blocks until it is up."""
        self._start("second", [f"--address={self.address}"])

    def node_id(self, role: str) -> str:
        """Ray's id of a node, read from its raylet's command line."""
        import psutil  # a dependency of Ray

        for child in psutil.Process(self.nodes[role].pid).children(recursive=True):
            for arg in child.cmdline():
                if arg.startswith("--node_id="):
                    return arg.partition("=")[2]
        raise RuntimeError(f"no raylet under ray node {role}")

    def alive(self, role: str) -> bool:
        node = self.nodes.get(role)
        return node is not None and node.poll() is None

    def kill(self, role: str) -> None:
        """SIGKILL a node's whole process group: the node dies as a machine would."""
        node = self.nodes.pop(role, None)
        if node is None:
            return
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait(timeout=30)

    def stop(self) -> None:
        for role in list(self.nodes)[::-1]:  # the second node first, the head last
            self.kill(role)
