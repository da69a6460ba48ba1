"""The Evaluator on real MuJoCo episodes: the env actor's evaluation, paired seeds, honest counts."""

import urllib.request

import numpy as np
import pytest

from fleetloop.actors.env_actor import EnvActorRole
from fleetloop.actors.envs import make_expert
from fleetloop.actors.evaluator import EvaluationError, Evaluator, EvaluatorRole
from fleetloop.actors.settings import ActorSettings, EvaluatorSettings
from fleetloop.config import load_config
from fleetloop.system import DualSystemPolicy, model_preset
from fleetloop.system.checkpoint import save_tensors
from tests.actors.conftest import SMALL, policy_weights

EVAL = [*SMALL, "evaluator.seed_base=500000", "evaluator.episodes=3", "metrics.evaluator_port=0"]


def policy_file(tmp_path, seed: int = 3):
    path = tmp_path / f"policy-step-{seed:07d}.safetensors"
    save_tensors(policy_weights(seed), model_preset("tiny"), path)
    return path


def recording(scene, chunks: list):
    """Wrap ``scene``'s planning so that every chunk it plans is also appended to ``chunks``."""
    plan = scene._plan

    def record(policy, image, state, instruction):
        chunks.append(plan(policy, image, state, instruction))
        return chunks[-1]

    scene._plan = record


def test_the_evaluator_plays_the_env_actors_evaluation_episodes(valkey, publisher, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", EVAL)
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    evaluator = Evaluator(EvaluatorSettings.of(cfg))
    actor_chunks, evaluator_chunks = [], []
    try:
        publisher.publish(policy_weights(3))
        assert actor.wait_for_version(1, timeout_s=30)
        recording(actor.scene, actor_chunks)
        by_actor = actor.evaluate([500_000, 500_001, 500_002])
        evaluator.load_file(policy_file(tmp_path, 3))
        recording(evaluator.scene, evaluator_chunks)
        evaluation = evaluator.evaluate("policy")
    finally:
        actor.close()
        evaluator.close()
    assert evaluation.outcomes == by_actor["successes"]
    assert len(evaluator_chunks) == len(actor_chunks) > 3
    for ours, theirs in zip(evaluator_chunks, actor_chunks):
        np.testing.assert_array_equal(ours, theirs)


def test_evaluations_are_paired_and_count_every_episode(tmp_path):
    evaluator = Evaluator(EvaluatorSettings.of(load_config("smoke", EVAL)))
    try:
        evaluator.load_file(policy_file(tmp_path, 3))
        first, again = evaluator.evaluate("a", step=3), evaluator.evaluate("a", step=3)
        assert first.outcomes == again.outcomes and len(first.outcomes) == 3

        expert = make_expert("reach", evaluator.env)
        evaluator.scene._plan = lambda policy, image, state, instruction: expert.action_chunk("arm_0", 16)
        driven = evaluator.evaluate("expert", episodes=4).to_dict()
        assert driven["outcomes"] == "1111" and driven["successes"] == 4 and driven["ci95"][1] == 1.0
        assert driven["ci95"][0] == pytest.approx(0.5101, abs=1e-4)

        evaluator.scene._plan = lambda policy, image, state, instruction: np.full((16, 2), np.nan, np.float32)
        broken = evaluator.evaluate("nan", episodes=2).to_dict()
        assert broken["outcomes"] == "00" and broken["discarded"] == 2 and broken["success_rate"] == 0.0
    finally:
        evaluator.close()


def test_a_policy_of_another_architecture_is_refused_with_advice(tmp_path):
    tiny = model_preset("tiny")
    other = tiny.model_copy(update={"action_head": tiny.action_head.model_copy(update={"num_inference_timesteps": 8})})
    path = tmp_path / "other.safetensors"
    save_tensors(DualSystemPolicy(other).state_dict(), other, path)
    junk = tmp_path / "notes.safetensors"
    junk.write_bytes(b"not a checkpoint")
    evaluator = Evaluator(EvaluatorSettings.of(load_config("smoke", EVAL)))
    try:
        with pytest.raises(EvaluationError, match="another architecture than model.preset 'tiny'.*--config"):
            evaluator.load_file(path)
        with pytest.raises(ValueError, match="not a"):
            evaluator.load_file(junk)
    finally:
        evaluator.close()


def test_the_loops_evaluator_scores_the_version_it_was_asked_for(publisher, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", EVAL)
    role = EvaluatorRole(EvaluatorSettings.of(cfg), target)
    standalone = Evaluator(EvaluatorSettings.of(cfg))
    try:
        with pytest.raises(TimeoutError, match="version 1 not received"):
            role.evaluate_version(1, timeout_s=0.5)
        publisher.publish(policy_weights(3))
        record = role.evaluate_version(1, step=40)
        standalone.load_file(policy_file(tmp_path, 3))
        expected = standalone.evaluate("file").to_dict()
        with urllib.request.urlopen(role.status()["metrics"], timeout=5) as response:
            body = response.read().decode()
    finally:
        role.close()
        standalone.close()
    assert record["version"] == 1 and record["step"] == 40 and record["policy"] == "version 1"
    assert record["outcomes"] == expected["outcomes"], "the published weights, the same seeds: the same episodes"
    assert "fleetloop_evaluator_version 1.0" in body
    assert f"fleetloop_evaluator_success_rate {record['success_rate']}" in body
    assert f'fleetloop_evaluator_success_ci95{{bound="high"}} {record["ci95"][1]}' in body
