"""Shared fixtures: the shipped toy model, loaded once, with the network off."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class NetworkForbidden(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkForbidden(f"a test tried to open a network connection: {args!r}")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to connect a socket fails the test."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)


@pytest.fixture(scope="session")
def toy_pipe():
    import torch

    from spare_core.toy.pipeline import load_toy_pipeline

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return load_toy_pipeline()


@pytest.fixture(scope="session")
def toy_classifiers():
    from spare_core.toy.pipeline import load_toy_classifiers

    return load_toy_classifiers()
