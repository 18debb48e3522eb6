"""Run one stage under FSDP2 with CPU processes (gloo): what tests/test_fsdp.py launches.

    accelerate launch --config_file conf/accelerate/fsdp.yaml --num_processes 2 tests/fsdp_cpu.py stages/pretrain.py

accelerate 1.15 turns an FSDP config on only for accelerator devices: `AcceleratorState` sets
`distributed_type = FSDP` when the process group is MULTI_GPU / MULTI_XPU / ... and never when it is
MULTI_CPU, so on a CPU-only machine the same launch would train as plain DDP (lmforge refuses that run).
The sharding itself has no such limit: torch 2.13's `fully_shard` runs on a CPU device mesh over gloo.
This shim lifts that one gate and changes nothing else, so the Trainer, accelerate's `fsdp2_prepare_model`
(one FSDP unit per block of the model's `_no_split_modules`), the FULL_STATE_DICT gathers and lmforge's
saves run as they do on GPUs. It is a test harness, not a way to train: FSDP on CPU saves nothing over DDP.
"""

import runpy
import sys

from accelerate import state
from accelerate.utils import DistributedType

_accelerator_state_init = state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs) -> None:
    _accelerator_state_init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # read by later states
        self.fsdp_plugin = plugin


if __name__ == "__main__":
    state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
