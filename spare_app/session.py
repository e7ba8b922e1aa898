"""The app's state and actions, shared by every browser tab; no gradio here.

One :class:`SpareApp` serves all tabs: a training runs on a thread of its own
(closing a tab does not stop it, and any tab shows its progress), one at a
time, and the model is used by one thing at a time (training, or re-rendering
a gallery). Tabs read the state with :meth:`SpareApp.view`, which says by
version numbers what changed since they last looked.

Every algorithm step is an engine call (``spare_core``): the sets, the
profile, the saliency, training, the LoRA file, previews. The toy scores come
from the toy world's evaluation (``spare_core.toy``), as in the demo.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from spare_core import (
    CancelToken,
    ErasureCancelled,
    ErasureConfig,
    Event,
    GenericDomain,
    Lora,
    build_lora,
    describe_error,
    erase,
    generate_images,
    load_images,
    measure_profile,
    open_model,
    plot_losses,
    plot_profile,
    plot_saliency,
    prepare_sets,
    preview,
    read_lora,
    save_png,
    select_modules,
    to_pil,
    write_json,
)

from . import forms

logger = logging.getLogger(__name__)

#: The model the app opens on: the toy model shipped with the package.
TOY_MODEL = "toy"
#: Gallery images are upscaled (without smoothing) to at least this many pixels.
GALLERY_CELL = 128
#: Stages in the order a run goes through them ("evaluate" only on the toy model).
RUN_STAGES = ("data", "profile", "saliency", "train", "preview", "evaluate")
STAGE_LABELS = {
    "data": "drawing the forget, surrogate and retain images",
    "profile": "measuring the timestep profile",
    "saliency": "choosing the modules (saliency)",
    "train": "training the sparse LoRA",
    "preview": "rendering before/after",
    "evaluate": "scoring UA, IRA and CRA on the toy classifiers",
}
BUSY = "a training is running: wait for it to finish, or cancel it"


@dataclass
class ErasureForm:
    """Everything the page sends to start an erasure, as typed."""

    concepts: str
    surrogates: str
    settings: dict[str, Any]
    seeds: str = ", ".join(map(str, forms.DEFAULT_SEEDS))
    preview_prompts: str = ""
    file_name: str = ""
    forget_images: Sequence[str] = ()
    model: str = TOY_MODEL
    device: str = "cpu"
    dtype: str = "fp32"


@dataclass
class Progress:
    """Where a run is: its stage and the stage's step of total."""

    stage: str = ""
    step: int = 0
    total: int = 0
    message: str = ""
    stages: tuple[str, ...] = RUN_STAGES  # the stages this run goes through, in order

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


@dataclass
class Shown:
    """The before/after galleries every tab shows, with the LoRA they come from."""

    title: str
    prompts: list[str]
    seeds: list[int]
    strength: float
    before: list[Image.Image]
    after: list[Image.Image]
    lora_path: Path | None = None
    scores: dict[str, Any] | None = None  # toy model only: {"before": [...], "after": [...]}
    render: Callable[[float], list[Image.Image]] | None = field(default=None, repr=False)


@dataclass
class View:
    """A copy of the state for one tab; ``versions`` say which parts changed."""

    status: str  # idle, running, done, cancelled, failed
    message: str
    progress: Progress
    losses: list[float]
    profile_plot: Image.Image | None
    saliency_plot: Image.Image | None
    shown: Shown | None
    run_folder: Path | None
    versions: dict[str, int]


def _gallery(images) -> list[Image.Image]:
    """Generations as PIL images, upscaled so that small models' pictures are visible."""
    return [to_pil(image, max(1, GALLERY_CELL // image.shape[-1])) for image in images]


class SpareApp:
    """The state of one running app and the actions its page calls."""

    def __init__(self, out_dir: str | Path, model: str = TOY_MODEL, device: str = "cpu", dtype: str = "fp32"):
        self.out_dir = Path(out_dir).resolve()
        self.default_model = (model, device, dtype)
        self._state_lock = threading.Lock()  # guards the fields below
        self._model_lock = threading.Lock()  # held while the model is in use
        self._backend_key: tuple[str, str, str] | None = None
        self._backend = None
        self._token: CancelToken | None = None
        self._thread: threading.Thread | None = None
        self.status = "idle"
        self.message = ""
        self.progress = Progress()
        self.losses: list[float] = []
        self.profile_plot: Image.Image | None = None
        self.saliency_plot: Image.Image | None = None
        self.shown: Shown | None = None
        self.run_folder: Path | None = None
        self.versions = {name: 0 for name in ("status", "progress", "losses", "profile", "saliency", "shown", "after")}

    # ------------------------------------------------------------------ reading the state

    def view(self) -> View:
        with self._state_lock:
            return View(
                self.status,
                self.message,
                replace(self.progress),
                list(self.losses),
                self.profile_plot,
                self.saliency_plot,
                self.shown,
                self.run_folder,
                dict(self.versions),
            )

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> View:
        """Wait for the running training to end (tests, and scripts driving the app)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.view()

    def _set(self, *parts: str, **fields: Any) -> None:
        with self._state_lock:
            for name, value in fields.items():
                setattr(self, name, value)
            for part in parts:
                self.versions[part] += 1

    # ------------------------------------------------------------------ the model and its defaults

    def backend(self, model: str | None = None, device: str | None = None, dtype: str | None = None):
        """The opened model (one at a time; opening another frees the last)."""
        key = (model or self.default_model[0], device or self.default_model[1], dtype or self.default_model[2])
        if key != self._backend_key:
            self._backend, self._backend_key = None, None
            self._backend = open_model(*key)
            self._backend_key = key
        return self._backend

    def domain(self, model: str | None = None):
        """The prompt domain of ``model`` (the one its backend brings), without opening another model."""
        model = model or self.default_model[0]
        if self._backend_key is not None and self._backend_key[0] == model:
            return self._backend.domain or GenericDomain()
        if model == TOY_MODEL:
            from spare_core.toy.domain import ToyDomain

            return ToyDomain()
        return GenericDomain()

    def default_retain_prompts(self, concepts: str, model: str | None = None) -> list[str]:
        """The prompts an erasure of ``concepts`` keeps by default (what the retain box is prefilled with)."""
        return self.domain(model).retain_prompts(forms.names(concepts))

    def default_preview_prompts(self, concepts: str, model: str | None = None) -> list[str]:
        """Gallery prompts: prompts naming each concept, then a few the erasure should leave alone."""
        erased = forms.names(concepts)
        if not erased:
            return []
        if (model or self.default_model[0]) == TOY_MODEL and all(_toy_kind(c) for c in erased):
            from spare_core.toy.erasure_eval import preview_prompts

            naming, kept = [], []
            for concept in erased:
                first, others = preview_prompts(concept)
                naming += first
                kept += [p for p in others if not any(c in p.split() for c in erased)]
            return _unique(naming + kept)[: 3 * len(erased) + 3]
        domain = self.domain(model)
        naming = [p for c in erased for p in domain.forget_prompts(c)[:2]]
        return _unique(naming + domain.retain_prompts(erased)[:3])

    # ------------------------------------------------------------------ actions

    def start(self, form: ErasureForm) -> str:
        """Check the form and start its erasure on a thread; ValueError (one line) if it cannot start."""
        if self.running:
            raise ValueError(BUSY)
        file_name = forms.safe_file_name(form.file_name or forms.default_file_name(forms.names(form.concepts)))
        seeds = forms.parse_seeds(form.seeds)
        prompts = forms.lines(form.preview_prompts) or self.default_preview_prompts(form.concepts, form.model)
        if not prompts:
            raise ValueError("no gallery prompt given: enter at least one prompt to compare before and after")
        default_retain = self.default_retain_prompts(form.concepts, form.model)
        config = forms.build_config(form.concepts, form.surrogates, form.model, form.settings, default_retain)
        if not config.forget_prompts:  # the model's domain must know how to name each concept
            for pair in config.concepts:
                self.domain(form.model).forget_prompts(pair.concept)
        backend = self.backend(form.model, form.device, form.dtype)
        images = load_images(list(form.forget_images), backend.image_size) if form.forget_images else None
        if images is not None and config.forget_image_dir:
            raise ValueError("give your forget images either as uploads or as forget_image_dir, not both")
        run_name = f"{datetime.now():%Y%m%d-%H%M%S}-{Path(file_name).stem}"
        token = CancelToken()
        with self._state_lock:
            if self.running:
                raise ValueError(BUSY)
            self._token = token
            self._thread = threading.Thread(
                target=self._run,
                args=(backend, config, images, prompts, seeds, file_name, run_name, token),
                name="spare-erasure",
                daemon=True,
            )
        self._set(
            "status",
            "progress",
            "losses",
            "profile",
            "saliency",
            status="running",
            message=f"erasing {_pairs_text(config)}",
            progress=Progress("data", 0, 0, STAGE_LABELS["data"], _stages_of(config)),
            losses=[],
            profile_plot=None,
            saliency_plot=None,
            run_folder=None,
        )
        self._thread.start()
        return self.message

    def cancel(self) -> str:
        """Ask the running training to stop; it stops within one step and writes nothing."""
        token = self._token
        if not self.running or token is None:
            return "nothing is running"
        token.cancel("cancelled from the page")
        return "cancelling"

    def set_strength(self, strength: float) -> Shown:
        """Re-render the "after" gallery at ``strength`` (0 gives the "before" images exactly)."""
        shown = self.shown
        if shown is None or shown.render is None:
            raise ValueError("nothing to compare yet: train an erasure or load a LoRA file first")
        strength = float(strength)
        if not 0.0 <= strength <= 2.0:
            raise ValueError(f"strength must be 0 to 2, got {strength:g}")
        if not self._model_lock.acquire(blocking=False):
            raise ValueError(BUSY)
        try:
            after = shown.render(strength)
        finally:
            self._model_lock.release()
        updated = replace(shown, strength=strength, after=after)
        self._set("after", shown=updated)
        return updated

    def load_lora(self, path: str | Path, seeds: str, prompts: str, strength: float = 1.0) -> Shown:
        """Preview an existing LoRA file at ``strength`` on the current model."""
        if self.running:
            raise ValueError(BUSY)
        lora = read_lora(path)
        seed_list = forms.parse_seeds(seeds)
        concepts = ", ".join(concept for concept, _ in lora.describe()["concepts"])
        prompt_list = forms.lines(prompts) or self.default_preview_prompts(concepts)
        if not prompt_list:
            raise ValueError("no gallery prompt given: enter the prompts to compare before and after")
        if not self._model_lock.acquire(blocking=False):
            raise ValueError(BUSY)
        try:
            backend = self._backend or self.backend()
            adapter = lora.adapter(backend)
            before = _gallery(generate_images(backend, prompt_list, seed_list))
            render = _renderer(backend, prompt_list, seed_list, adapter)
            after = render(float(strength))
        finally:
            self._model_lock.release()
        shown = Shown(f"loaded {Path(path).name}", prompt_list, seed_list, float(strength), before, after, None, None)
        shown.render = render
        self._set("shown", "after", "status", shown=shown, status="idle", message=f"showing {Path(path).name}")
        return shown

    # ------------------------------------------------------------------ the run

    def _on_event(self, event: Event) -> None:
        parts = ["progress"]
        progress = Progress(event.stage, event.step, event.total, event.message, self.progress.stages)
        fields: dict[str, Any] = {"progress": progress}
        if event.stage == "train" and event.loss is not None:
            with self._state_lock:
                losses = self.losses + [event.loss]
            fields["losses"] = losses
            parts.append("losses")
        self._set(*parts, **fields)

    def _run(self, backend, config: ErasureConfig, images, prompts, seeds, file_name, run_name, token) -> None:
        staging = self.out_dir / f".{run_name}.partial"
        started = time.perf_counter()
        try:
            with self._model_lock:
                self._erase_and_write(backend, config, images, prompts, seeds, file_name, run_name, staging, token)
        except ErasureCancelled:
            shutil.rmtree(staging, ignore_errors=True)
            self._set("status", status="cancelled", message="cancelled; nothing was written")
        except Exception as exc:  # shown in the page as one line, like the command line's errors
            logger.exception("the erasure failed")
            shutil.rmtree(staging, ignore_errors=True)
            self._set("status", status="failed", message=f"error: {describe_error(exc)}")
        else:
            seconds = time.perf_counter() - started
            self._set("status", status="done", message=f"erased {_pairs_text(config)} in {seconds:.0f} s")

    def _erase_and_write(self, backend, config, images, prompts, seeds, file_name, run_name, staging, token) -> None:
        events = dict(on_event=self._on_event, cancel=token)
        with tempfile.TemporaryDirectory() as plots:
            sets = prepare_sets(backend, config, forget_images=images, **events)
            profile = None
            if config.timestep_mode == "profile":
                profile = measure_profile(backend, config, sets, **events)
                plot_profile(profile, Path(plots) / "profile.png")
                self._set("profile", profile_plot=_read_png(Path(plots) / "profile.png"))
            saliency = select_modules(backend, config, sets, profile, **events)
            plot_saliency(saliency, Path(plots) / "saliency.png", saliency.selected)
            self._set("saliency", saliency_plot=_read_png(Path(plots) / "saliency.png"))
            result = erase(backend, config, sets=sets, profile=profile, saliency=saliency, **events)
            lora = build_lora(result, backend)
            shown_preview = preview(backend, prompts, seeds, result.adapter, 1.0, **events)
            scores = self._toy_scores(backend, config, seeds, result.adapter, token)
            token.check()

            staging.mkdir(parents=True, exist_ok=True)
            lora.write(staging / file_name)
            save_png(shown_preview.grid(), staging / "before_after.png")
            if profile is not None:
                shutil.copy(Path(plots) / "profile.png", staging / "profile.png")
            shutil.copy(Path(plots) / "saliency.png", staging / "saliency.png")
            plot_losses(result.history.losses, staging / "losses.png")
            report = _report(result, lora, file_name, prompts, seeds, scores)
            report["own_forget_images"] = 0 if images is None else len(images)
            write_json(staging / "report.json", report)
        folder = self.out_dir / run_name
        staging.rename(folder)
        render = _renderer(backend, prompts, seeds, result.adapter)
        shown = Shown(
            f"erased {_pairs_text(config)}",
            list(prompts),
            list(seeds),
            1.0,
            _gallery(shown_preview.before),
            _gallery(shown_preview.after),
            folder / file_name,
            scores,
        )
        shown.render = render
        self._set("shown", "after", run_folder=folder, shown=shown)

    def _toy_scores(self, backend, config, seeds, adapter, token) -> dict[str, Any] | None:
        """UA, IRA, CRA and the surrogate rate before and after, on the toy model and toy concepts only."""
        if not _scored(config):
            return None
        from spare_core.toy.erasure_eval import before_after_scores
        from spare_core.toy.pipeline import load_toy_classifiers

        token.check()
        stages = self.progress.stages
        self._set("progress", progress=Progress("evaluate", 0, 1, STAGE_LABELS["evaluate"], stages))
        before, after, generations = before_after_scores(
            backend, load_toy_classifiers(), config.concepts, seeds, adapter
        )
        self._set("progress", progress=Progress("evaluate", 1, 1, STAGE_LABELS["evaluate"], stages))
        return {
            "generations": generations,
            "before": [s.as_dict() for s in before],
            "after": [s.as_dict() for s in after],
        }


def _scored(config: ErasureConfig) -> bool:
    """Whether a run ends with the toy scores: the toy model, erasing toy concepts."""
    return config.base_model == TOY_MODEL and all(_toy_kind(p.concept) for p in config.concepts)


def _stages_of(config: ErasureConfig) -> tuple[str, ...]:
    skipped = set()
    if config.timestep_mode != "profile":
        skipped.add("profile")
    if not _scored(config):
        skipped.add("evaluate")
    return tuple(stage for stage in RUN_STAGES if stage not in skipped)


def _renderer(backend, prompts, seeds, adapter) -> Callable[[float], list[Image.Image]]:
    """Renders the "after" side at a strength (the caller holds the model lock)."""

    def render(strength: float) -> list[Image.Image]:
        return _gallery(generate_images(backend, prompts, seeds, adapter, strength))

    return render


def _report(result, lora: Lora, file_name: str, prompts, seeds, scores) -> dict[str, Any]:
    return {
        "concepts": [[p.concept, p.surrogate] for p in result.config.concepts],
        "settings": result.config.settings(),
        "lora_file": file_name,
        "lora_bytes": len(lora.to_bytes()),
        "selected_modules": result.selected_modules,
        "gallery": {"prompts": list(prompts), "seeds": list(seeds)},
        "scores": scores,
        "seconds": result.seconds,
    }


def _read_png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.copy()


def _toy_kind(concept: str) -> str | None:
    from spare_core.toy.domain import toy_kind

    return toy_kind(concept)


def _pairs_text(config: ErasureConfig) -> str:
    return ", ".join(f"{p.concept} -> {p.surrogate}" for p in config.concepts)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
