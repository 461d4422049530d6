"""Generate the Python gRPC code from protos/budget/v1/*.proto.

Usage: python protos/generate.py [OUT_DIR]

OUT_DIR defaults to client/budgetd_client/_proto. The generated files import
each other as ``budget.v1``; they are rewritten to import from
``budgetd_client._proto.budget.v1`` so that no bare top-level ``budget``
package is installed. tests/test_protos.py regenerates into a temp dir and
fails if the checked-in files differ.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "client" / "budgetd_client" / "_proto"
PACKAGE_PREFIX = "budgetd_client._proto."


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    import grpc_tools
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("budget/v1/*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written: list[pathlib.Path] = []
    for path in sorted(p for p in out_dir.rglob("*.py*")
                       if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts):
        text = path.read_text()
        text = text.replace("from budget.v1 import", f"from {PACKAGE_PREFIX}budget.v1 import")
        text = text.replace("import budget.v1.", f"import {PACKAGE_PREFIX}budget.v1.")
        path.write_text(text)
        written.append(path)
    for pkg in (out_dir, out_dir / "budget", out_dir / "budget" / "v1"):
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
        written.append(init)
    return sorted(set(written))


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for p in generate(target):
        print(p.relative_to(target))
