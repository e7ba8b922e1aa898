"""Double of ComfyUI ``comfy/model_patcher.py``: ModelPatcher (clones share the model, not the patches).

Weight patches are kept per clone and written into the shared model only when a
clone is loaded (``patch_model``, called by ``model_management.load_models_gpu``);
the originals go to ``backup`` (one dict shared by all clones, as in ComfyUI) and
come back with ``unpatch_model``. Hooks, wrappers, callbacks, injections and
low-VRAM loading are left out.
"""

from __future__ import annotations

import collections
import copy
import uuid

import torch

from . import lora, utils


def _set_device(model, device) -> None:
    """ComfyUI's models carry a plain ``device`` attribute; a diffusers model has a read-only property."""
    try:
        model.device = device
    except AttributeError:
        pass


_Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if getattr(self.model, "device", None) is None:
            _set_device(self.model, offload_device)
        self.patches: dict[str, list] = {}
        self.backup: dict[str, _Backup] = {}
        self.object_patches: dict = {}
        self.object_patches_backup: dict = {}
        self.model_options: dict = {"transformer_options": {}}
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.patches_uuid = uuid.uuid4()
        self.parent = None
        if not hasattr(self.model, "current_weight_patches_uuid"):
            self.model.current_weight_patches_uuid = None

    def model_size(self) -> int:
        if self.size == 0:
            self.size = sum(t.nelement() * t.element_size() for t in self.model.state_dict().values())
        return self.size

    def clone(self) -> ModelPatcher:
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size, self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.backup = self.backup
        n.object_patches_backup = self.object_patches_backup
        n.parent = self
        return n

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name: str):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return utils.get_attr(self.model, name)

    def model_dtype(self):
        return self.model.get_dtype()

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        """Queue weight patches for the keys the model has; returns the keys taken."""
        model_sd = self.model.state_dict()
        taken = []
        for k, v in patches.items():
            key, offset, function = (
                (k, None, None) if isinstance(k, str) else (k[0], k[1], k[2] if len(k) > 2 else None)
            )
            if key in model_sd:
                taken.append(k)
                self.patches.setdefault(key, []).append((strength_patch, v, strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return taken

    def model_state_dict(self, filter_prefix=None):
        sd = self.model.state_dict()
        return {k: v for k, v in sd.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        if key not in self.patches:
            return
        weight = utils.get_attr(self.model, key)
        inplace = self.weight_inplace_update or inplace_update
        if key not in self.backup:
            self.backup[key] = _Backup(weight.to(device=self.offload_device, copy=inplace), inplace)
        temp = weight.to(device=device_to or weight.device, dtype=torch.float32, copy=True)
        out = lora.calculate_weight(self.patches[key], temp, key).to(weight.dtype)
        if inplace:
            utils.copy_to_param(self.model, key, out)
        else:
            utils.set_attr_param(self.model, key, out)

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k, obj in self.object_patches.items():
            old = utils.set_attr(self.model, k, obj)
            self.object_patches_backup.setdefault(k, old)
        if load_weights:
            if device_to is not None:
                self.model.to(device_to)
                _set_device(self.model, device_to)
            for key in self.patches:
                self.patch_weight_to_device(key, device_to)
            self.model.current_weight_patches_uuid = self.patches_uuid
            self.model.current_patcher = self
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            for k, bk in list(self.backup.items()):
                if bk.inplace_update:
                    utils.copy_to_param(self.model, k, bk.weight)
                else:
                    utils.set_attr_param(self.model, k, bk.weight)
            self.backup.clear()
            self.model.current_weight_patches_uuid = None
            if device_to is not None:
                self.model.to(device_to)
                _set_device(self.model, device_to)
        for k, old in list(self.object_patches_backup.items()):
            utils.set_attr(self.model, k, old)
        self.object_patches_backup.clear()
