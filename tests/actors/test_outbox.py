"""The actor's outbox on a real Valkey: an episode counts as written only once acknowledged, and
is held and retried while the server is paused, killed or restarting."""

import json
import os
import signal
import threading

import pytest

from fleetloop.actors.outbox import Outbox
from fleetloop.replay import InvalidEpisodeError, ReplayClient
from fleetloop.replay.errors import ReplayUnavailableError


def audited(path) -> list[str]:
    return [json.loads(line)["episode_id"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def quick_client(valkey):
    with ReplayClient(valkey.url, socket_timeout=0.5, connect_timeout=0.5) as client:
        yield client


def test_acknowledged_episodes_are_audited_once(quick_client, make_episode, tmp_path):
    written = []
    outbox = Outbox(quick_client, "actor-0", tmp_path / "audit.jsonl", retry_s=5,
                    on_written=lambda table, eid: written.append((table, eid)))
    ids = [outbox.put("rollouts", make_episode(), priority=1.0) for _ in range(3)]
    assert audited(tmp_path / "audit.jsonl") == ids and written == [("rollouts", i) for i in ids]
    assert sorted(quick_client.episode_ids("rollouts")) == sorted(ids) and len(outbox) == 0


def test_a_paused_server_delays_the_write_but_loses_nothing(valkey, quick_client, make_episode, tmp_path):
    outbox = Outbox(quick_client, "actor-0", tmp_path / "audit.jsonl", retry_s=30)
    os.kill(valkey.pid, signal.SIGSTOP)  # longer than the client's 0.5 s timeouts
    threading.Timer(2.0, os.kill, (valkey.pid, signal.SIGCONT)).start()
    episode_id = outbox.put("corrections", make_episode(), priority=1.0)
    assert quick_client.episode_ids("corrections") == [episode_id]
    assert audited(tmp_path / "audit.jsonl") == [episode_id]


def test_a_killed_server_holds_episodes_until_it_is_back(valkey, quick_client, make_episode, tmp_path):
    first = make_episode()
    outbox = Outbox(quick_client, "actor-0", tmp_path / "audit.jsonl", retry_s=1.0)
    outbox.put("rollouts", first, priority=1.0)
    os.kill(valkey.pid, signal.SIGKILL)
    second, third = make_episode(), make_episode()
    with pytest.raises(ReplayUnavailableError):
        outbox.put("rollouts", second, priority=1.0)
    with pytest.raises(ReplayUnavailableError):
        outbox.put("rollouts", third, priority=1.0)
    assert len(outbox) == 2 and audited(tmp_path / "audit.jsonl") == [first.episode_id], "not acknowledged: held"
    assert valkey.restart_if_dead() and not valkey.restart_if_dead()
    outbox.flush()
    assert audited(tmp_path / "audit.jsonl") == [first.episode_id, second.episode_id, third.episode_id]
    assert sorted(quick_client.episode_ids("rollouts")) == sorted(audited(tmp_path / "audit.jsonl"))


def test_an_invalid_episode_is_refused_and_never_held(quick_client, make_episode, tmp_path):
    outbox = Outbox(quick_client, "actor-0", tmp_path / "audit.jsonl", retry_s=1.0)
    bad = make_episode()
    bad.states[0, 0] = float("nan")
    with pytest.raises(InvalidEpisodeError):
        outbox.put("rollouts", bad, priority=1.0)
    assert len(outbox) == 0 and not audited(tmp_path / "audit.jsonl")
    assert outbox.put("rollouts", make_episode(), priority=1.0)  # the outbox is not blocked by it
