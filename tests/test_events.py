"""Every stage reports progress through one event stream and stops within one unit of work when cancelled."""

import threading

import pytest
from tiny import tiny_config

from spare_core import (
    STAGES,
    CancelToken,
    ErasureCancelled,
    ErasureConfig,
    erase,
    generate_images,
    prepare_sets,
)


def _tiny(**kw) -> ErasureConfig:
    return tiny_config(**{"generation_batch_size": 8, "steps": 4, **kw})


def _files(folder):
    return sorted(p.name for p in folder.rglob("*"))


def test_every_stage_reports_progress_in_order(toy_backend):
    events = []
    erase(toy_backend, _tiny(), on_event=events.append)
    stages = [e.stage for e in events]
    seen = list(dict.fromkeys(stages))
    assert seen == ["data", "profile", "saliency", "train"]
    assert seen == [s for s in STAGES if s in seen]
    for stage in seen:
        mine = [e for e in events if e.stage == stage]
        assert all(0 <= e.step <= e.total for e in mine)
        assert mine[-1].step == mine[-1].total > 0, stage  # each stage ends complete
        assert [e.step for e in mine] == sorted(e.step for e in mine)
    data = [e for e in events if e.stage == "data"]
    # 20 forget, 20 surrogate and 30 retain images (every object with the 5 other styles) in batches of 8:
    # one event to start and one per batch.
    assert data[0].step == 0 and data[0].total == 70 and len(data) == 1 + 3 + 3 + 4
    train = [e for e in events if e.stage == "train"]
    assert len(train) == 4 and all(e.loss is not None and e.loss >= 0 for e in train)


def test_cancel_from_the_first_data_event_stops_within_one_batch_and_leaves_nothing(toy_backend, tmp_path):
    cache = tmp_path / "cache"
    token = CancelToken()
    events, sampled = [], []
    original = toy_backend.sample

    def counting_sample(prompts, seeds, *args, **kw):
        sampled.append(len(prompts))
        return original(prompts, seeds, *args, **kw)

    def on_event(event):
        events.append(event)
        if event.stage == "data" and event.step > 0:
            token.cancel()

    toy_backend.sample = counting_sample
    try:
        with pytest.raises(ErasureCancelled):
            erase(toy_backend, _tiny(), cache_dir=cache, on_event=on_event, cancel=token)
    finally:
        del toy_backend.sample
    assert sampled == [8]  # the batch under way when the cancel came, and no other
    assert [e.step for e in events] == [0, 8]
    assert _files(tmp_path) == ["cache"] or _files(tmp_path) == []  # no set and no temporary file in the cache


def test_cancel_is_checked_at_every_denoising_step(toy_backend):
    token = CancelToken()
    steps = []

    def host_check():
        steps.append(1)
        if len(steps) == 3:
            token.cancel("stop")

    token = CancelToken(host_check)
    with pytest.raises(ErasureCancelled):
        generate_images(toy_backend, ["a ring"], [1, 2], steps=20, cancel=token)
    assert len(steps) == 3  # the check during which the cancel came stopped the run: 3 of 40 denoising steps


class HostInterrupt(BaseException):
    """What a host (ComfyUI) raises from its own interruption check."""


def test_a_hosts_own_interrupt_propagates_untouched_and_leaves_nothing(toy_backend, tmp_path):
    calls = []

    def host_check():
        calls.append(1)
        if len(calls) > 5:
            raise HostInterrupt

    with pytest.raises(HostInterrupt):
        prepare_sets(toy_backend, _tiny(), cache_dir=tmp_path, cancel=CancelToken(host_check))
    assert _files(tmp_path) == []


def test_cancel_from_another_thread_stops_training(toy_backend, tmp_path):
    token = CancelToken()
    sets = prepare_sets(toy_backend, _tiny())
    started = threading.Event()
    train_events = []

    def on_event(event):
        if event.stage == "train":
            train_events.append(event)
            started.set()
            if len(train_events) == 1:
                # Another thread cancels while this (the worker) thread trains.
                worker = threading.Thread(target=token.cancel)
                worker.start()
                worker.join()

    with pytest.raises(ErasureCancelled):
        erase(toy_backend, _tiny(steps=50), sets=sets, on_event=on_event, cancel=token)
    assert started.is_set() and len(train_events) == 1
    assert threading.current_thread() is threading.main_thread()  # events arrived on the worker (here: main) thread
