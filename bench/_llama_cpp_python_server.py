"""``python -m llama_cpp.server`` under bastion's repack decision.

llama-cpp-python's server has no switch for llama.cpp's extra buffer types, so on a CPU with
AMX (where repacking crashes, llama.cpp issue 20824) this wrapper turns them off in the model
parameters every ``Llama`` starts from, then runs the server with the same arguments.
"""

from __future__ import annotations

import runpy
from typing import Any

import llama_cpp

from bastion.engine.cpu import decide_repack, read_cpu_flags

_system_info = llama_cpp.llama_print_system_info().decode()
if not decide_repack("auto", read_cpu_flags(), _system_info).enabled:
    _defaults = llama_cpp.llama_model_default_params

    def _no_repack() -> Any:
        params = _defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_model_default_params = _no_repack

runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
