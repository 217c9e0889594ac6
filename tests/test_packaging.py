"""The project as an installable package: the wheel carries the code, the embedded model and its datasets,
declares requirements.txt as its dependencies, and its entry points run from a fresh virtual environment."""

from __future__ import annotations

import os
import re
import signal
import site
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from training.catalog import PEFT_METHODS
from training.paths import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_every_python_package_folder_is_listed_in_pyproject():
    folders = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("app", "training")
        for init in (REPO_ROOT / top).rglob("__init__.py")
    }
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    mapped = set(PYPROJECT["tool"]["setuptools"]["package-dir"])  # assets/ and results/ shipped as package data
    assert listed - mapped == folders


def test_dependencies_are_read_from_the_requirements_files():
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    assert "dependencies" not in PYPROJECT["project"]  # a second list would drift from requirements.txt
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    for extra, source in dynamic["optional-dependencies"].items():
        assert source["file"] == [f"requirements-{extra}.txt"]
        assert (REPO_ROOT / source["file"][0]).is_file()


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _fresh_venv(root: Path) -> Path:
    """A virtual environment of its own (no pip, nothing installed) that sees the test environment's
    packages through a .pth file, so installing with --no-deps needs no download."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    Path(own, "test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", *args],
        check=True,
        cwd=REPO_ROOT,
    )


def _run(venv: Path, *args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the checkout
    done = subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serves_first_page(venv: Path, home: Path) -> str:
    """Start `vl-peft-lab`, GET / and stop it; the page's HTML."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PORT=str(port), VLPEFT_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(
        [str(venv / "bin" / "vl-peft-lab")],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return response.read().decode()
            except OSError:
                time.sleep(0.5)
        raise AssertionError("vl-peft-lab did not serve its first page within 90 s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.mark.slow
def test_the_wheel_installs_and_its_entry_points_run_from_a_fresh_venv(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO_ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("vl_peft_lab-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert "training/assets/scene-blip/model.safetensors" in names
    assert "training/assets/datasets/scene-vqa/dataset.json" in names
    assert not any(name.startswith(("tests/", "scripts/", "assets/")) for name in names)
    plain = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert [re.sub(r"\s", "", r) for r in plain] == _requirements(REPO_ROOT / "requirements.txt")

    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    _pip_install(python, str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        venv,
        "python",
        "-c",
        "import training.paths as p; print(p.__file__); print(p.DEFAULT_MODEL_DIR); "
        "from training.data.dataset import load_dataset; print(len(load_dataset(None, 'vqa').split('test'))); "
        "from training.run.rates import LR_TABLE; print(LR_TABLE)",
        cwd=elsewhere,
    ).split()
    assert all(Path(path).is_relative_to(venv) for path in where[:2]), where
    assert int(where[2]) > 0
    # the tuned learning rates travel with the package, so runs there take them as a checkout's runs do
    assert Path(where[3]).is_relative_to(venv) and Path(where[3]).is_file(), where

    table = _run(venv, "vl-peft", "methods", "--budget", "0.5%", cwd=elsewhere)
    for method in PEFT_METHODS:
        assert method in table
    page = _serves_first_page(venv, elsewhere)
    assert "VL-PEFT Lab" in page and "gradio" in page.lower()


@pytest.mark.slow
def test_an_editable_install_finds_the_assets_of_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    _pip_install(python, "--no-build-isolation", "-e", str(REPO_ROOT))
    where = _run(
        venv, "python", "-c", "import training.paths as p; print(p.__file__); print(p.DEFAULT_MODEL_DIR)", cwd=tmp_path
    ).split()
    assert where == [str(REPO_ROOT / "training" / "paths.py"), str(REPO_ROOT / "assets" / "scene-blip")]
    assert "lora" in _run(venv, "vl-peft", "methods", "--budget", "20k", cwd=tmp_path)
