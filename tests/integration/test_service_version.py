"""Each service reports, in its NATS micro PING (which the gateway's /health shows per service), the version of the
package installed, not a number written once in the code."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import msgspec
import nats.errors

from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import wait_for


async def test_a_running_service_reports_the_installed_version(own_nats: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")},
           "SWITCHYARD_NATS_URL": own_nats, "SWITCHYARD_PORT": str(pick_free_port(set()))}
    router = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.services.router"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    nc = await natsio.connect(own_nats, "version-tests", 10)
    pongs: list[dict] = []
    try:
        async def answered() -> bool:
            try:
                pongs.append(msgspec.json.decode((await nc.request("$SRV.PING.router", b"", timeout=0.5)).data))
            except (TimeoutError, nats.errors.NoRespondersError):      # not serving yet
                assert router.poll() is None, router.stderr.read()[-2000:]
            return bool(pongs)
        await wait_for(answered, timeout_s=30, interval_s=0.2, what="the router's PING")
    finally:
        await nc.close()
        router.terminate()
        router.wait(15)
    assert pongs[0]["version"] == version("switchyard-gateway"), pongs
