"""An upstream model-server simulator (Ollama, vLLM, OpenAI) for tests, demos and benchmarks.

    sim = Simulator(SimConfig(tokens=8))
    await sim.start()                      # port 0: any free port; sim.url is the base URL
    sim.configure(failure_kind="http_429", failure_rate=0.5)
    await sim.stop()

`main(argv)` is the `switchyard simulate-upstream` command; `python -m switchyard_gateway.simulator` runs it.
"""

from switchyard_gateway.simulator.cli import main
from switchyard_gateway.simulator.config import ConfigError, SimConfig
from switchyard_gateway.simulator.server import SimStats, Simulator

__all__ = ["ConfigError", "SimConfig", "SimStats", "Simulator", "main"]
