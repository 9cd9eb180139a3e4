"""`make lab`: a live JupyterLab serves each chapter (book/NN_*.py) as a notebook, through jupytext."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "01_nca_to_proxynca.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_live_jupyterlab_opens_a_chapter_as_a_notebook(tmp_path):
    pytest.importorskip("jupyterlab")
    pytest.importorskip("jupytext")
    port, token = _free_port(), "pnca-test-token"
    settings = tmp_path / "settings"  # what `make lab` installs, here in a private folder
    settings.mkdir()
    shutil.copy(ROOT / "book" / "lab-settings.json", settings / "overrides.json")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT / 'book'}",
         f"--LabApp.app_settings_dir={settings}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # the server starts in a few seconds
            try:
                _get(f"{base}/api/status", token)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        model = _get(f"{base}/api/contents/{CHAPTER}?type=notebook&content=1", token)
        assert model["type"] == "notebook" and model["format"] == "json"
        cells = model["content"]["cells"]
        assert cells[0]["cell_type"] == "markdown" and "From NCA to ProxyNCA" in "".join(cells[0]["source"])
        assert any("parameters" in c["metadata"].get("tags", []) for c in cells)  # papermill's parameters cell
        assert sum(c["cell_type"] == "code" for c in cells) > 5
        # `make lab`'s settings: a click on a chapter opens it as a notebook, not as a Python file
        plugin = _get(f"{base}/lab/api/settings/@jupyterlab/docmanager-extension:plugin", token)
        assert plugin["schema"]["properties"]["defaultViewers"]["default"] == {"python": "Jupytext Notebook"}
    finally:
        server.terminate()
        server.wait(timeout=30)
