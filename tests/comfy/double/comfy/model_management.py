"""Double of ComfyUI ``comfy/model_management.py``: devices, loading (= patching) models, interrupts.

``load_models_gpu`` here moves a ModelPatcher's model to its load device and applies
its weight patches there, unpatching another clone of the same model first, which
is what a ComfyUI sampler relies on. Memory accounting, partial (low-VRAM) loading
and offloading are left out.
"""

from __future__ import annotations

import threading

import torch

#: The device the double reports as ComfyUI's choice ("cpu" in tests; a test may set "cuda").
DEVICE = "cpu"
#: Loaded ModelPatchers, most recent first (ComfyUI keeps LoadedModel wrappers here).
current_loaded_models: list = []


def get_torch_device() -> torch.device:
    return torch.device(DEVICE)


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    return get_torch_device()


def vae_device() -> torch.device:
    return get_torch_device()


def unet_dtype(device=None, model_params=0, supported_dtypes=None, weight_dtype=None) -> torch.dtype:
    return torch.float32


def soft_empty_cache(force: bool = False) -> None:
    pass


def cleanup_models_gc() -> None:
    pass


def load_models_gpu(
    models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False
):
    for patcher in models:
        for other in list(current_loaded_models):
            if other is not patcher and other.model is patcher.model:
                other.unpatch_model(other.offload_device)
                current_loaded_models.remove(other)
        if patcher in current_loaded_models:
            if patcher.model.current_weight_patches_uuid == patcher.patches_uuid:
                continue  # already loaded with these patches
            patcher.unpatch_model()
            current_loaded_models.remove(patcher)
        patcher.patch_model(patcher.load_device)
        current_loaded_models.insert(0, patcher)


def load_model_gpu(model):
    return load_models_gpu([model])


def unload_all_models() -> None:
    for patcher in list(current_loaded_models):
        patcher.unpatch_model(patcher.offload_device)
    current_loaded_models.clear()


def loaded_models(only_currently_used=False) -> list:
    return list(current_loaded_models)


# ---------------------------------------------------------------- interrupts
# ComfyUI (Oct 2025) derives this from Exception, not BaseException: `except Exception` catches it.


class InterruptProcessingException(Exception):
    pass


_interrupt_lock = threading.RLock()
_interrupt_processing = False


def interrupt_current_processing(value=True) -> None:
    global _interrupt_processing
    with _interrupt_lock:
        _interrupt_processing = value


def processing_interrupted() -> bool:
    with _interrupt_lock:
        return _interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global _interrupt_processing
    with _interrupt_lock:
        if _interrupt_processing:
            _interrupt_processing = False
            raise InterruptProcessingException()
