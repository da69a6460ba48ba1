"""The container image: deploy/Dockerfile and the build context that /.dockerignore lets through.

There is no Docker engine here, so the image is not built. What can be checked for real is:
- the Dockerfile, parsed (dockerfile_model.py): stages, pinned bases, the non-root user, the
  entry point, what the runtime stage carries, per variant;
- the .dockerignore, applied with Docker's own semantics (Go filepath.Match patterns plus `**`,
  `!` exceptions, last match wins, a pattern matching a parent directory matches what is inside)
  to the repository's files and to paths that must never reach the daemon;
- the builder's wheel step, run with pip on a copy of exactly that filtered build context.
"""

from __future__ import annotations

import configparser
import posixpath
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from dockerfile_model import (
    REPO,
    DOCKERFILE,
    DOCKERIGNORE,
    PYPROJECT,
    Stage,
    Dockerfile,
    parse_dockerfile,
    parse_arg,
    parse_pairs,
    substitute,
    Chain,
    resolve_chain,
    shell_segments,
    apt_packages,
    IgnorePattern,
    read_dockerignore,
    is_ignored,
    context_candidates,
    package_dirs,
    required_context_files,
)

VARIANTS = ("cpu", "cuda")
RUNTIME_UID = "10001"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(dockerfile: Dockerfile) -> Stage:
    return dockerfile.stages[-1]


@pytest.fixture(scope="module", params=VARIANTS)
def runtime_chain(request: pytest.FixtureRequest, dockerfile: Dockerfile, final_stage: Stage) -> tuple[str, Chain]:
    assert final_stage.name, f"{DOCKERFILE}: name the final stage (FROM ... AS runtime)"
    return request.param, resolve_chain(dockerfile, final_stage.name, request.param)


def test_parser_reads_continuations_comments_and_variables() -> None:
    parsed = parse_dockerfile(
        "ARG VARIANT=cpu\n"
        "ARG W=1\n"
        "FROM img:1.2.3 AS base-cpu\n"
        "# a comment\n"
        "RUN apt-get update \\\n"
        "    # a comment inside the instruction\n"
        " && apt-get install -y --no-install-recommends a \\\n"
        "        b\n"
        "FROM base-${VARIANT} AS final\n"
        "ARG VARIANT\n"
        "ARG W=2\n"
        "LABEL v=${VARIANT} w=$W\n"
        'ENV A=1 B="two words" C=${A}:x\n'
        "ENV D=${A}:x\n"
        'ENTRYPOINT ["tool"]\n'
    )
    assert parsed.global_args == {"VARIANT": "cpu", "W": "1"}
    assert [(s.name, s.base) for s in parsed.stages] == [("base-cpu", "img:1.2.3"), ("final", "base-${VARIANT}")]
    run = parsed.stages[0].all("RUN")[0]
    assert apt_packages(run) == ["a", "b"] and run.line == 5
    chain = resolve_chain(parsed, "final", "cpu")
    assert chain.external_base == "img:1.2.3" and [s.name for s in chain.stages] == ["base-cpu", "final"]
    # As in Docker, a variable set in the same ENV instruction is not visible yet; in the next one it is.
    assert chain.env == {"A": "1", "B": "two words", "C": "${A}:x", "D": "1:x"}
    assert chain.labels == {"v": "cpu", "w": "2"}  # `ARG VARIANT` takes the build arg, `ARG W=2` its own default
    assert resolve_chain(parsed, "final", "cuda").labels["v"] == "cuda"
    assert parsed.stages[1].all("ENTRYPOINT")[0].exec_form() == ["tool"]


# --------------------------------------------------------------------------------------------
# The Dockerfile


def test_multi_stage_with_variant_selecting_a_base_stage(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, f"{DOCKERFILE}: expected a multi-stage build, found {len(dockerfile.stages)} stage(s)"
    assert dockerfile.global_args.get("VARIANT") == "cpu", (
        f"{DOCKERFILE}: needs a global `ARG VARIANT=cpu` before the first FROM, has {dockerfile.global_args}")
    names = [s.name for s in dockerfile.stages]
    assert len(names) == len(set(names)), f"{DOCKERFILE}: duplicate stage names {names}"
    selectors = [s for s in dockerfile.stages if "${VARIANT}" in s.base or "$VARIANT" in s.base]
    assert selectors, f"{DOCKERFILE}: no stage is built FROM base-${{VARIANT}}"
    for variant in VARIANTS:
        for stage in selectors:
            chosen = substitute(stage.base, {"VARIANT": variant})
            assert chosen in names, f"{DOCKERFILE}: VARIANT={variant} selects {chosen!r}, which is no stage"


def test_every_external_base_is_pinned_to_an_exact_tag(dockerfile: Dockerfile) -> None:
    names = {s.name for s in dockerfile.stages}
    external = [(s, substitute(s.base, dockerfile.global_args)) for s in dockerfile.stages
                if substitute(s.base, dockerfile.global_args) not in names]
    assert len(external) >= 2, f"{DOCKERFILE}: expected a CPU and a CUDA base image, found {[e for _, e in external]}"
    for stage, image in external:
        where = f"{DOCKERFILE}: stage {stage.name!r} FROM {image!r}"
        assert "$" not in image, f"{where}: unresolved variable (give the ARG a default)"
        reference = image.split("@", 1)[0]
        repository, _, tag = reference.rpartition(":")
        assert repository and "/" not in tag, f"{where}: no tag; pin an exact version"
        assert tag != "latest", f"{where}: 'latest' is not a pin"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{where}: tag {tag!r} floats; pin the full x.y.z version"
        if repository.endswith("python"):
            assert re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), f"{where}: want python:3.11.<patch>-slim-bookworm"
            assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.12"
        elif repository.endswith("nvidia/cuda"):
            match = re.fullmatch(r"(\d+)\.\d+\.\d+-(cudnn-)?(base|runtime|devel)-ubuntu22\.04", tag)
            assert match and int(match.group(1)) >= 12, f"{where}: want nvidia/cuda:<x.y.z>-cudnn-runtime-ubuntu22.04"
        else:
            pytest.fail(f"{where}: unexpected base image")


def test_cpu_and_cuda_bases_are_the_expected_distributions(dockerfile: Dockerfile) -> None:
    bases = {v: resolve_chain(dockerfile, dockerfile.stages[-1].name or "", v).external_base for v in VARIANTS}
    assert bases["cpu"].startswith("python:3.11."), f"{DOCKERFILE}: VARIANT=cpu builds on {bases['cpu']}"
    assert bases["cuda"].startswith("nvidia/cuda:"), f"{DOCKERFILE}: VARIANT=cuda builds on {bases['cuda']}"
    cuda_stage = dockerfile.stage("base-cuda")
    installed = [p for run in cuda_stage.all("RUN") for p in apt_packages(run)]
    assert "python3.11" in installed, f"{DOCKERFILE}: base-cuda must install python3.11 from Ubuntu, installs {installed}"


def test_final_stage_runs_as_fixed_non_root_user(final_stage: Stage) -> None:
    users = final_stage.all("USER")
    assert users, f"{DOCKERFILE}: final stage {final_stage.name!r} sets no USER (it would run as root)"
    user = users[-1].args
    assert re.fullmatch(r"\d+:\d+", user), f"{DOCKERFILE}:{users[-1].line}: USER {user!r}: want numeric UID:GID"
    uid, gid = user.split(":")
    assert uid == RUNTIME_UID and gid == RUNTIME_UID, f"{DOCKERFILE}: USER {user}: want {RUNTIME_UID}:{RUNTIME_UID}"
    creates = " ".join(run.args for run in final_stage.all("RUN"))
    assert f"--uid {uid}" in creates and f"--gid {gid}" in creates, (
        f"{DOCKERFILE}: the final stage must create the user {uid}:{gid} (useradd --uid/--gid) so it has a home")


def test_entrypoint_cmd_workdir_and_home(final_stage: Stage, runtime_chain: tuple[str, Chain]) -> None:
    variant, chain = runtime_chain
    entrypoints = chain.instructions("ENTRYPOINT")
    assert entrypoints and entrypoints[-1].exec_form() == ["fleetloop"], (
        f"{DOCKERFILE}: ENTRYPOINT must be exactly [\"fleetloop\"], is {entrypoints[-1].args if entrypoints else None}")
    cmds = chain.instructions("CMD")
    assert cmds and cmds[-1].exec_form() == ["--help"], f"{DOCKERFILE}: CMD must be [\"--help\"]"
    workdirs = final_stage.all("WORKDIR")
    assert workdirs and workdirs[-1].args == "/home/fleetloop", f"{DOCKERFILE}: WORKDIR must be /home/fleetloop"
    assert chain.env.get("HOME") == "/home/fleetloop", f"{DOCKERFILE} ({variant}): HOME={chain.env.get('HOME')}"
    assert "--create-home --home-dir /home/fleetloop" in " ".join(r.args for r in final_stage.all("RUN")), (
        f"{DOCKERFILE}: the runtime user's home must be created (and so owned by it, writable)")


def test_runtime_environment_per_variant(runtime_chain: tuple[str, Chain]) -> None:
    variant, chain = runtime_chain
    env = chain.env
    where = f"{DOCKERFILE} (VARIANT={variant})"
    assert env.get("MUJOCO_GL") == "egl", f"{where}: MUJOCO_GL={env.get('MUJOCO_GL')!r}, want egl"
    assert env.get("PYTHONUNBUFFERED") == "1", f"{where}: PYTHONUNBUFFERED must be 1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), f"{where}: the venv's bin must lead PATH (ray, fleetloop)"
    if variant == "cpu":
        assert env.get("DS_ACCELERATOR") == "cpu", f"{where}: DS_ACCELERATOR must be cpu"
    else:
        assert "DS_ACCELERATOR" not in env, f"{where}: DS_ACCELERATOR={env['DS_ACCELERATOR']!r} would hide the GPUs"


def test_exposed_ports_are_the_configured_defaults(final_stage: Stage) -> None:
    from fleetloop.config import FleetloopConfig

    config = FleetloopConfig()
    ours = {config.weights.port, config.bridge.port, config.metrics.learner_port,
            config.metrics.replay_port, config.metrics.actor_base_port}
    exposed = {int(p.split("/")[0]) for e in final_stage.all("EXPOSE") for p in e.args.split()}
    assert exposed == ours, f"{DOCKERFILE}: EXPOSE {sorted(exposed)}, but fleetloop's default ports are {sorted(ours)}"
    assert 6379 not in exposed, f"{DOCKERFILE}: 6379 (Redis/Valkey) is not fleetloop's port"


def test_runtime_has_no_compilers_and_has_render_and_probe_tools(runtime_chain: tuple[str, Chain]) -> None:
    variant, chain = runtime_chain
    installed = {p for run in chain.instructions("RUN") for p in apt_packages(run)}
    where = f"{DOCKERFILE} (VARIANT={variant}) runtime stages {[s.name for s in chain.stages]}"
    compiler = re.compile(r"(g\+\+|gcc|clang|cpp|make|build-essential|cuda-nvcc.*|python3(\.\d+)?-dev)(-\d+)?")
    compilers = {p for p in installed if compiler.fullmatch(p)}
    assert not compilers, f"{where}: compilers in the runtime image: {sorted(compilers)}"
    needed = {"libegl1", "libegl-mesa0", "libgl1", "libgl1-mesa-dri", "libgles2", "libopengl0", "libosmesa6", "wget", "bash"}
    assert needed <= installed, f"{where}: missing runtime packages {sorted(needed - installed)}"


def test_runtime_copies_only_the_venv_from_the_builder(dockerfile: Dockerfile, final_stage: Stage) -> None:
    copies = final_stage.all("COPY") + final_stage.all("ADD")
    assert copies, f"{DOCKERFILE}: the final stage copies nothing in"
    for copy in copies:
        flags, rest = copy.flags_and_rest()
        assert copy.keyword == "COPY" and flags.get("from") == "builder" and rest.split() == ["/opt/venv", "/opt/venv"], (
            f"{DOCKERFILE}:{copy.line}: the runtime stage should take only /opt/venv from the builder, not {copy.args!r}")


def test_apt_usage_is_lean_and_no_remote_add(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            where = f"{DOCKERFILE}:{instruction.line} (stage {stage.name})"
            if instruction.keyword == "ADD":
                assert not re.search(r"\b(https?|git)://|git@", instruction.args), f"{where}: ADD from a URL"
            if instruction.keyword in ("ARG", "ENV"):
                for name in (parse_arg(instruction.args) if instruction.keyword == "ARG" else parse_pairs(instruction.args)):
                    assert not re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY", name, re.IGNORECASE), (
                        f"{where}: {name} looks like a secret; use a BuildKit secret mount")
            if instruction.keyword != "RUN":
                continue
            segments = shell_segments(instruction)
            for segment in segments:
                words = segment.split()
                if "install" in words and ("apt-get" in words or "apt" in words):
                    assert "--no-install-recommends" in words, f"{where}: apt install without --no-install-recommends"
                    assert "-y" in words, f"{where}: apt install without -y"
            if any("apt-get update" in s for s in segments):
                assert any(s.startswith("rm -rf /var/lib/apt/lists") for s in segments), (
                    f"{where}: apt-get update without removing /var/lib/apt/lists in the same RUN")


def test_builder_installs_torch_from_the_variant_index_and_prebuilds_the_deepspeed_op(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    runs = " ".join(r.args for r in builder.all("RUN"))
    args = {name: default for a in builder.all("ARG") for name, default in parse_arg(a.args).items()}
    assert args.get("TORCH_CPU_INDEX_URL") == "https://download.pytorch.org/whl/cpu", (
        f"{DOCKERFILE}: the CPU image must take torch from https://download.pytorch.org/whl/cpu")
    assert re.search(r"cpu\)\s*torch_index=\"\$\{TORCH_CPU_INDEX_URL\}\"", runs), (
        f"{DOCKERFILE}: VARIANT=cpu does not select TORCH_CPU_INDEX_URL for torch")
    assert not re.search(r"\b(torch|deepspeed)==\d", runs), (
        f"{DOCKERFILE}: versions are pinned in pyproject.toml only; read them from there")
    op_builds = [r for r in builder.all("RUN") if "DS_BUILD_SHM_COMM=1" in r.args]
    assert op_builds, f"{DOCKERFILE}: the builder must compile DeepSpeed's CPU comm op (DS_BUILD_SHM_COMM=1)"
    for flag in ("--no-build-isolation", "--no-binary deepspeed", "--no-cache-dir", "DS_ACCELERATOR=cpu"):
        assert flag in op_builds[0].args, f"{DOCKERFILE}:{op_builds[0].line}: the DeepSpeed op build needs {flag}"
    copies = [c.flags_and_rest()[1].split()[0] for c in builder.all("COPY") if "from" not in c.flags_and_rest()[0]]
    assert copies[0] == "pyproject.toml" and "." in copies, (
        f"{DOCKERFILE}: copy pyproject.toml first (dependency layers), the sources after; copies {copies}")
    assert "pip check" in runs, f"{DOCKERFILE}: the builder should end with `pip check`"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_run_is_valid_bash(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if run.exec_form() is not None:
                continue
            _, command = run.flags_and_rest()
            check = subprocess.run(["bash", "-n", "-o", "pipefail", "-c", command],
                                   capture_output=True, text=True, check=False)
            assert check.returncode == 0, f"{DOCKERFILE}:{run.line} (stage {stage.name}): bash syntax error: {check.stderr}"


def test_runtime_smoke_checks_and_login_shell_path(final_stage: Stage) -> None:
    runs = [r.args for r in final_stage.all("RUN")]
    user_line = final_stage.all("USER")[-1].line
    after_user = " ".join(r.args for r in final_stage.all("RUN") if r.line > user_line)
    for probe in ("fleetloop --help", "ray --version", "deepspeed_shm_comm_op", "for gl in egl osmesa"):
        assert probe in after_user, f"{DOCKERFILE}: the runtime stage should check `{probe}` as the runtime user"
    assert any("/etc/profile.d/" in r and "/opt/venv/bin" in r for r in runs), (
        f"{DOCKERFILE}: login shells (bash -l) reset PATH on Debian; add the venv in /etc/profile.d")


def test_oci_labels(runtime_chain: tuple[str, Chain]) -> None:
    variant, chain = runtime_chain
    labels = chain.labels
    project = PYPROJECT["project"]
    expected = {
        "org.opencontainers.image.title": "fleetloop",
        "org.opencontainers.image.version": project["version"],
        "org.opencontainers.image.licenses": project["license"],
        "org.opencontainers.image.base.name": chain.external_base,
        "io.fleetloop.variant": variant,
    }
    for key, value in expected.items():
        assert labels.get(key) == value, f"{DOCKERFILE} (VARIANT={variant}): label {key}={labels.get(key)!r}, want {value!r}"
    for key in ("org.opencontainers.image.description", "org.opencontainers.image.revision", "org.opencontainers.image.created"):
        assert key in labels, f"{DOCKERFILE}: OCI label {key} missing"


@pytest.fixture(scope="module")
def ignore_patterns() -> list[IgnorePattern]:
    assert DOCKERIGNORE.is_file(), f"{DOCKERIGNORE} is missing: the whole checkout (.venv, .git, runs/) would be sent"
    return read_dockerignore(DOCKERIGNORE.read_text())


@pytest.mark.parametrize(("patterns", "path", "ignored"), [
    (["*", "!keep/"], "keep/a/b.py", False),
    (["*", "!keep/"], "other/a.py", True),
    (["*", "!keep/"], "keep", False),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md"], "docs/x.md", False),  # * stops at /
    (["**/__pycache__"], "a/b/__pycache__/x.pyc", True),
    (["**/__pycache__"], "__pycache__/x.pyc", True),
    (["**/*.py[cod]"], "a/b.pyc", True),
    (["**/*.py[cod]"], "a/b.py", False),
    (["docs", "!docs/keep.md"], "docs/keep.md", False),
    (["docs", "!docs/keep.md"], "docs/other.md", True),
    (["/runs/"], "runs/x/summary.json", True),
    (["!a", "a"], "a", True),  # last match wins
    (["a?c"], "abc", True),
    (["a?c"], "a/c", False),
    (["build/**"], "build/lib/x.py", True),
])
def test_ignore_matcher_follows_docker_semantics(patterns: list[str], path: str, ignored: bool) -> None:
    assert is_ignored(read_dockerignore("\n".join(patterns)), path) is ignored


def test_dockerignore_keeps_junk_and_secrets_out(ignore_patterns: list[IgnorePattern]) -> None:
    never = [
        ".git/HEAD", ".git/objects/ab/cdef", ".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py",
        "runs/x/summary.json", "runs/20261124-101500/replay/appendonly.aof", "build/lib/fleetloop/cli.py", "dist/x.whl",
        "fleetloop.egg-info/PKG-INFO", "system/__pycache__/dit.cpython-311.pyc", "replay/selectors/__pycache__/x.pyc",
        "fleetloop/cli.pyc", ".pytest_cache/v/cache/nodeids", ".ruff_cache/x", "tests/test_cli.py", "bench/replay.py",
        "docs/design.md", "deploy/k8s/learner.yaml", "deploy/README.md", ".ci/run", "dev", ".env", "learner/.env",
        "protos/server.key", "protos/server.pem",
    ]
    leaked = [p for p in never if not is_ignored(ignore_patterns, p)]
    assert not leaked, f"{DOCKERIGNORE}: these would be sent to the Docker daemon: {leaked}"


def test_dockerignore_keeps_what_the_build_needs(ignore_patterns: list[IgnorePattern]) -> None:
    files = context_candidates()
    required = required_context_files(files)
    for must in ("fleetloop/cli.py", "fleetloop/presets/default.yaml", "fleetloop/presets/smoke.yaml",
                 "protos/weights_pb2.py", "protos/weights.proto", "actors/envs/assets/reach_arm.xml"):
        assert must in required, f"{must} is no longer in the repository or pyproject.toml; update this test"
    dropped = [f for f in required if is_ignored(ignore_patterns, f)]
    assert not dropped, f"{DOCKERIGNORE} leaves out files the wheel build needs: {dropped}"
    dockerfile = parse_dockerfile(DOCKERFILE.read_text())
    for copy in dockerfile.stage("builder").all("COPY"):
        flags, rest = copy.flags_and_rest()
        for source in rest.split()[:-1]:
            if "from" not in flags and source != ".":
                assert not is_ignored(ignore_patterns, source), (
                    f"{DOCKERFILE}:{copy.line}: COPY {source}, but {DOCKERIGNORE} leaves it out")


def test_inclusion_check_fails_when_a_pattern_drops_a_needed_file(ignore_patterns: list[IgnorePattern]) -> None:
    """The check above can fail: the same files under a .dockerignore that drops the presets."""
    files = context_candidates()
    broken = ignore_patterns + read_dockerignore("fleetloop/presets")
    dropped = [f for f in required_context_files(files) if is_ignored(broken, f)]
    assert dropped == [f"fleetloop/presets/{name}" for name in ("__init__.py", "default.yaml", "smoke.yaml")]


# --------------------------------------------------------------------------------------------
# The builder's wheel step, on exactly the build context. The slow test of this module: one real
# `pip wheel` (a few seconds; offline). pyproject.toml registers no `slow` marker (and
# --strict-markers is on), hence the name and the timeout.


@pytest.mark.timeout(180)
def test_slow_wheel_builds_from_the_filtered_build_context(ignore_patterns: list[IgnorePattern], tmp_path: Path) -> None:
    context = tmp_path / "context"
    sent = [f for f in context_candidates() if not is_ignored(ignore_patterns, f)]
    for relative in sent:
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    wheels = tmp_path / "wheels"
    # As the builder does it (pip wheel --no-deps --no-build-isolation), and offline.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--wheel-dir", str(wheels), str(context)],
        capture_output=True, text=True, timeout=170, check=False,
    )
    assert result.returncode == 0, (
        f"pip wheel failed on the build context that {DOCKERIGNORE} lets through "
        f"({len(sent)} files):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    built = list(wheels.glob("fleetloop-*.whl"))
    assert len(built) == 1, f"expected one fleetloop wheel, found {[p.name for p in wheels.iterdir()]}"

    with zipfile.ZipFile(built[0]) as wheel:
        names = set(wheel.namelist())
        entry_points_file = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        entry_points = wheel.read(entry_points_file).decode() if entry_points_file else ""
        metadata_file = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(metadata_file).decode()
    for must in ("fleetloop/cli.py", "fleetloop/presets/default.yaml", "fleetloop/presets/smoke.yaml",
                 "fleetloop/protos/weights_pb2.py", "fleetloop/protos/robot_pb2.py",
                 "fleetloop/actors/envs/assets/reach_arm.xml"):
        assert must in names, f"{built[0].name} lacks {must}"
    # Every package file of the context is in the wheel under its import path.
    dirs = package_dirs()
    for package, folder in dirs.items():
        for relative in required_context_files(sent):
            if posixpath.dirname(relative) == folder:
                in_wheel = "/".join([*package.split("."), posixpath.basename(relative)])
                assert in_wheel in names, f"{built[0].name} lacks {in_wheel} (from {relative})"
    readme = (REPO / PYPROJECT["project"]["readme"]).read_text().splitlines()[0]
    assert "Description-Content-Type: text/markdown" in metadata and readme in metadata, (
        f"{built[0].name}: the README is not its long description (was {PYPROJECT['project']['readme']} in the context?)")
    junk = [n for n in names if "__pycache__" in n or n.startswith(("tests/", "deploy/", "docs/"))]
    assert not junk, f"{built[0].name} carries files that are not the package: {junk[:10]}"

    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    scripts = dict(parser["console_scripts"]) if parser.has_section("console_scripts") else {}
    assert scripts.get("fleetloop") == PYPROJECT["project"]["scripts"]["fleetloop"] == "fleetloop.cli:main", (
        f"{built[0].name}: console script `fleetloop` is {scripts.get('fleetloop')!r}, want fleetloop.cli:main")
