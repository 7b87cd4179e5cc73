"""Shared fixtures: every test gets its own ring directory and stream ids."""

import itertools
import os
import sys

import pytest

import memstreamer as ms

_streams = itertools.count(1)

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")


@pytest.fixture
def ring_dir(tmp_path):
    """A directory for this test's ring files (removed with tmp_path)."""
    return str(tmp_path)


@pytest.fixture
def stream():
    """A stream id no other test of this run uses."""
    return next(_streams)


@pytest.fixture
def ctx(ring_dir):
    return ms.Context(dir=ring_dir, capacity_bytes=1 << 16)


def peer_cmd(*args):
    """The command line of a peer process (tests/peer.py) with this interpreter."""
    return [sys.executable, PEER, *map(str, args)]
