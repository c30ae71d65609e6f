"""Open ``report.html`` in headless Chromium: dump the DOM after load, take a screenshot.

Why: the report is checked the way a user sees it (tables in the DOM, pictures that
actually load). Chromium runs with no network services, a fresh profile, and no sandbox
(containers), and is killed if it hangs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--allow-file-access-from-files",
)


def find_chromium() -> str | None:
    """Path of a Chromium binary ($CHROMIUM, then /usr/bin/chromium, then PATH), or None."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found: install it (Debian: apt-get install chromium) "
                                "or set $CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="rlb-chromium-") as profile:
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})


def dump_dom(html_path: str | os.PathLike, timeout: float = 90, budget_ms: int = 5000) -> str:
    """The page's DOM after load (scripts run), as Chromium serialises it."""
    url = Path(html_path).resolve().as_uri()
    res = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium --dump-dom {url} failed (exit {res.returncode}): "
                           f"{res.stderr.strip()[-500:]}")
    return res.stdout


def screenshot(html_path: str | os.PathLike, out_png: str | os.PathLike, width: int = 1280,
               height: int = 2000, timeout: float = 90, budget_ms: int = 5000) -> Path:
    """Save a ``width``×``height`` screenshot of the page to ``out_png``."""
    url = Path(html_path).resolve().as_uri()
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    res = _run([f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}",
                f"--screenshot={tmp}", url], timeout)
    if not tmp.is_file() or tmp.stat().st_size == 0:
        raise RuntimeError(f"chromium --screenshot {url} wrote nothing (exit {res.returncode}): "
                           f"{res.stderr.strip()[-500:]}")
    os.replace(tmp, out)
    return out
