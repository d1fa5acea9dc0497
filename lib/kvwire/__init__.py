"""kvwire: when and how to compress a KV cache before it crosses the wire.

See README.md for the study and docs/ARCHITECTURE.md for the modules.
"""

import os as _os

# libgomp's default wait policy (spin, then sleep) made small torch ops (round, exp) take ~8 ms
# each on the 2-vCPU VMs we measure on; an explicit policy removes the stall. Only applies if
# set before torch loads its OpenMP runtime, and never overrides a user's choice.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
