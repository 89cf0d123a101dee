"""verl on CPU: a ``cpu`` platform and a transformers rollout server (``train_rgrpo.py verl-cpu``).

verl 0.9.1 has no CPU training path: it falls back to the ``nvidia`` platform, its FSDP
engines are registered for ``cuda``/``npu`` only, and its rollout servers are vLLM,
SGLang and TensorRT-LLM. This module supplies what is missing, through verl's own
extension points wherever one exists, so that verl's real trainer (``main_ppo`` -> the
v1 trainer, TransferQueue, FSDP2 actor and reference, the agent loop, verl's weight sync)
runs end to end on a CPU with a tiny model. It is loaded through
``VERL_USE_EXTERNAL_MODULES=agents.verl.cpu`` (see :func:`verl_cpu_environment`), which
``import verl`` imports in the driver and in every Ray worker *before* anything asks for
the platform, and which raises on an import error instead of logging it at DEBUG.

What it registers (extension points of verl 0.9.1):

- :class:`CPUPlatform` with ``PlatformRegistry.register("cpu")``, selected by
  ``VERL_PLATFORM=cpu`` (``plugin/platform/platform_manager.py``). Its device module is
  ``torch.cpu`` plus the few functions verl calls that ``torch.cpu`` lacks
  (``empty_cache``, ``mem_get_info``, RNG state, memory counters).
- verl's FSDP engines (``FSDPEngineWithLMHead``, ``FSDPEngineWithValueHead``) for
  ``device="cpu"`` with ``EngineRegistry.register`` (``workers/engine/base.py``); they
  are registered for ``cuda``/``npu`` only (``workers/engine/fsdp/transformer_impl.py``).
- The ``transformers`` rollout: :class:`TransformersReplica` in
  ``RolloutReplicaRegistry`` (``workers/rollout/replica.py``), a Ray actor
  :class:`TransformersServer` that answers verl's token-in/token-out ``generate`` calls
  with batched, per-request-seeded ``transformers`` generation
  (:mod:`agents.verl.generation`), and :class:`TransformersServerAdapter`, the
  rollout object verl builds in each actor worker, whose ``update_weights`` sends the
  actor's weights to the server after every step (verl's ``naive`` checkpoint engine).

verl internals it relies on, none of which has a public extension point:

- ``workers/rollout/base.py::_ROLLOUT_REGISTRY`` (a module dict, the only way
  ``get_rollout_class`` finds a server adapter);
- :func:`patch_gloo_process_group`: ``engine_workers.py`` builds the backend string
  ``"cpu:gloo,<device>:<nccl backend>"``, which on a ``cpu`` device is
  ``"cpu:gloo,cpu:gloo"`` and torch rejects ("Duplicate device type cpu"). The patch
  passes ``backend="gloo"`` to verl's own ``initialize_global_process_group_ray``;
- :func:`patch_forward_only_offload`: FSDP2 forward-only engines (the reference) always
  get ``CPUOffloadPolicy(pin_memory=True)`` (``transformer_impl.py``), and
  ``pin_memory()`` needs a CUDA driver. On a CPU there is nothing to offload to, so the
  patch gives those engines verl's no-offload policy (``OffloadPolicy()``);
- ``get_device_id()`` is used both as ``tensor.to(device_id)`` and inside
  ``f"{device}:{device_id}"``: :class:`CPUDeviceId` is the string ``"cpu"`` that formats
  as ``0``, so both forms name the CPU.

The settings the trainer needs besides these (FSDP2, sdpa attention, no padding removal
or torch.compile, one TransferQueue storage unit, logical Ray GPUs, float32, the
quick-polling replay buffer of :mod:`agents.verl.sampler`) are Hydra overrides composed
in :mod:`agents.verl.config`. :data:`SUPPORTED_VERL` is the only
verl version this module was written against; :func:`check_verl_version` refuses
others before a run starts.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import types
from contextlib import contextmanager
from typing import Any, Generator, Optional

import ray
import torch

SUPPORTED_VERL = "0.9.1"
"""The verl release whose internals (listed in the module docstring) this module patches."""
PLATFORM_NAME = "cpu"
ROLLOUT_NAME = "transformers"
"""``actor_rollout_ref.rollout.name`` of the CPU rollout."""
SERVER_NAME_PREFIX = "transformers_server_"

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))


def check_verl_version(version: str | None = None) -> None:
    """Raise ``RuntimeError`` unless verl is the release this module was written against."""
    if version is None:
        import verl

        version = verl.__version__
    if version != SUPPORTED_VERL:
        raise RuntimeError(
            f"train_rgrpo.py verl-cpu patches verl internals of verl {SUPPORTED_VERL} (see agents/verl/cpu.py); "
            f"verl {version} is installed. Install verl=={SUPPORTED_VERL} or use train_rgrpo.py verl on GPUs."
        )


def verl_cpu_environment() -> dict[str, str]:
    """Environment variables that make every process of a verl run load the CPU pieces.

    Set them before ``ray.init`` (Ray workers inherit them): ``VERL_PLATFORM`` selects the
    platform; ``VERL_USE_EXTERNAL_MODULES`` makes ``import verl`` import this module and
    the r-GRPO plug-in first, raising if either fails.
    """
    return {
        "VERL_PLATFORM": PLATFORM_NAME,
        "VERL_USE_EXTERNAL_MODULES": f"{__name__},agents.verl.plugin",
        # TransferQueue's I/O threads default to 8 and warn on every call when there are fewer cores.
        "TQ_NUM_THREADS": str(min(8, os.cpu_count() or 1)),
    }


# --------------------------------------------------------------------------- the platform
class CPUDeviceId(str):
    """``get_device_id()`` on a CPU: the string ``"cpu"`` (so ``tensor.to(device_id)`` and
    ``torch.device(device_id)`` mean the CPU) that formats as ``0`` (so verl's
    ``f"{device_name}:{device_id}"`` is ``"cpu:0"``)."""

    def __new__(cls) -> "CPUDeviceId":
        return super().__new__(cls, "cpu")

    def __format__(self, spec: str) -> str:
        return format(0, spec)


@functools.cache
def _cpu_device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda``-style functions verl calls on its device module
    (one per process)."""
    import platform

    module = types.ModuleType("verl_cpu_device", "torch.cpu with the torch.cuda functions verl calls")
    module.__dict__.update({k: v for k, v in vars(torch.cpu).items() if not k.startswith("__")})

    def mem_get_info(device: Any = None) -> tuple[int, int]:
        pages, free = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return free * size, pages * size

    def zero(*args: Any, **kwargs: Any) -> int:
        return 0

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    module.__dict__.update(
        current_device=lambda: CPUDeviceId(),
        get_device_name=lambda device=None: f"CPU {platform.processor() or platform.machine()}",
        empty_cache=nothing,
        ipc_collect=nothing,
        set_per_process_memory_fraction=nothing,
        mem_get_info=mem_get_info,
        memory_allocated=zero,
        memory_reserved=zero,
        max_memory_allocated=zero,
        max_memory_reserved=zero,
        reset_peak_memory_stats=nothing,
        get_rng_state=lambda device=None: torch.get_rng_state(),
        set_rng_state=lambda state, device=None: torch.set_rng_state(state),
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
    )
    return module


class CPUPlatformMixin:
    """What ``CPUPlatform`` implements of verl's ``PlatformBase`` interface: torch on the
    CPU, gloo. :func:`_register_platform` joins it to that base when it registers the
    platform, because importing verl's base here would import verl before :func:`register`
    has held its plug-ins back and checked its version."""

    device_name = property(lambda self: "cpu")
    vendor_name = property(lambda self: "cpu")
    device_module = property(lambda self: _cpu_device_module())

    def is_available(self) -> bool:
        return True

    def current_device(self) -> CPUDeviceId:
        return CPUDeviceId()

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[None, None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # verl's resource pools always ask for accelerator bundles; the run gives Ray
        # logical "GPU"s (ray_init.num_gpus) that stand for CPU worker slots.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None


def _register_platform() -> None:
    """Register ``CPUPlatform`` (:class:`CPUPlatformMixin` on verl's ``PlatformBase``) as
    verl's ``cpu`` platform, and name it in this module."""
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry

    @PlatformRegistry.register(platform=PLATFORM_NAME)
    class CPUPlatform(CPUPlatformMixin, PlatformBase):
        """verl platform for a machine without an accelerator: torch on the CPU, gloo."""

    globals()["CPUPlatform"] = CPUPlatform


# --------------------------------------------------------------------------- engines and patches
def _register_fsdp_engines() -> None:
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
        FSDPEngineWithLMHead
    )
    EngineRegistry.register(model_type="value_model", backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
        FSDPEngineWithValueHead
    )


def patch_gloo_process_group() -> None:
    """Make verl's engine workers initialise torch.distributed with plain ``gloo``."""
    from verl.workers import engine_workers

    original = engine_workers.initialize_global_process_group_ray
    if getattr(original, "_verl_cpu", False):
        return

    def initialize_gloo(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_gloo._verl_cpu = True
    engine_workers.initialize_global_process_group_ray = initialize_gloo


def patch_forward_only_offload() -> None:
    """Give FSDP2 forward-only engines verl's no-offload policy instead of a pinned CPU offload."""
    from torch.distributed.fsdp import OffloadPolicy

    from verl.workers.engine.fsdp import transformer_impl

    if getattr(transformer_impl.CPUOffloadPolicy, "_verl_cpu", False):
        return

    def no_offload(pin_memory: bool = True) -> OffloadPolicy:
        return OffloadPolicy()

    no_offload._verl_cpu = True
    transformer_impl.CPUOffloadPolicy = no_offload


# --------------------------------------------------------------------------- the rollout
@ray.remote
class TransformersServer:
    """One rollout server: a transformers model answering verl's token-in/token-out requests.

    The model loads through ``AutoModelForImageTextToText``, so any family of
    :mod:`agents.qwen.family` is served as it is (Qwen2.5-VL and Qwen3-VL are run end to
    end: ``tests/agents/verl/test_cpu.py``); the image features are its own processor's.

    Concurrent requests are generated together, one ``generate`` per batch with the KV
    cache, and sampled with vLLM's per-request ``seed`` semantics
    (:class:`agents.verl.generation.BatchedGenerator`); the model's weights are replaced
    by the actor's after each training step through :meth:`update_weights`, never while a
    batch is being generated.
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from agents.verl.generation import BatchedGenerator
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig, RolloutConfig

        def as_dataclass(value: Any, cls: type) -> Any:
            return value if isinstance(value, cls) else omega_conf_to_dataclass(value, dataclass_type=cls)

        # The server shares the 2 cores with the actor; VERL_CPU_ROLLOUT_THREADS sets its share.
        torch.set_num_threads(int(os.getenv("VERL_CPU_ROLLOUT_THREADS", "1")))
        self.config = as_dataclass(config, RolloutConfig)
        model_config = as_dataclass(model_config, HFModelConfig)
        path = model_config.local_path or model_config.path
        dtype = getattr(torch, str(self.config.dtype), torch.float32)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").eval()
        self.processor = AutoProcessor.from_pretrained(path)
        # max_num_seqs caps a batch as it caps vLLM's; 1 serves the requests one at a time
        self.engine = BatchedGenerator(
            self.model, self.processor, self.config.response_length, seed=int(self.config.seed),
            max_batch=max(1, int(self.config.max_num_seqs)),
        )
        self.replica_rank = replica_rank
        self.global_steps: int | None = None

    def get_server_address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address().strip("[]"), 0

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ):
        from agents.verl.generation import Request
        from verl.workers.rollout.replica import TokenOutput

        if video_data or audio_data:
            raise NotImplementedError("the transformers CPU rollout takes text and images only")
        request = Request(list(prompt_ids), dict(sampling_params), list(image_data or []))
        token_ids, log_probs = await self.engine.serve(request)
        want_log_probs = bool(sampling_params.get("logprobs", False))
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if want_log_probs else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def batching(self) -> dict[str, int]:
        """How many batches and requests the server generated (for tests and benchmarks)."""
        return {"batches": self.engine.batches, "requests": self.engine.requests}

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the actor's weights (names as in the HF checkpoint); returns how many tensors."""
        async with self.engine.lock:
            own = self.model.state_dict()
            unknown = sorted(set(state_dict) - set(own))
            if unknown:
                raise KeyError(f"transformers rollout: the actor sent weights the model does not have: {unknown[:5]}")
            with torch.no_grad():
                for name, tensor in state_dict.items():
                    own[name].copy_(tensor.to(own[name].dtype))
            if global_steps is not None:
                self.global_steps = global_steps
        return len(state_dict)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # The control calls verl makes on every server; on a CPU there is no memory to free.
    async def wake_up(self) -> None: ...
    async def sleep(self) -> None: ...
    async def clear_kv_cache(self) -> None: ...
    async def release_kv_cache(self) -> None: ...
    async def resume_kv_cache(self) -> None: ...
    async def abort_all_requests(self, reject_request: bool = False) -> None: ...
    async def resume_generation(self) -> None: ...
    async def start_profile(self, **kwargs: Any) -> None: ...
    async def stop_profile(self) -> None: ...


def _replica_class():
    from verl.workers.rollout.replica import RolloutReplica

    class TransformersReplica(RolloutReplica):
        """A rollout replica of one :class:`TransformersServer` actor."""

        def rollout_worker_use_gpu(self) -> bool:
            return False

        async def launch_servers(self) -> None:
            server = TransformersServer.options(
                name=f"{SERVER_NAME_PREFIX}{self.replica_rank}{self.name_suffix}",
                max_concurrency=self.max_concurrency,
                num_cpus=0,
            ).remote(self.config, self.model_config, self.replica_rank)
            self.servers = [server]
            address, port = await server.get_server_address.remote()
            self._server_handle = server
            self._server_address = f"{address}:{port}"

    return TransformersReplica


def _server_adapter_class():
    from verl.workers.rollout.base import BaseRollout

    class TransformersServerAdapter(BaseRollout):
        """The rollout object in each actor worker: sends the actor's weights to the server."""

        def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any):
            super().__init__(config, model_config, device_mesh)
            self.replica_rank = int(device_mesh["dp"].get_local_rank()) if device_mesh is not None else 0
            self.is_leader = device_mesh is None or device_mesh["infer_tp"].get_local_rank() == 0
            self._server = None

        def _server_handle(self):
            if self._server is None:
                self._server = ray.get_actor(f"{SERVER_NAME_PREFIX}{self.replica_rank}")
            return self._server

        async def resume(self, tags: list[str]) -> None:
            return None

        async def release(self) -> None:
            return None

        async def update_weights(
            self,
            weights: Generator[tuple[str, torch.Tensor], None, None],
            wire_format: str = "named_tensors",
            global_steps: int | None = None,
            **kwargs: Any,
        ) -> None:
            if wire_format != "named_tensors":
                raise NotImplementedError(f"the transformers CPU rollout takes named tensors, not {wire_format!r}")
            state = {}
            for name, tensor in weights:
                if hasattr(tensor, "full_tensor"):
                    tensor = tensor.full_tensor()
                state[name] = tensor.detach().to("cpu").clone()
            if self.is_leader:
                await self._server_handle().update_weights.remote(state, global_steps)

    return TransformersServerAdapter


def _register_rollout() -> None:
    from verl.workers.rollout import base, replica

    replica.RolloutReplicaRegistry.register(ROLLOUT_NAME, _replica_class)
    adapter = _server_adapter_class()
    globals()["TransformersServerAdapter"] = adapter
    base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.TransformersServerAdapter"


def _import_verl_holding_plugins_back() -> None:
    """``import verl`` with its plug-in hooks held back, when this module is imported first.

    That happens when a Ray worker unpickles :class:`TransformersServer`: the worker imports
    this module before verl. ``import verl`` would then load the r-GRPO plug-in, which
    imports verl's trainer, which asks for the platform before this module has registered
    it. So verl is imported without its hooks here, and :func:`register` loads the plug-in
    once the platform exists.
    """
    if "verl" in sys.modules:
        return
    keys = ("VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({"VERL_USE_EXTERNAL_MODULES": "", "VERL_USE_EXTERNAL_PLUGINS": "none"})
    try:
        import verl  # noqa: F401
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register() -> None:
    """Register the CPU platform, the CPU FSDP engines, the transformers rollout and the
    two patches, then load the r-GRPO plug-in. Idempotent; run on import."""
    from agents.verl import quiet

    quiet.install()  # before verl's engines are imported and warn about the ones not installed
    _import_verl_holding_plugins_back()
    check_verl_version()
    from verl.plugin.platform.platform_manager import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is None:
        _register_platform()
    _register_fsdp_engines()
    patch_gloo_process_group()
    patch_forward_only_offload()
    _register_rollout()
    import agents.verl.plugin  # noqa: F401  (what verl's plug-in hook loads, once the platform exists)


register()
