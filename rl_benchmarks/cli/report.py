"""``rlbench report run_dir=<folder>``: write report.html for a run folder."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def main(cfg: DictConfig) -> int:
    """Draw the run's figures, build report.html, optionally screenshot it; 0 on success."""
    from rl_benchmarks.reports.report import build_report
    from rl_benchmarks.val_schemes.predictions import PredictionsError

    if OmegaConf.is_missing(cfg, "run_dir"):
        print("rlbench report: give run_dir=<folder of a run>", file=sys.stderr)
        return 2
    run_dir = Path(cfg.run_dir)
    notes = cfg.get("notes")
    if notes is None:
        notes = []
    elif isinstance(notes, str):
        notes = [notes]
    else:
        notes = list(OmegaConf.to_container(notes, resolve=True))
    try:
        rep = build_report(run_dir, title=cfg.title, results_csv=cfg.results_csv,
                           draw_figures=bool(cfg.draw_figures), notes=[str(n) for n in notes])
    except (FileNotFoundError, PredictionsError, ValueError) as exc:
        print(f"rlbench report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {rep.path}")
    print(f"  experiments: {len(rep.experiments)}, figures drawn: {len(rep.figures)}, "
          f"pictures linked: {len(rep.images)}")
    print(f"  results table: {rep.table_source}")
    if cfg.screenshot:
        from rl_benchmarks.reports.browser import screenshot

        try:
            shot = screenshot(rep.path, run_dir / "report_screenshot.png")
            print(f"  screenshot: {shot}")
        except (FileNotFoundError, RuntimeError) as exc:
            print(f"rlbench report: no screenshot: {exc}", file=sys.stderr)
            return 1
    print(f"open it with: xdg-open {rep.path}  (a static page; no server needed)")
    return 0
