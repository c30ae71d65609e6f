"""``hydra/launcher=submitit_slurm`` against stub ``sbatch``/``srun``/``sacct``/``scancel``
commands on PATH: the stub ``sbatch`` runs the job-array script submitit generates, task by
task, locally (with the SLURM_* variables a cluster sets) and records each task's state for
``sacct``. What this shows and what it does not (a real scheduler, queueing, pre-emption)
is stated in docs/sweeps.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from testlib.cohorts import SMALL, write_cohort

from rl_benchmarks.cli.main import main as rlbench
from rl_benchmarks.sweeps.progress import read_events
from rl_benchmarks.val_schemes.results import collect_results

FAST = [*SMALL, "task.validation_scheme.trainer_cfg.num_epochs=2",
        "task.validation_scheme.grid_search_params.learning_rate=[1.0e-3]",
        "task.validation_scheme.grid_search_params.weight_decay=[0.0]"]

SBATCH = r'''
import os, re, subprocess, sys
from pathlib import Path
state = Path(os.environ["STUB_SLURM_STATE"]); state.mkdir(parents=True, exist_ok=True)


def tasks_of(text):
    array = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.M)).get("array")
    if not array:
        return [None]
    lo, hi = re.match(r"(\d+)-(\d+)", array).groups()
    return list(range(int(lo), int(hi) + 1))


def run(job, script):  # the "cluster": runs the array's tasks one after the other
    for task in tasks_of(script.read_text()):
        jid = str(job) if task is None else f"{job}_{task}"
        env = dict(os.environ, SLURM_JOB_ID=str(job), SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1",
                   SLURM_NODEID="0", SLURM_PROCID="0", SLURM_LOCALID="0",
                   SLURM_JOB_NODELIST="localhost")
        if task is not None:
            env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task))
        (state / jid).write_text("RUNNING")
        rc = subprocess.call(["bash", str(script)], env=env)
        (state / jid).write_text("COMPLETED" if rc == 0 else "FAILED")


if sys.argv[1] == "--run":
    run(int(sys.argv[2]), Path(sys.argv[3]))
    sys.exit(0)
script = Path(sys.argv[-1])
(state / "scripts").mkdir(exist_ok=True)
counter = state / "next_id"
job = int(counter.read_text()) if counter.exists() else 1000
counter.write_text(str(job + 1))
copy = state / "scripts" / f"{job}.sh"
copy.write_text(script.read_text())
for task in tasks_of(copy.read_text()):
    (state / (str(job) if task is None else f"{job}_{task}")).write_text("PENDING")
subprocess.Popen([sys.executable, __file__, "--run", str(job), str(copy)],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job}")
'''

SRUN = r'''
import os, subprocess, sys
args = sys.argv[1:]; out = err = None
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        value = args.pop(0)
        for k, v in (("%A", os.environ.get("SLURM_ARRAY_JOB_ID", "")),
                     ("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "")),
                     ("%j", os.environ["SLURM_JOB_ID"]), ("%t", "0")):
            value = value.replace(k, v)
        if flag == "--output":
            out = value
        else:
            err = value
for path in (out, err):
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
stdout = open(out, "a") if out else None
stderr = open(err, "a") if err else stdout
sys.exit(subprocess.call(args, stdout=stdout, stderr=stderr))
'''

SACCT = r'''
import os, sys
from pathlib import Path
state = Path(os.environ["STUB_SLURM_STATE"])
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for path in sorted(state.iterdir()) if state.exists() else []:
    if path.is_file() and path.name.split("_")[0] in ids:
        print(f"{path.name}|{path.read_text()}|localhost")
'''

SCANCEL = r'''
import os, sys
from pathlib import Path
Path(os.environ["STUB_SLURM_STATE"], "cancelled").write_text(" ".join(sys.argv[1:]))
'''


def _install_stubs(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT),
                       ("scancel", SCANCEL)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)


@pytest.mark.slow
def test_submitit_slurm_job_array_runs_the_experiments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _install_stubs(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_SLURM_STATE", str(tmp_path / "slurm"))
    (tmp_path / "c1").mkdir()
    csv = write_cohort(tmp_path / "c1")
    code = rlbench(["cv", "-m", f"task={csv}", "model=mean_pool,chowder", "logs_root_dir=logs",
                    "hydra.sweep.dir=sweep", "hydra/launcher=submitit_slurm",
                    "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_task=1",
                    "hydra.launcher.cpus_per_task=2", "hydra.launcher.mem_gb=4",
                    "hydra.launcher.timeout_min=30", "hydra.launcher.array_parallelism=2",
                    *FAST])
    assert code == 0

    # the job script submitit generated: one array of 2 tasks with the requested resources
    scripts = list((tmp_path / "slurm" / "scripts").glob("*.sh"))
    assert len(scripts) == 1
    text = scripts[0].read_text()
    for flag in ("--partition=gpu", "--gpus-per-task=1", "--cpus-per-task=2", "--mem=4GB",
                 "--time=30", "--array=0-1%2"):
        assert f"#SBATCH {flag}" in text, flag
    assert "srun --unbuffered" in text and "submitit.core._submit" in text
    job = scripts[0].stem
    assert sorted(p.name for p in (tmp_path / "slurm").glob(f"{job}_*")) == [f"{job}_0",
                                                                             f"{job}_1"]
    # each experiment ran in its array task (outside this process) and was collected
    starts = [e for e in read_events(tmp_path / "sweep" / "sweep_progress.jsonl")
              if e["event"] == "start"]
    assert len(starts) == 2 and os.getpid() not in {e["pid"] for e in starts}
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["done", "done"]
    table = collect_results(tmp_path / "logs")
    assert len(table) == 2 and set(table["model"]) == {"MeanPool", "Chowder"}
