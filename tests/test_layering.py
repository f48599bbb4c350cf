"""The module layers stay acyclic: triton/ (kernels and launchers) imports nothing of ops/ (validation,
dispatch); what both need lives in the lower modules (_shapes, backends, slowfast_reference)."""
import ast
import pathlib

import pytest

TRITON_DIR = pathlib.Path(__file__).resolve().parents[1] / "slowfast_kernels" / "triton"


def _imported_modules(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # function-level (lazy) imports count too
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


# The sm_90 compile report is a tool above both layers, not a kernel module: it runs the ops' launchers (and
# their plan rules, e.g. fuse_pool_rule) to record the launches it compiles.
KERNEL_MODULES = sorted(p for p in TRITON_DIR.glob("*.py") if not p.name.startswith("sm90_"))


@pytest.mark.parametrize("path", KERNEL_MODULES, ids=lambda p: p.name)
def test_triton_does_not_import_ops(path):
    bad = [m for m in _imported_modules(path)
           if m in ("..ops", "slowfast_kernels.ops") or m.startswith(("..ops.", "slowfast_kernels.ops."))]
    assert not bad, f"{path.name} imports {bad}: move the shared helper into a lower module (e.g. _shapes.py)"


def test_the_check_sees_an_ops_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..ops.conv3d_bn_act import output_shape\n")
    assert list(_imported_modules(probe)) == ["..ops.conv3d_bn_act"]
