"""The Graph API simulator: Meta's stand-in for tests and a newcomer's first run (DESIGN.md "Sandbox")."""

from window_gate.sandbox.simulator import InProcess, create_simulator, simulator_state
from window_gate.sandbox.state import SimulatorConfig, SimulatorState

__all__ = ["InProcess", "SimulatorConfig", "SimulatorState", "create_simulator", "simulator_state"]
