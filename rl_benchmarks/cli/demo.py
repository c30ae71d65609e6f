"""``rlbench demo``: generated slides -> tiles -> features -> nested CV -> pictures -> report.

Every stage is the real command a user runs on real data (``rlbench tile``,
``extract-slides``, ``cv``, ``report``), called in-process on a small generated cohort
whose class is decided by planted "tumour" islands and whose survival follows them.
Without ``weights_path`` the tile encoder is a randomly initialised ViT-Tiny, and the
outputs say so plainly; with ``weights_path`` it is Phikon.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from rl_benchmarks.cli.console import header, quiet_logging, save_config
from rl_benchmarks.cli.main import run
from rl_benchmarks.cli.validation import hydra_quote
from rl_benchmarks.utils.io import write_csv

RANDOM_NOTE = ("Tile features come from a RANDOMLY INITIALISED ViT-Tiny (no pretrained weights "
               "were given): the numbers show the pipeline works, not what Phikon achieves. "
               "Run `rlbench demo weights_path=<ibot_vit_base_pancan.pth>` for Phikon features.")


class DemoStepFailed(Exception):
    """A step of the demo returned a non-zero exit code (its own message was printed)."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"demo: the step '{name}' failed (exit code {code})")
        self.code = code


def _step(name: str, code: int) -> None:
    if code != 0:
        raise DemoStepFailed(name, code)


def extractor_overrides(weights_path: str | None, quick: bool) -> tuple[list[str], str, str]:
    """Hydra overrides that choose the tile encoder, a description, and a short name."""
    if not weights_path:
        depth = 4 if quick else 6
        return (["feature_extractor=timm", "feature_extractor.name=timm:vit_tiny_patch16_224",
                 "feature_extractor.pretrained=false", f"+feature_extractor.depth={depth}"],
                f"ViT-Tiny/16 (timm, {depth} blocks), random weights", "ViT-Tiny-random")
    path = Path(weights_path)
    if path.is_dir():
        return (["feature_extractor=phikon_hf", f"feature_extractor.weights_path={hydra_quote(path)}"],
                f"Phikon (Hugging Face folder {path})", "Phikon")
    return ([f"feature_extractor.weights_path={hydra_quote(path)}"], f"Phikon (iBOT checkpoint {path})",
            "Phikon")


def cv_overrides(cfg: DictConfig, quick: bool, features: str) -> list[str]:
    outer, inner, epochs = ((3, 3, 8) if quick else
                            (cfg.n_splits_outer, cfg.n_splits_inner, cfg.num_epochs))
    vs = "task.validation_scheme"
    return [f"{vs}.n_splits_outer={outer}", f"{vs}.n_splits_inner={inner}",
            f"{vs}.trainer_cfg.num_epochs={epochs}", f"{vs}.trainer_cfg.batch_size={cfg.batch_size}",
            "device=cpu", f"seed={cfg.seed}",
            f"task.data.feature_extractor={features}", *_verbose(cfg)]


def _verbose(cfg: DictConfig) -> list[str]:
    """``verbose=true`` for every step when the demo runs verbose (else the steps are quiet)."""
    return ["verbose=true"] if cfg.get("verbose", False) else []


def main(cfg: DictConfig) -> int:
    """Run the demo; a failed step prints one line and returns that step's exit code."""
    try:
        return _run(cfg)
    except DemoStepFailed as err:
        print(str(err), file=sys.stderr)
        return err.code


def _run(cfg: DictConfig) -> int:
    from rl_benchmarks.demo.synthetic import generate_cohort

    t0 = time.perf_counter()
    out = Path(cfg.output_dir).resolve()
    quick = bool(cfg.quick)
    verbose = bool(cfg.get("verbose", False))
    quiet_logging(verbose)
    header("demo", "generated slides -> tiles -> features -> nested CV -> heatmaps -> report"
           + (" (quick mode)" if quick else ""), out)
    save_config(cfg, out, verbose)

    # 1. A generated cohort of H&E-like pyramidal TIFFs.
    cohort = generate_cohort(out / "cohort", n_patients=cfg.n_patients, n_slides=cfg.n_slides,
                             quick=quick, seed=cfg.seed)
    print(f"demo: cohort of {len(cohort.frame)} slides from "
          f"{cohort.frame.patient_id.nunique()} patients in {cohort.root}")

    # 2. Tissue detection and tiling (coords.npy + QC thumbnails).
    tiles_dir = out / "tiles"
    _step("tile", run("tile", [f"slides={hydra_quote(cohort.csv_path)}", f"output_dir={hydra_quote(tiles_dir)}",
                               f"num_workers={cfg.num_workers}", *_verbose(cfg)]))

    # 3. Tile features.
    ext_args, encoder, features_name = extractor_overrides(cfg.weights_path, quick)
    slides_csv = out / "slides.csv"
    frame = cohort.frame.assign(
        coords_path=[str(tiles_dir / Path(p).name / "coords.npy") for p in cohort.frame.slide_path]
    )
    write_csv(slides_csv, frame[["slide_path", "coords_path"]], index=False)
    features_dir = out / "features"
    _step("extract-slides", run("extract-slides", [
        f"slides={hydra_quote(slides_csv)}", f"output_dir={hydra_quote(features_dir)}", "batch_size=32",
        f"num_workers={min(int(cfg.num_workers), 1)}", f"seed={cfg.seed}", *ext_args, *_verbose(cfg),
    ]))

    # 4. Cohort CSVs for the two tasks, then nested CV.
    feats = [str(features_dir / Path(p).name / "features.npy") for p in cohort.frame.slide_path]
    base = cohort.frame.assign(features_path=feats)[["slide_id", "patient_id", "features_path"]]
    cls_csv, surv_csv = out / "cohort_classification.csv", out / "cohort_survival.csv"
    write_csv(cls_csv, base.assign(label=cohort.frame.label), index=False)
    write_csv(surv_csv, base.assign(time=cohort.frame.time, event=cohort.frame.event), index=False)
    logs = out / "cv"
    experiments = []
    for model in cfg.models:
        _step(f"cv {model}", run("cv", [f"task={cls_csv}", f"model={model}",
                                        f"logs_root_dir={hydra_quote(logs)}",
                                        *cv_overrides(cfg, quick, features_name)]))
        experiments.append(("classification", model))
    _step("cv survival", run("cv", [f"task={surv_csv}", f"model={cfg.survival_model}",
                                    f"logs_root_dir={hydra_quote(logs)}", *cv_overrides(cfg, quick, features_name)]))
    experiments.append(("survival", cfg.survival_model))

    # 5. Heatmaps of the highest-scoring test slides, each drawn by its own fold's model, with
    #    the planted islands outlined; localisation of every positive test slide.
    heatmaps, localisation = draw_heatmaps(logs, cohort, features_dir, out / "heatmaps", cfg.heatmap_slides,
                                           out_csv=out / "localisation.csv")
    loc_line = localisation_line(localisation)
    print(f"demo: {len(heatmaps)} heatmaps in {out / 'heatmaps'}; localisation "
          f"(mean tile AUROC over positive test slides): {loc_line}")

    # 6. The report.
    from rl_benchmarks.reports.report import build_report

    notes = [f"Tile encoder: {encoder}."]
    if not cfg.weights_path:
        notes.insert(0, RANDOM_NOTE)
    notes.append(f"Cohort: {len(cohort.frame)} generated slides, "
                 f"{cohort.frame.patient_id.nunique()} patients; class = planted tumour islands; "
                 "survival follows the tumour burden.")
    if loc_line:
        notes.append("Localisation of the planted islands (tile-level AUROC of the tile scores, tiles at "
                     f"least 25 % inside an island, mean over the positive test slides): {loc_line}. "
                     "Per slide: localisation.csv.")
    report = build_report(out, title="rl-benchmarks demo", notes=notes)
    html = getattr(report, "path", out / "report.html")
    shot = None
    if cfg.screenshot:
        shot = _screenshot(Path(html), out / "report_screenshot.png")

    print(f"\ndemo: done in {time.perf_counter() - t0:.0f} s")
    if not cfg.weights_path:
        print("demo: NOTE " + RANDOM_NOTE)
    print(f"  slides and ground truth : {cohort.root}")
    print(f"  tiles + QC pictures     : {tiles_dir}/<slide>/coords.npy, qc.png")
    print(f"  features                : {features_dir}/<slide>/features.npy")
    print(f"  nested CV experiments   : {logs}/cross_validation/")
    print(f"  heatmaps                : {len(heatmaps)} in {out / 'heatmaps'}")
    print(f"  localisation            : {out / 'localisation.csv'}")
    print(f"  report                  : {html}")
    if shot:
        print(f"  report screenshot       : {shot}")
    return 0


def localisation_line(slides) -> str:
    """``ABMIL (classification) 0.981 (11 slides), ...``: each experiment's mean tile AUROC."""
    from rl_benchmarks.reports.localisation import summarise_localisation

    if slides is None or slides.empty:
        return ""
    summary = summarise_localisation(slides)
    parts = []
    for r in summary[summary["fold"] == "all"].itertuples():
        value = "undefined" if r.n_slides == 0 else f"{r.mean_auroc:.3f}"
        parts.append(f"{r.experiment} {value} ({r.n_slides} slides)")
    return "; ".join(parts)


def draw_heatmaps(logs: Path, cohort, features_dir: Path, out_dir: Path, n: int,
                  out_csv: Path | None = None):
    """Heatmaps for every experiment whose model has tile scores (the planted islands
    outlined), and the localisation of every positive test slide (written to ``out_csv``).
    Returns (PNG paths, per-slide localisation DataFrame)."""
    import pandas as pd
    from hydra.utils import instantiate

    from rl_benchmarks.models import slide_models
    from rl_benchmarks.reports.heatmap import heatmaps_from_cv
    from rl_benchmarks.reports.localisation import SLIDE_COLUMNS, localisation_from_cv
    from rl_benchmarks.slides.annotations import LesionTruth
    from rl_benchmarks.utils.safe_names import unique_labels, unique_stems
    from rl_benchmarks.val_schemes.experiment import experiment_label, iter_experiments

    slides = {
        row.slide_id: (row.slide_path, str(features_dir / Path(row.slide_path).name / "features.npy"))
        for row in cohort.frame.itertuples(index=False)
    }
    truths = {
        sid: LesionTruth(mask=cohort.planted_mask(sid), mask_downsample=cohort.mask_downsample,
                         source=f"planted islands ({sid})")
        for sid in cohort.frame.slide_id
    }
    runs = []
    for experiment in iter_experiments(logs):
        if not experiment.fold_model_paths():
            continue
        params = experiment.read_params()
        node = dict(params["task"]["validation_scheme"]["trainer_cfg"]["model"])
        model = str(node.pop("_target_")).rsplit(".", 1)[-1]  # the registry takes class names
        if not hasattr(getattr(slide_models, model, None), "tile_scores"):
            continue  # MeanPool has no tile scores
        # the exact constructor arguments the experiment trained with
        kwargs = instantiate({k: v for k, v in node.items()
                              if k not in ("in_features", "out_features")}, _convert_="all")
        runs.append((experiment, model, kwargs, experiment_label(params, experiment.read_summary())))
    labels = unique_labels({r[0].path: r[3] for r in runs})
    stems = unique_stems(labels)
    drawn: list[Path] = []
    frames = []
    for experiment, model, kwargs, _ in runs:
        drawn += heatmaps_from_cv(experiment.path, slides, model, out_dir, model_kwargs=kwargs,
                                  use_reference_kwargs=False, max_slides=n, truths=truths,
                                  name=stems[experiment.path])
        positive = {sid: truths[sid] for sid in cohort.frame.slide_id[cohort.frame.label == 1]}
        frames.append(localisation_from_cv(experiment.path, slides, positive, model, model_kwargs=kwargs,
                                           use_reference_kwargs=False, experiment=labels[experiment.path]))
    localisation = (pd.concat(frames, ignore_index=True) if frames
                    else pd.DataFrame(columns=SLIDE_COLUMNS))
    if out_csv is not None:
        write_csv(out_csv, localisation, index=False)
    return drawn, localisation


def _screenshot(html: Path, png: Path) -> Path | None:
    try:
        from rl_benchmarks.reports.browser import find_chromium, screenshot

        if find_chromium() is None:
            print("demo: Chromium not found; no screenshot of the report")
            return None
        screenshot(html, png)
        return png
    except Exception as exc:  # a picture never fails the demo
        print(f"demo: screenshot skipped ({exc})")
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run("demo", sys.argv[1:]))
