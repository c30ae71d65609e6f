"""MkDocs hook: pages generated at build time, so they never go stale.

* ``index.md`` is the README (links into ``docs/`` rewritten for the site);
* ``benchmarks.md`` is BENCHMARKS.md;
* ``reference/cli.md`` is the ``--help`` text of every ``rlbench`` command;
* ``reference/api/<package>.md`` documents each module of each package (mkdocstrings).
"""

from __future__ import annotations

import contextlib
import io
import pkgutil
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]

# Packages of the API reference, in the order of the data flow.
API_PACKAGES = [
    ("slides", "Slides: opening, tissue, tiling, reading"),
    ("models.feature_extractors", "Feature extractors"),
    ("extraction", "Extraction pipelines"),
    ("datasets", "Cohorts and datasets"),
    ("models.slide_models", "MIL slide models"),
    ("losses", "Losses"),
    ("metrics", "Metrics"),
    ("trainers", "Trainers"),
    ("val_schemes", "Validation schemes"),
    ("evaluation", "Linear probe, kNN, fine-tuning"),
    ("pretraining", "iBOT pre-training"),
    ("reports", "Plots, heatmaps, report"),
    ("demo", "Synthetic demo cohort"),
    ("utils", "Utilities"),
]


def _readme() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)
    return text.replace("](BENCHMARKS.md)", "](benchmarks.md)")


def _cli_reference() -> str:
    from rl_benchmarks.cli.main import COMMANDS, main

    parts = ["# CLI reference", "",
             "Generated from `rlbench <command> --help` when the site is built.", ""]
    for name, spec in COMMANDS.items():
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            main([name, "--help"])
        parts += [f"## `rlbench {name}`", "", spec.help, "", "```text",
                  buffer.getvalue().rstrip(), "```", ""]
    return "\n".join(parts)


def _modules(package: str) -> list[str]:
    import importlib

    pkg = importlib.import_module(f"rl_benchmarks.{package}")
    names = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if not info.ispkg:
            names.append(info.name)
    return sorted(names)


def _api_pages() -> dict[str, str]:
    pages = {}
    index = ["# API reference", "",
             "One page per package, generated from the docstrings.", ""]
    for package, title in API_PACKAGES:
        slug = package.replace(".", "_")
        body = [f"# {title} (`rl_benchmarks.{package}`)", ""]
        for module in _modules(package):
            body += [f"::: {module}", "    options:", "      heading_level: 2", ""]
        pages[f"reference/api/{slug}.md"] = "\n".join(body)
        index.append(f"- [{title}]({slug}.md)")
    pages["reference/api/index.md"] = "\n".join(index) + "\n"
    return pages


def on_files(files: Files, config) -> Files:  # noqa: ANN001 - mkdocs hook signature
    generated = {
        "index.md": _readme(),
        "benchmarks.md": (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"),
        "reference/cli.md": _cli_reference(),
        **_api_pages(),
    }
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    return files
