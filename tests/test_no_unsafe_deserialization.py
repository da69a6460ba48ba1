"""Nothing in the project's own sources deserialises bytes with pickle or evaluates them.

An ``ast`` scan of system/, replay/, learner/, actors/, protos/ and fleetloop/ (not tests/, not the
generated ``*_pb2*.py``) reports, as ``file:line: what``: imports of pickle-like modules, ``eval``/
``exec``, ``yaml.load`` without a safe loader (and ``yaml.unsafe_load``/``full_load``),
``torch.load`` without ``weights_only=True``, ``numpy.load`` with ``allow_pickle`` on, subprocess
calls through a shell, and the pickle-based loaders of the libraries we use (DeepSpeed's
``load_checkpoint``, torch.distributed's ``*_object`` collectives). Import aliases are resolved
(``np.load``, ``from yaml import load``). A use may stay only in ``ALLOWED``, with the reason the
bytes it reads are trusted.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("system", "replay", "learner", "actors", "protos", "fleetloop")

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve", "jsonpickle"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
SUBPROCESS_CALLS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
                    "subprocess.Popen"}
PICKLING_COLLECTIVES = {"all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
                        "recv_object_list", "send_object_list"}
"""torch.distributed collectives that pickle their payloads."""

ALLOWED: dict[tuple[str, str, str], str] = {
    # (file, enclosing function, what) -> why the bytes are trusted
    ("learner/learner.py", "Learner._load_checkpoint", "DeepSpeed load_checkpoint unpickles (torch.load, "
                                                       "weights_only=False)"):
        "Trust boundary: --resume reads the DeepSpeed checkpoint this learner wrote itself into its own run "
        "directory (checkpoints/deepspeed/); that directory must be writable by the learner only, like its code. "
        "Checkpoints from elsewhere go through safetensors (system/checkpoint.py, `fleetloop model convert-gr00t`).",
    ("learner/learner.py", "Learner.save_checkpoint", "torch.distributed.all_gather_object unpickles what the "
                                                      "other ranks send"):
        "Trust boundary: the peers are the learner's own data-parallel ranks in one torch.distributed process "
        "group of the same job (launched together by Ray Train or the deepspeed launcher); nothing outside the "
        "job can join the group.",
}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    function: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


class _Scanner(ast.NodeVisitor):
    """Collects findings in one module, resolving names bound by its imports."""

    def __init__(self, file: str):
        self.file = file
        self.aliases: dict[str, str] = {}
        self.scope: list[str] = []
        self.findings: list[Finding] = []

    def report(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(self.file, node.lineno, ".".join(self.scope), what))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            self.aliases[alias.asname or top] = alias.name if alias.asname else top
            self._check_module(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if not node.level:  # relative imports name the project's own modules
            self._check_module(node, module)
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"

    def _check_module(self, node: ast.AST, module: str) -> None:
        if module.split(".")[0] in PICKLE_MODULES:
            self.report(node, f"imports {module} (deserialises with pickle/marshal)")

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def _name(self, node: ast.AST) -> str | None:
        """Dotted name of ``node`` with imported aliases resolved (``np.load`` -> ``numpy.load``)."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self._name(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self._name(node.func) or ""
        keywords = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            self.report(node, f"{name.removeprefix('builtins.')}() evaluates code")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if not (loader is not None and (self._name(loader) or "").split(".")[-1] in SAFE_YAML_LOADERS):
                self.report(node, f"{name} without Loader=yaml.SafeLoader (use yaml.safe_load)")
        elif name in ("yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"):
            self.report(node, f"{name} constructs arbitrary objects (use yaml.safe_load)")
        elif name == "torch.load" and not _is_true(keywords.get("weights_only")):
            self.report(node, "torch.load without weights_only=True (unpickles)")
        elif name == "numpy.load" and "allow_pickle" in keywords and not _is_false(keywords["allow_pickle"]):
            self.report(node, "numpy.load with allow_pickle (unpickles)")
        elif name in SHELL_CALLS:
            self.report(node, f"{name} runs a shell command")
        elif name in SUBPROCESS_CALLS and "shell" in keywords and not _is_false(keywords["shell"]):
            self.report(node, f"{name} with shell=True")
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "load_checkpoint":
            self.report(node, "DeepSpeed load_checkpoint unpickles (torch.load, weights_only=False)")
        elif isinstance(node.func, ast.Attribute) and node.func.attr in PICKLING_COLLECTIVES:
            self.report(node, f"torch.distributed.{node.func.attr} unpickles what the other ranks send")
        self.generic_visit(node)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in (False, None)


def scan_source(source: str, file: str = "<snippet>") -> list[Finding]:
    scanner = _Scanner(file)
    scanner.visit(ast.parse(source, filename=file))
    return scanner.findings


def project_sources() -> list[Path]:
    """The project's own Python files: the scanned packages without generated protobuf code."""
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))
             if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))]
    assert len(files) > 50, f"found only {len(files)} sources under {ROOT}: wrong root?"
    return files


def test_project_sources_deserialise_nothing_unsafely():
    findings = [finding for path in project_sources()
                for finding in scan_source(path.read_text(), str(path.relative_to(ROOT)))]
    unexplained = [str(f) for f in findings if (f.file, f.function, f.what) not in ALLOWED]
    assert not unexplained, "unsafe deserialisation or evaluation:\n" + "\n".join(unexplained)
    stale = set(ALLOWED) - {(f.file, f.function, f.what) for f in findings}
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {sorted(stale)}"


UNSAFE = {
    "pickle": ("import pickle", "imports pickle"),
    "cpickle_alias": ("import _pickle as fast", "imports _pickle"),
    "from_marshal": ("from marshal import loads", "imports marshal"),
    "shelve": ("import shelve", "imports shelve"),
    "dill": ("from dill import load", "imports dill"),
    "eval": ("eval(text)", "eval() evaluates code"),
    "exec": ("exec(code, {})", "exec() evaluates code"),
    "yaml_load": ("import yaml\nyaml.load(text)", "yaml.load without Loader"),
    "yaml_unsafe_loader": ("import yaml\nyaml.load(text, Loader=yaml.UnsafeLoader)", "yaml.load without Loader"),
    "yaml_imported_load": ("from yaml import load, Loader\nload(text, Loader)", "yaml.load without Loader"),
    "yaml_full_load": ("import yaml\nyaml.full_load(text)", "yaml.full_load constructs"),
    "torch_load": ("import torch\ntorch.load(path)", "torch.load without weights_only=True"),
    "torch_load_false": ("import torch\ntorch.load(path, weights_only=False)", "torch.load without weights_only"),
    "torch_load_imported": ("from torch import load\nload(path, map_location='cpu')", "torch.load without"),
    "numpy_pickle": ("import numpy as np\nnp.load(path, allow_pickle=True)", "numpy.load with allow_pickle"),
    "numpy_pickle_variable": ("import numpy\nnumpy.load(path, allow_pickle=flag)", "numpy.load with allow_pickle"),
    "shell_true": ("import subprocess\nsubprocess.run(cmd, shell=True)", "subprocess.run with shell=True"),
    "popen_shell": ("from subprocess import Popen\nPopen(cmd, shell=1)", "subprocess.Popen with shell=True"),
    "os_system": ("import os\nos.system(cmd)", "os.system runs a shell command"),
    "deepspeed_load": ("engine.load_checkpoint(folder)", "DeepSpeed load_checkpoint unpickles"),
    "object_collective": ("import torch.distributed as dist\ndist.all_gather_object(out, obj)",
                          "torch.distributed.all_gather_object unpickles"),
}
SAFE = {
    "safe_load": "import yaml\nyaml.safe_load(text)",
    "yaml_safe_loader": "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "yaml_csafe_positional": "import yaml\nfrom yaml import CSafeLoader\nyaml.load(text, CSafeLoader)",
    "torch_weights_only": "import torch\ntorch.load(path, weights_only=True)",
    "numpy_default": "import numpy as np\nnp.load(path)\nnp.load(path, allow_pickle=False)",
    "subprocess_list": "import subprocess\nsubprocess.run(['ls'], check=True)\nsubprocess.Popen(args, shell=False)",
    "model_eval": "model.eval()\npolicy = DualSystemPolicy(cfg).eval()",
    "json": "import json\njson.loads(text)",
    "safetensors": "from safetensors.torch import load_file\nload_file(path)",
    "relative_module": "from . import pickle_free\nfrom .codec import decode_tensor",
}


@pytest.mark.parametrize(("source", "words"), UNSAFE.values(), ids=UNSAFE.keys())
def test_scanner_reports_each_unsafe_use(source, words):
    [finding] = scan_source(source)
    assert words in finding.what and str(finding).startswith("<snippet>:")


@pytest.mark.parametrize("source", SAFE.values(), ids=SAFE.keys())
def test_scanner_accepts_safe_uses(source):
    assert scan_source(source) == []


def test_findings_name_file_line_and_function():
    [finding] = scan_source("class Loader:\n    def read(self):\n        return eval(self.text)\n", "pkg/mod.py")
    assert (str(finding), finding.function) == ("pkg/mod.py:3: eval() evaluates code", "Loader.read")
