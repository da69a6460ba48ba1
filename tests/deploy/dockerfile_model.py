"""A small model of the image's build inputs for tests/deploy/test_dockerfile.py: a Dockerfile
parser (enough of the reference syntax for deploy/Dockerfile) and a .dockerignore matcher with
Docker's semantics (Go filepath.Match patterns plus `**`, `!` exceptions, last match wins, a
pattern matching a parent directory matches what is inside)."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# --------------------------------------------------------------------------------------------
# A small Dockerfile parser: enough of the reference syntax for this file's instructions.


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuations joined
    line: int  # 1-based line of the instruction's first physical line

    def flags_and_rest(self) -> tuple[dict[str, str], str]:
        """Leading `--name=value` flags (RUN --mount, COPY --from, ...) and what follows them."""
        flags: dict[str, str] = {}
        rest = self.args
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        return flags, rest

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of ENTRYPOINT/CMD/RUN/SHELL, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    index: int
    base: str  # as written (may hold ${VARS})
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise AssertionError(f"{DOCKERFILE}: no stage named {name!r} (stages: {[s.name for s in self.stages]})")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Physical lines joined at the escape character; comment lines dropped, also mid-instruction."""
    lines = text.splitlines()
    escape = "\\"
    for raw in lines:  # parser directives: `# key=value` lines at the very top
        match = re.fullmatch(r"#\s*(\w+)\s*=\s*(\S+)\s*", raw)
        if not match:
            break
        if match.group(1).lower() == "escape":
            escape = match.group(2)
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if not current:
            start = number
        body = raw.rstrip()
        if body.endswith(escape):
            current.append(body[: -len(escape)])
            continue
        current.append(body)
        out.append((start, " ".join(part.strip() for part in current if part.strip())))
        current = []
    if current:
        out.append((start, " ".join(part.strip() for part in current if part.strip())))
    return out


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for number, line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            _, rest = instruction.flags_and_rest()
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"{DOCKERFILE}:{number}: cannot read FROM {args!r}"
            stages.append(Stage(len(stages), words[0], name))
        elif not stages:
            assert instruction.keyword == "ARG", (
                f"{DOCKERFILE}:{number}: only ARG may come before the first FROM, found {instruction.keyword}")
            global_args.update(parse_arg(instruction.args))
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def parse_arg(args: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for word in shlex.split(args):
        name, sep, default = word.partition("=")
        out[name] = default if sep else None
    return out


def parse_pairs(args: str) -> dict[str, str]:
    """ENV/LABEL `key=value ...` (quotes and backslash continuations already handled)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy `ENV key value`
        return {words[0]: " ".join(words[1:])}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        assert sep, f"{DOCKERFILE}: cannot read {word!r} in {args!r}"
        pairs[key] = value
    return pairs


_VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def substitute(text: str, variables: dict[str, str | None]) -> str:
    """Dockerfile variable substitution: $V, ${V}, ${V:-word}, ${V:+word}; unknown ones stay."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        value = variables.get(name)
        if match.group(2) == "-":
            return value if value else match.group(3)
        if match.group(2) == "+":
            return match.group(3) if value else ""
        return match.group(0) if value is None else value
    return _VAR.sub(replace, text)


@dataclass
class Chain:
    """The stages an image is built through for one VARIANT, root first, and what they set."""

    stages: list[Stage]
    external_base: str
    env: dict[str, str]
    labels: dict[str, str]

    def instructions(self, keyword: str) -> list[Instruction]:
        return [i for stage in self.stages for i in stage.all(keyword)]


def resolve_chain(dockerfile: Dockerfile, target: str, variant: str) -> Chain:
    overrides = {"VARIANT": variant}  # as `docker build --build-arg VARIANT=...`
    build_args = {**dockerfile.global_args, **overrides}
    stages: list[Stage] = []
    stage = dockerfile.stage(target)
    names = {s.name for s in dockerfile.stages if s.name}
    while True:
        stages.insert(0, stage)
        base = substitute(stage.base, build_args)
        if base not in names:
            external = base
            break
        stage = dockerfile.stage(base)
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    for stage in stages:
        scope: dict[str, str | None] = {}
        for instruction in stage.instructions:
            variables = {**scope, **env}
            if instruction.keyword == "ARG":
                for name, default in parse_arg(instruction.args).items():
                    # `ARG X` takes the build argument (or the global default); `ARG X=d` defaults to d.
                    scope[name] = build_args.get(name) if default is None else overrides.get(name, default)
            elif instruction.keyword == "ENV":
                env.update({k: substitute(v, variables) for k, v in parse_pairs(instruction.args).items()})
            elif instruction.keyword == "LABEL":
                labels.update({k: substitute(v, variables) for k, v in parse_pairs(instruction.args).items()})
    return Chain(stages, external, env, labels)


def shell_segments(run: Instruction) -> list[str]:
    """A shell-form RUN's commands, split at &&, ||, ; and |."""
    _, command = run.flags_and_rest()
    return [segment.strip() for segment in re.split(r"&&|\|\||;|\|", command) if segment.strip()]


def apt_packages(run: Instruction) -> list[str]:
    packages = []
    for segment in shell_segments(run):
        words = segment.split()
        if "apt-get" in words and "install" in words:
            packages += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return packages


# --------------------------------------------------------------------------------------------
# .dockerignore, with Docker's semantics (moby/patternmatcher MatchesOrParentMatches and
# buildkit's dockerignore.ReadAll)


@dataclass(frozen=True)
class IgnorePattern:
    text: str
    exclusion: bool  # a `!` line: re-includes
    regex: re.Pattern[str]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1:i + 2] == "*":  # ** (and **/): any number of path segments
                i += 2
                if pattern[i:i + 1] == "/":
                    i += 1
                out += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch in "[]^-":  # character classes pass through, as in Go's filepath.Match
            out += ch
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def read_dockerignore(text: str) -> list[IgnorePattern]:
    patterns = []
    for number, raw in enumerate(text.splitlines()):
        if number == 0:
            raw = raw.removeprefix("\ufeff")
        if raw.startswith("#"):
            continue
        line = raw.strip()
        if not line:
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = posixpath.normpath(line)
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        patterns.append(IgnorePattern(line, exclusion, _pattern_regex(line)))
    return patterns


def is_ignored(patterns: list[IgnorePattern], path: str) -> bool:
    """True when Docker leaves `path` (relative, slash-separated) out of the build context."""
    matched = False
    parent = posixpath.dirname(path)
    parents = parent.split("/") if parent else []
    for pattern in patterns:
        if pattern.exclusion != matched:  # a later rule can only flip the current verdict
            continue
        hit = pattern.regex.match(path) is not None
        if not hit:
            hit = any(pattern.regex.match("/".join(parents[:depth + 1])) for depth in range(len(parents)))
        if hit:
            matched = not pattern.exclusion
    return matched


def context_candidates() -> list[str]:
    """Files of the checkout a `docker build .` would consider: tracked and untracked-not-ignored."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: cannot list the repository's files")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout.decode()
    return sorted(p for p in set(out.split("\0")) if p and (REPO / p).is_file())


def package_dirs() -> dict[str, str]:
    """Import name -> source folder, for every package of pyproject.toml."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    out = {}
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        root = max((k for k in mapping if package == k or package.startswith(k + ".")), key=len)
        out[package] = "/".join([mapping[root], *package[len(root):].split(".")[1:]])
    return out


def required_context_files(files: list[str]) -> list[str]:
    """What the wheel build needs: pyproject.toml, README.md, every package's .py and package data."""
    required = ["pyproject.toml", PYPROJECT["project"]["readme"]]
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package, folder in package_dirs().items():
        py = [f for f in files if posixpath.dirname(f) == folder and f.endswith(".py")]
        assert f"{folder}/__init__.py" in py, f"package {package}: {folder}/__init__.py is not in the repository"
        required += py
        under = [f for f in files if f.startswith(folder + "/")]
        required += [f for f in under for glob in data.get(package, []) if fnmatchcase(posixpath.relpath(f, folder), glob)]
    return required
