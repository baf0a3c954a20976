"""The fault suite's own broker: one KRaft node whose PROXIED listener advertises a fixed port
where the tests' :class:`~tests.faults.proxy.FaultProxy` listens, and a ``kill -9`` + restart
on the same data directory and ports.

``devtools.kafka_local.KafkaCluster`` has no restart; this relaunches the node's JVM with the
same ``server.properties`` (the node directory is the broker log's parent) and keeps track of
the new process so that :meth:`FaultsBroker.stop` stops it before the cluster removes its data.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field

from bench.processes import free_port
from devtools import kafka_local
from devtools.kafka_local import TEST_BROKER_PROPERTIES, KafkaCluster, PlaintextListener
from tests.support.waiting import wait_until

RESTART_WITHIN = 90.0


@dataclass
class FaultsBroker:
    cluster: KafkaCluster
    proxy_port: int
    restarted: list[kafka_local.ManagedProcess] = field(default_factory=list)

    @classmethod
    def start(cls, extra: dict[str, str] | None = None) -> FaultsBroker:
        proxy_port = free_port()
        cluster = KafkaCluster(
            1,
            extra_broker_properties={**TEST_BROKER_PROPERTIES, **(extra or {})},
            listeners=[PlaintextListener("PROXIED", advertised_port=proxy_port)],
        )
        cluster.start()
        return cls(cluster, proxy_port)

    @property
    def bootstrap(self) -> str:
        """The broker's own PLAINTEXT listener (ground truth, never through the proxy)."""
        return self.cluster.bootstrap

    @property
    def proxied(self) -> tuple[str, int]:
        """Where the broker's PROXIED listener really listens (the proxy's upstream)."""
        host, _, port = self.cluster.listener("PROXIED").bootstrap.rpartition(":")
        return host, int(port)

    @property
    def process(self) -> kafka_local.ManagedProcess:
        return self.restarted[-1] if self.restarted else self.cluster.processes[0]

    async def kill_and_restart(self) -> float:
        """SIGKILL the broker's process group, start it again on the same data directory and
        wait until it answers Metadata. Returns the seconds the broker was unavailable."""
        old = self.process
        began = time.monotonic()
        old.signal(signal.SIGKILL)
        await asyncio.to_thread(old.wait_gone, 30.0)
        kafka_local._unregister(old)
        node_dir = old.log_path.parent
        # From this (main) thread, so PDEATHSIG still ties the JVM to the test process.
        new = kafka_local.launch_jvm(
            "kafka.Kafka",
            [str(node_dir / "server.properties")],
            name=old.name,
            log_path=old.log_path,
            jvm_options=self.cluster.jvm_options,
            cleanup_dir=self.cluster.data_dir,
        )
        self.restarted.append(new)

        async def back() -> bool:
            if not new.alive():
                raise AssertionError(f"restarted broker exited:\n{new.log_tail()}")
            seen = await asyncio.to_thread(kafka_local._metadata_broker_count, self.bootstrap, 5.0)
            return seen == 1

        await wait_until(back, within=RESTART_WITHIN, interval=0.2, message="broker back")
        return time.monotonic() - began

    def stop(self) -> None:
        for process in self.restarted:
            process.stop()
        self.cluster.stop()
