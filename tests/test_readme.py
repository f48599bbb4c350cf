"""README.md says nothing the repository contradicts: the paths it names exist, the commands and options it
names are in the CLI's --help, and its Python usage snippet calls only names, arguments and keywords the API
has (and runs, end to end, on a synthetic video and checkpoint)."""
import ast
import functools
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# `python -m slowfast_kernels <cmd>` (or `torchrun ... -m slowfast_kernels <cmd>`) starts a CLI command; the other
# tools the README names take their own options, which are not ours to check.
CLI = re.compile(r"(?:python )?-m slowfast_kernels ([a-z][a-z0-9_-]*)")
OTHER_TOOLS = re.compile(r"\bpip install\b|\btorchrun\b|python -m pytest|python benchmarks/|python setup\.py|\btrtexec\b|\bovc\b|\bsm90_report\b")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _fenced_blocks(text):
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def _scopes(text):
    """(tool, fragment) pairs: each fenced code line and each inline code span, split where a command starts;
    tool is a CLI subcommand, "other" (pip, torchrun's own options, pytest) or None (prose)."""
    fragments = []
    for lang, body in _fenced_blocks(text):
        if lang != "python":
            fragments += body.splitlines()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    fragments += re.findall(r"`([^`\n]+)`", prose)
    scopes = []
    for frag in fragments:
        starts = sorted([(m.start(), m.group(1)) for m in CLI.finditer(frag)] +
                        [(m.start(), "other") for m in OTHER_TOOLS.finditer(frag)])
        bounds = [(0, None)] + starts
        for (begin, tool), (end, _) in zip(bounds, bounds[1:] + [(len(frag), None)]):
            scopes.append((tool, frag[begin:end]))
    return scopes


@functools.lru_cache(maxsize=None)
def _help(command):
    """`python -m slowfast_kernels <command> --help`: (exit status, output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "python"),
                                                      os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "slowfast_kernels", command, "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    return run.returncode, run.stdout + run.stderr


def _commands():
    return sorted({m.group(1) for m in CLI.finditer(README)})


SEARCHED = ("", "slowfast_kernels", "python/slowfast_reference", "benchmarks", "csrc", "csrc/cuda", "tools", "docs",
            "tests")
SUFFIXES = r"\.(py|md|txt|sh|json|toml|cfg|cpp|cu|cuh|h|png)$"


def _code_text():
    """Every inline code span, markdown link target and non-Python code block of the README."""
    prose = re.sub(r"^```.*?^```", "", README, flags=re.S | re.M)
    parts = re.findall(r"`([^`\n]+)`", prose) + re.findall(r"\]\(([^)\s]+)\)", prose)
    parts += [body for lang, body in _fenced_blocks(README) if lang != "python"]
    return "\n".join(parts)


def _named_paths():
    """Repository paths the README names in code: tokens with a `/` or a source-file suffix; placeholders
    (<op>, <machine>), URLs, options, @lists and the files a user brings (videos, checkpoints, outputs) aside."""
    paths = set()
    for token in re.split(r"[\s,()\[\]=`\"']+", _code_text()):
        token = token.rstrip(".:;")
        if not token or "://" in token or "<" in token or token.startswith(("-", "@", ".")):
            continue
        if ("/" in token or re.search(SUFFIXES, token)) and re.fullmatch(r"[\w./-]+", token):
            paths.add(token)
    return sorted(paths)


def test_readme_names_the_design_contract():
    assert (ROOT / "docs" / "DESIGN.md").is_file()
    assert "docs/DESIGN.md" in README
    assert "shared design folder" not in README


@pytest.mark.parametrize("path", _named_paths())
def test_named_path_exists(path):
    # README paths are relative to the repository root, or to the folder the README describes them in
    # (bench_conv3d.py next to benchmarks/bench_model.py, plan.py in slowfast_kernels/).
    hits = [ROOT / d / path for d in SEARCHED]
    assert any(p.exists() for p in hits), f"README names {path!r}, which is not in the repository"


def test_paths_were_found():
    """The path scan itself works: the files every README must name are among those it finds."""
    found = _named_paths()
    for expected in ("docs/DESIGN.md", "setup.py", "csrc/", "benchmarks/bench_model.py", "plan.py", "pack.py",
                     "benchmarks/plot_results.py", "python/slowfast_reference/"):
        assert expected in found, found


def test_readme_names_the_four_commands():
    assert set(_commands()) >= {"demo", "classify", "bench", "backends"}


@pytest.mark.parametrize("command", _commands())
def test_named_command_exists(command):
    status, out = _help(command)
    assert status == 0, f"`python -m slowfast_kernels {command} --help` exited {status}:\n{out[-2000:]}"


def _options_by_command():
    named = {}
    for tool, fragment in _scopes(README):
        if tool == "other":
            continue
        for option in OPTION.findall(fragment):
            named.setdefault(tool, set()).add(option)
    return named


def test_option_attribution():
    """The README's classify synopsis options are attributed to classify, pip's to no command."""
    named = _options_by_command()
    assert {"--views", "--checkpoint", "--output"} <= named["classify"]
    assert not any("--no-build-isolation" in opts for tool, opts in named.items() if tool)
    assert "--no-build-isolation" in _other_tools_options() and "--nproc-per-node" in _other_tools_options()


@pytest.mark.parametrize("command,option", sorted((c, o) for c, opts in _options_by_command().items() if c
                                                  for o in opts))
def test_named_option_is_in_the_commands_help(command, option):
    status, out = _help(command)
    assert status == 0, out[-2000:]
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", out), \
        f"README names `{option}` for `{command}`, but `python -m slowfast_kernels {command} --help` lacks it"


def _other_tools_options():
    return {o for tool, fragment in _scopes(README) if tool == "other" for o in OPTION.findall(fragment)}


@pytest.mark.parametrize("option", sorted(_options_by_command().get(None, set()) - _other_tools_options()))
def test_option_in_prose_belongs_to_some_command(option):
    helps = [_help(c)[1] for c in _commands()]
    assert any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", h) for h in helps), \
        f"README names `{option}`, which no command's --help lists"


# -- the Python usage snippet -------------------------------------------------------------------------------

def _snippet():
    blocks = [body for lang, body in _fenced_blocks(README) if lang == "python"]
    assert len(blocks) == 1, "README: expected one Python usage snippet"
    return blocks[0]


def _imports(tree):
    """{alias: module object} of the snippet's imports (importing them)."""
    import importlib

    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name] = importlib.import_module(a.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for a in node.names:
                assert hasattr(module, a.name), f"README: from {node.module} import {a.name}: no such name"
                names[a.asname or a.name] = getattr(module, a.name)
    return names


def _check_call(fn, call, where):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    args = [ast.literal_eval(a) if isinstance(a, ast.Constant) else object() for a in call.args]
    kwargs = {k.arg: object() for k in call.keywords if k.arg is not None}
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise AssertionError(f"README: {where}{sig}: {exc}") from None


def test_snippet_names_and_calls_exist_in_the_api():
    tree = ast.parse(_snippet())
    modules = _imports(tree)
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            base = modules[node.value.id]
            if inspect.ismodule(base):
                assert hasattr(base, node.attr), f"README: {node.value.id}.{node.attr} does not exist"
                checked += 1
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id in modules:
            fn = getattr(modules[node.func.value.id], node.func.attr, None)
            if inspect.ismodule(modules[node.func.value.id]) and callable(fn):
                _check_call(fn, node, f"{node.func.value.id}.{node.func.attr}")
    assert checked >= 5  # R.slowfast_r50_8x8, sk.load_checkpoint, sk.fuse, io.read_video, sk.pack_pathways


def test_snippet_runs(tmp_path, monkeypatch):
    """The snippet as written, on a synthetic video and a checkpoint of random weights named as it names them."""
    pytest.importorskip("av")
    import torch

    import slowfast_reference as R
    from slowfast_kernels import io

    source = _snippet()
    video_name = re.search(r'read_video\("([^"]+)"', source).group(1)
    ckpt_name = re.search(r'load_checkpoint\(model, "([^"]+)"\)', source).group(1)
    torch.manual_seed(0)
    model = R.slowfast_r50_8x8(num_classes=400).eval()
    torch.save({"model_state": model.state_dict()}, tmp_path / ckpt_name)  # PyTorchVideo's .pyth container
    io.write_video(tmp_path / video_name, io.synthetic_video(70, 64, 80))
    # The snippet's 256-pixel sizes, scaled to the 64x80 test video (the rest runs as written).
    source = source.replace("size=256, crop=256", "size=64, crop=64").replace("size=256, crop=224", "size=64, crop=56")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(source, "README.md", "exec"), scope)
    probs, logits = scope["probs"], scope["logits"]
    for key, value in model.state_dict().items():  # the checkpoint it names was loaded
        assert torch.equal(scope["model"].state_dict()[key], value), key
    assert logits.shape == (1, 400) and probs.shape == (1, 400)
    with torch.no_grad():
        expected = scope["model"]([scope["slow"][None], scope["fast"][None]]).softmax(-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)


# -- docs/DESIGN.md: the public API block names what exists, with these parameters -------------------------

def _design_api_entries():
    """(module name, entry text) for every API entry of DESIGN.md's first code block: lines at column 0
    (with their indented continuation while parentheses are open), split at top-level `;`."""
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    block = _fenced_blocks(design[design.index("## Public API"):])[0][1]
    entries, module, pending = [], None, ""
    for line in block.splitlines():
        if line.startswith("# slowfast_"):
            module = line[2:].split(":")[0]
            continue
        if pending:
            pending += " " + line.strip()
        elif line[:1].isalpha():
            pending = line
        else:
            continue
        if pending.count("(") == pending.count(")"):
            code = pending.split("  #")[0]
            entries += [(module, part.strip()) for part in _split_top(code, ";") if part.strip()]
            pending = ""
    return entries


def _split_top(text, sep):
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _resolve(module, dotted):
    import importlib

    import slowfast_reference as R

    if dotted.split(".")[0] == "model":  # a reference model instance
        obj, rest = R.SlowFast, dotted.split(".")[1:]
    else:
        obj, rest = importlib.import_module(module), dotted.split(".")
    for name in rest:
        assert hasattr(obj, name), f"DESIGN.md names {module}: {dotted}, which does not exist"
        obj = getattr(obj, name)
    return obj


def _design_params(call):
    """[(name, default text or None, keyword-only)] of `name(a, b=1, *, c=2, ...)`; "..." ends the list."""
    inner = call[call.index("(") + 1:]
    depth, end = 1, 0
    for end, ch in enumerate(inner):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            break
    items, kwonly, params = _split_top(inner[:end], ","), False, []
    for item in (i.strip() for i in items if i.strip()):
        if item == "...":
            params.append(("...", None, kwonly))
            break
        if item == "*":
            kwonly = True
            continue
        m = re.match(r"(\*{0,2}\w+)\s*(?:=\s*(.+))?", item)
        params.append((m.group(1), m.group(2).strip() if m.group(2) else None, kwonly))
    return params


def test_design_api_entries_were_parsed():
    names = [e.split("(")[0].split(" ")[0] for _, e in _design_api_entries()]
    for expected in ("slowfast_r50_8x8", "build_model", "pack_pathways", "load_checkpoint", "temporal_indices",
                     "lateral_fuse", "fold_bn", "conv3d_bn_act", "fuse", "io.read_video", "model.set_head_pool"):
        assert expected in names, names


@pytest.mark.parametrize("module,entry", _design_api_entries())
def test_design_api_entry_matches_the_code(module, entry):
    import torch

    head = re.match(r"[\w.]+", entry).group(0)
    obj = _resolve(module, head)
    if head == "model" or "(" not in entry.split("->")[0]:
        return  # the model's call convention, or a bare name (resolved above)
    sig = inspect.signature(obj)
    real = [p for p in sig.parameters.values() if p.name != "self"]
    documented = _design_params(entry)
    if not documented or documented[-1][0] != "...":
        assert len(documented) == len(real), f"DESIGN.md: {entry}\n  code: {head}{sig}"
    for (name, default, kwonly), p in zip(documented, real):
        if name == "...":
            break
        where = f"DESIGN.md: {head}: parameter {name!r} (code: {head}{sig})"
        if name.startswith("**"):
            assert p.kind is p.VAR_KEYWORD, where
            continue
        assert p.name == name, where
        assert (p.kind is p.KEYWORD_ONLY) == kwonly, where + ": keyword-only differs"
        assert (default is None) == (p.default is p.empty), where + ": default given iff the code has one"
        if default is not None:
            assert eval(default, {"torch": torch}) == p.default, where + f": default {default} vs {p.default!r}"
