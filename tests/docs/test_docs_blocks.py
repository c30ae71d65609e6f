"""The code blocks of README.md and docs/*.md run as written (issue S).

Every fenced ``bash``/``sh``/``python`` block carries a marker on the nearest non-blank
line above its fence, an HTML comment (invisible on GitHub and in the mkdocs site):

* ``<!-- runnable -->``: the block is run by :func:`test_runnable_bash_block` /
  :func:`test_runnable_python_blocks` on tiny generated data;
* ``<!-- needs reference data: <reason> -->``: it needs the reference's slides, labels or
  weights (Phikon, TCGA features...), which no test generates;
* ``<!-- not run: <reason> -->``: e.g. it sets up an environment, or is too slow for the
  test suite.

:func:`test_every_block_is_marked` fails for an unmarked block, so a new block gets a
decision. Whatever its marker, every ``rlbench <command> key=value`` line of a bash block
is composed and value-checked (no work done) by :func:`test_documented_keys_are_accepted`:
every key the docs show exists, takes the value shown, and is set without ``+``.

How a runnable block runs (the substitution mechanism):

* the placeholder paths of :data:`PLACEHOLDERS` (``/data/slides``, ``/data``,
  ``/features/iBOTViTBasePANCAN``, ``CMU-1.svs``, ...) are replaced, as whole path words,
  by generated files of a session workspace (two small pyramidal TIFFs at 0.25 mpp, one
  without mpp, random ``features.npy`` files); a longer placeholder wins;
* each document gets its own working folder, prepared by :data:`FILE_SETUP` (e.g. the
  ``cohort.csv`` and ``slides/`` that a block names by a relative path);
* bash blocks run with ``bash -e -o pipefail`` in that folder, the virtual environment's
  ``bin`` first on ``PATH`` (``rlbench`` and ``python`` are this checkout's), offline, with
  ``RLB_DATA_DIR`` and ``RLB_LOGS_DIR`` in the workspace (nothing is written elsewhere);
* the python blocks of one document run in order in one namespace (as a reader would run
  them one after the other), in that folder, in this process.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_LANGS = {"bash", "sh", "shell", "python", "py"}

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>runnable|needs reference data|not run)\s*"
                     r"(?::\s*(?P<reason>.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is, its language, text and marker."""

    path: Path
    line: int          # 1-based line of the opening fence
    lang: str
    text: str
    kind: str | None   # runnable | needs reference data | not run | None (unmarked)
    reason: str

    @property
    def where(self) -> str:
        name = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{name}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of the markdown file ``path`` with the marker above it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        lang = (m.group("info").split() or [""])[0].lower()
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence)
                                      and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        body = [line[indent:] if line[:indent].strip() == "" else line for line in lines[i + 1:j]]
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _MARKER.match(lines[k]) if k >= 0 else None
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n",
                            marker.group("kind") if marker else None,
                            (marker.group("reason") or "").strip() if marker else ""))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for p in DOCS for b in parse_blocks(p)]
CODE_BLOCKS = [b for b in ALL_BLOCKS if b.lang in CODE_LANGS]


def test_every_block_is_marked():
    """Each bash/python block says whether it runs, and if not, why not."""
    bad = []
    for b in CODE_BLOCKS:
        if b.kind is None:
            bad.append(f"{b.where}: no <!-- runnable --> / <!-- needs reference data: why --> / "
                       "<!-- not run: why --> marker above the fence")
        elif b.kind != "runnable" and not b.reason:
            bad.append(f"{b.where}: '{b.kind}' needs a reason")
        elif b.kind == "runnable" and b.reason:
            bad.append(f"{b.where}: 'runnable' takes no reason")
    assert not bad, "\n".join(bad)


def test_markers_sit_on_code_blocks():
    """A marker above a non-code block (or above no block) is a mistake."""
    bad = [f"{b.where}: marker on a '{b.lang or 'plain'}' block"
           for b in ALL_BLOCKS if b.kind and b.lang not in CODE_LANGS]
    assert not bad, "\n".join(bad)


def test_parse_blocks(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n<!-- not run: slow -->\n\n```bash\necho a\n```\n\n"
                   "* item\n\n  <!-- runnable -->\n  ```python\n  x = 1\n  ```\n\n"
                   "```text\nplain\n```\n", encoding="utf-8")
    blocks = parse_blocks(doc)
    assert [(b.line, b.lang, b.text, b.kind, b.reason) for b in blocks] == [
        (5, "bash", "echo a\n", "not run", "slow"),
        (12, "python", "x = 1\n", "runnable", ""),
        (16, "text", "plain\n", None, ""),
    ]


# --------------------------------------------------------------------------- keys


TOOL_SCRIPTS = {
    "tools/tile_level_tasks/linear_evaluation.py": "linear-eval",
    "tools/extract_features/extract_slide_features.py": "extract-slides",
    "tools/extract_features/extract_tile_features.py": "extract-tiles",
    "tools/slide_level_tasks/get_results.py": "results",
    "tools/slide_level_tasks/cross_validation.py": "cv",
}


def _command_lines(text: str) -> list[str]:
    """Shell lines of a bash block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if words:
            out.append(words)
    return out


def documented_invocations(blocks: list[Block] | None = None) -> list[tuple[str, str, list[str]]]:
    """``(where, command, key=value words)`` of every ``rlbench``/``tools/`` call in a bash
    block; words with a placeholder (``...``, ``<x>``, ``[x]``) are left out."""
    from rl_benchmarks.cli.main import COMMANDS

    calls = []
    for b in CODE_BLOCKS if blocks is None else blocks:
        if b.lang not in {"bash", "sh", "shell"}:
            continue
        for words in _command_lines(b.text):
            command, args = None, []
            for start, word in enumerate(words[:-1]):
                module = start > 0 and words[start - 1] == "-m"
                if word == "rlbench" or (module and word in ("rl_benchmarks",
                                                             "rl_benchmarks.cli.main")):
                    command, args = words[start + 1], words[start + 2:]
                    break
                if word in TOOL_SCRIPTS:
                    command, args = TOOL_SCRIPTS[word], words[start + 1:]
                    break
            if command not in COMMANDS:
                continue
            keep, skip = [], False
            for arg in args:
                if arg in (";", "&&", "|"):
                    break
                if skip or arg in ("--config-name", "-cn"):  # the reference scripts' flag
                    skip = not skip
                    continue
                if arg.startswith("-") or "..." in arg or "<" in arg or arg.startswith("["):
                    continue
                keep.append(arg)
            calls.append((b.where, command, keep))
    return calls


def invocation_errors(calls: list[tuple[str, str, list[str]]]) -> list[str]:
    """One line per documented call whose keys do not compose or whose values fail the
    checks of ``rlbench`` (nothing is run), or that needs ``+``."""
    import importlib

    from rl_benchmarks.cli.main import COMMANDS, compose_checked
    from rl_benchmarks.cli.multirun import single_runs

    bad = []
    for where, command, args in calls:
        plus = [a for a in args if a.startswith("+")]
        if plus:
            bad.append(f"{where}: rlbench {command}: {plus} need '+': make them plain keys")
            continue
        module = importlib.import_module(COMMANDS[command].module)
        rewrite = getattr(module, "preprocess_overrides", None)
        try:  # a sweep (-m, a,b values) is checked job by job, as it would run
            for job in single_runs(command, args):
                compose_checked(command, rewrite(list(job)) if rewrite else job)
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its line
            bad.append(f"{where}: rlbench {command} {' '.join(args)}: {exc}")
    return bad


@pytest.mark.slow
def test_documented_keys_are_accepted():
    """Every key=value the docs show composes, passes the value checks, needs no ``+``."""
    calls = documented_invocations()
    assert len(calls) > 20  # the parser found the docs' commands
    bad = invocation_errors(calls)
    assert not bad, "\n".join(bad)


def test_documented_key_errors_are_found(tmp_path):
    doc = tmp_path / "keys.md"
    doc.write_text("<!-- not run: x -->\n```bash\nrlbench tile slides=a output_dir=b \\\n"
                   "    tile_size=-1   # a comment\nrlbench tile slides=a +qc=false\n"
                   "torchrun -m rl_benchmarks tile slides=a titl_size=3\n"
                   "python tools/slide_level_tasks/get_results.py --config-name config "
                   "logs_root_dir=x\nrlbench tile <slides> ...\n```\n", encoding="utf-8")
    calls = documented_invocations(parse_blocks(doc))
    assert [(c, a) for _, c, a in calls] == [
        ("tile", ["slides=a", "output_dir=b", "tile_size=-1"]), ("tile", ["slides=a", "+qc=false"]),
        ("tile", ["slides=a", "titl_size=3"]), ("results", ["logs_root_dir=x"]), ("tile", [])]
    bad = invocation_errors(calls)
    assert len(bad) == 3
    assert "tile_size must be a positive integer" in bad[0]
    assert "need '+'" in bad[1] and "did you mean tile_size" in bad[2]


# --------------------------------------------------------------------------- workspace


def _tissue_image(flip: bool) -> np.ndarray:
    """A 3584 x 3584 px image (0.25 mpp: 8 x 8 tiles of 224 px at 0.5 mpp) with an H&E-pink
    region over the middle 6 x 6 tiles on a light background, and a little noise."""
    t0 = 448
    rng = np.random.default_rng(int(flip))
    img = np.full((8 * t0, 8 * t0, 3), 242, np.uint8)
    img[t0:7 * t0, t0:7 * t0] = (214, 120, 170)
    img[t0:2 * t0, t0:3 * t0] = 242  # a notch, so that the two slides differ
    img = np.clip(img.astype(int) + rng.integers(-6, 7, img.shape[:2] + (1,)), 0, 255)
    img = img.astype(np.uint8)
    return img[::-1].copy() if flip else img


@dataclass(frozen=True)
class Workspace:
    root: Path

    def sub(self, text: str) -> str:
        """``text`` with every placeholder path replaced (longest first, whole words)."""
        names = sorted(PLACEHOLDERS, key=len, reverse=True)
        pattern = re.compile(r"(?<![\w.\-/])(" + "|".join(map(re.escape, names)) + r")(?![\w.\-])")
        return pattern.sub(lambda m: PLACEHOLDERS[m.group(1)].format(ws=self.root), text)

    def cwd(self, doc: Path) -> Path:
        """The working folder of the blocks of ``doc`` (prepared once)."""
        folder = self.root / "cwd" / doc.stem
        if not folder.exists():
            folder.mkdir(parents=True)
            setup = FILE_SETUP.get(doc.name)
            if setup is not None:
                setup(self, folder)
        return folder


#: Placeholder paths of the docs -> generated files (``{ws}``: the session workspace).
PLACEHOLDERS: dict[str, str] = {
    "/data/my_slides": "{ws}/slides",
    "/data/slides": "{ws}/slides",
    "/data/ctranspath": "{ws}/slides",
    "/data/tcga_frozen": "{ws}/slides_nompp",
    "/raw/TCGA_COAD": "{ws}/slides",
    "/data": "{ws}/data",  # any other /data/... path: outputs and the data root
    "/features/iBOTViTBasePANCAN": "{ws}/features",
    "CMU-1.svs": "{ws}/slides/slide_a.tiff",
}


def _slides_setup(ws: Workspace, cwd: Path) -> None:
    """docs/slides.md: ``cohort.csv`` (slide_path) and ``slides/`` in the working folder."""
    (cwd / "slides").symlink_to(ws.root / "slides", target_is_directory=True)
    pd.DataFrame({"slide_path": sorted(str(p) for p in (ws.root / "slides").glob("*.tiff"))}
                 ).to_csv(cwd / "cohort.csv", index=False)


def _datasets_setup(ws: Workspace, cwd: Path) -> None:
    """docs/datasets.md: the CSV cohort shown in the page, as ``cohort.csv``."""
    block = next(b for b in parse_blocks(REPO / "docs" / "datasets.md") if b.lang == "csv")
    (cwd / "cohort.csv").write_text(block.text, encoding="utf-8")


def _pretraining_setup(ws: Workspace, cwd: Path) -> None:
    """docs/pretraining.md: a ``tiles/`` folder of 16 random 64-px PNG tiles."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (cwd / "tiles").mkdir()
    for i in range(16):
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(cwd / "tiles" / f"tile_{i:02d}.png")


def _linear_eval_setup(ws: Workspace, cwd: Path) -> None:
    """docs/linear_eval.md: one's own tiles under ``/data``: features of 60 tiles with a
    labels CSV (``path``, ``label``, ``split``), and an ImageFolder tree of 42 tiny PNGs with
    their features (ids ``<split>/<class>/<stem>``); features are shifted by the class."""
    from PIL import Image

    data, rng, classes = ws.root / "data", np.random.default_rng(0), ["ADI", "LYM", "TUM"]
    labels = rng.integers(0, 3, 60)
    ids = np.array([f"tile_{i:03d}" for i in range(60)])
    folder = data / "features" / "MyViT" / "my_tiles"
    folder.mkdir(parents=True)
    np.save(folder / "tile_features.npy",
            (rng.normal(size=(60, 8)) + labels[:, None]).astype(np.float32))
    np.save(folder / "tile_ids.npy", ids)
    pd.DataFrame({"path": [f"tiles/{i}.png" for i in ids],
                  "label": [classes[k] for k in labels],
                  "split": np.where(np.arange(60) < 40, "train", "test")}
                 ).to_csv(data / "my_tiles.csv", index=False)
    tile_ids, feats = [], []
    for split, count in (("train", 30), ("test", 12)):
        for i in range(count):
            k = i % 3
            leaf = data / "tree" / split / classes[k]
            leaf.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(leaf / f"img_{i:02d}.png")
            tile_ids.append(f"{split}/{classes[k]}/img_{i:02d}")
            feats.append(rng.normal(size=8) + k)
    folder = data / "features" / "MyViT" / "tree"
    folder.mkdir(parents=True)
    np.save(folder / "tile_features.npy", np.array(feats, np.float32))
    np.save(folder / "tile_ids.npy", np.array(tile_ids))


FILE_SETUP: dict[str, Callable[[Workspace, Path], None]] = {
    "linear_eval.md": _linear_eval_setup,
    "slides.md": _slides_setup,
    "datasets.md": _datasets_setup,
    "pretraining.md": _pretraining_setup,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    from rl_benchmarks.slides.synthetic import write_pyramidal_tiff

    root = tmp_path_factory.mktemp("docs_ws")
    for folder in ("slides", "slides_nompp", "data"):
        (root / folder).mkdir()
    write_pyramidal_tiff(root / "slides" / "slide_a.tiff", _tissue_image(False), mpp=0.25,
                         compression="jpeg")
    write_pyramidal_tiff(root / "slides" / "slide_b.tiff", _tissue_image(True), mpp=0.25,
                         compression="jpeg")
    write_pyramidal_tiff(root / "slides_nompp" / "slide_c.tiff", _tissue_image(False),
                         mpp=None, compression="jpeg")
    rng = np.random.default_rng(0)
    for slide in ("case01_a", "case01_b", "case02"):  # the slides of docs/datasets.md
        folder = root / "features" / slide
        folder.mkdir(parents=True)
        n = 6
        coords = np.stack([np.full(n, 17), np.arange(n), np.zeros(n)], axis=1)
        feats = np.concatenate([coords, rng.normal(size=(n, 8))], axis=1).astype(np.float32)
        np.save(folder / "features.npy", feats)
    return Workspace(root)


def test_placeholders_are_whole_words():
    ws = Workspace(Path("/ws"))
    assert ws.sub("slides=/data/slides out=/data/coords") == "slides=/ws/slides out=/ws/data/coords"
    assert ws.sub("a=/database b=/x/data c='/data'") == "a=/database b=/x/data c='/ws/data'"
    assert ws.sub('open_slide("CMU-1.svs")') == 'open_slide("/ws/slides/slide_a.tiff")'


# --------------------------------------------------------------------------- running


RUNNABLE_BASH = [pytest.param(b, id=b.where) for b in CODE_BLOCKS
                 if b.kind == "runnable" and b.lang in {"bash", "sh", "shell"}]
RUNNABLE_PY = {}
for _b in CODE_BLOCKS:
    if _b.kind == "runnable" and _b.lang in {"python", "py"}:
        RUNNABLE_PY.setdefault(_b.path, []).append(_b)


def run_bash(block: Block, ws: Workspace) -> tuple[int, str]:
    """Run a bash block as described in the module docstring: ``(exit code, report)``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               RLB_DATA_DIR=str(ws.root / "data"), RLB_LOGS_DIR=str(ws.root / "logs"),
               PYTHONPATH=str(REPO))
    script = ws.sub(block.text)
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ws.cwd(block.path),
                          env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, (f"{block.where}: exit {proc.returncode}\n--- script\n{script}\n"
                             f"--- stderr\n{proc.stderr[-3000:]}\n"
                             f"--- stdout\n{proc.stdout[-2000:]}")


def run_python(blocks: list[Block], ws: Workspace) -> str | None:
    """Run python blocks in order in one namespace; the first failure's report, or None."""
    here = os.getcwd()
    os.chdir(ws.cwd(blocks[0].path))
    try:
        namespace: dict = {"__name__": "__docs__"}
        for block in blocks:
            code = ws.sub(block.text)
            try:
                exec(compile(code, block.where, "exec"), namespace)  # noqa: S102 - our docs
            except Exception:  # noqa: BLE001 - reported with the block's place
                return f"{block.where} failed:\n{code}\n{traceback.format_exc(limit=-4)}"
    finally:
        os.chdir(here)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE_BASH)
def test_runnable_bash_block(block: Block, workspace: Workspace):
    code, report = run_bash(block, workspace)
    assert code == 0, report


@pytest.mark.slow
@pytest.mark.parametrize("doc", [pytest.param(p, id=str(p.relative_to(REPO)))
                                 for p in RUNNABLE_PY])
def test_runnable_python_blocks(doc: Path, workspace: Workspace):
    failure = run_python(RUNNABLE_PY[doc], workspace)
    assert failure is None, failure


@pytest.mark.slow
def test_a_failing_block_fails(workspace: Workspace, tmp_path):
    """The runners report a failing command anywhere in a block, and a raising snippet."""
    doc = tmp_path / "broken.md"
    doc.write_text("<!-- runnable -->\n```bash\nrlbench tile slides=/data/none output_dir=out\n"
                   "echo after\n```\n\n<!-- runnable -->\n```python\nx = 1\n```\n\n"
                   "<!-- runnable -->\n```python\ny = x / 0\n```\n", encoding="utf-8")
    bash, first, second = parse_blocks(doc)
    code, report = run_bash(bash, workspace)
    assert code == 2 and "broken.md:2: exit 2" in report
    assert "after" not in report.split("--- stdout")[1]  # bash -e stopped at the failure
    failure = run_python([first, second], workspace)
    assert failure is not None and "broken.md:13 failed" in failure
    assert "ZeroDivisionError" in failure
    assert run_python([first], workspace) is None


def test_some_blocks_run():
    """The docs keep runnable examples (a guard against marking everything 'not run')."""
    assert len(RUNNABLE_BASH) >= 1 and sum(map(len, RUNNABLE_PY.values())) >= 4
