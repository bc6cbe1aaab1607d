"""The package as users install it: a built wheel and an editable install, each in a fresh virtual
environment, find every variant of the top-level hub_configs/ by name (library and CLI).

The environments see the system site-packages (torch, transformers, ... are not downloaded again) and the
package is installed with --no-deps and --ignore-installed (a copy installed elsewhere, e.g. a developer's
editable install, is neither used nor touched); PYTHONPATH is cleared so that the checkout's src/ is not
imported.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from narrative_grounding import available_variants

REPO = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import json
    import narrative_grounding as ng
    from narrative_grounding.factory import HUB_CONFIGS_DIR
    names = ng.available_variants()
    for name in names:
        ng.load_variant(name)
        ng.load_config(name)
    ng.create_model("epng-tiny")
    ng.load_processor("epng-tiny")
    print(json.dumps({"package": ng.__file__, "hub_configs": str(HUB_CONFIGS_DIR), "variants": names}))
    """
)


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The files a build reads, copied so that the build leaves nothing (build/, *.egg-info) in the checkout."""
    root = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, root / name)
    for name in ("src", "hub_configs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return root


def _run(command: list[str], cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _fresh_environment(path: Path, *, system_pth_files: bool = True) -> Path:
    """A virtual environment seeing the packages of this interpreter's site-packages.

    system_pth_files=False adds those folders as plain path entries instead of `--system-site-packages`, so
    that their .pth files are not run: a developer's own editable install of this package (a .pth path
    entry, found before the meta-path finder of an editable install with a mapped package) stays out.
    """
    options = ["--system-site-packages"] if system_pth_files else []
    _run([sys.executable, "-m", "venv", *options, "--without-pip", str(path)], cwd=path.parent)
    python = path / "bin" / "python"
    if not system_pth_files:
        (venv_site,) = json.loads(
            _run(
                [str(python), "-c", "import json, site; print(json.dumps(site.getsitepackages()))"], cwd=path
            )
        )
        Path(venv_site, "system_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _check_installed(python: Path, expected_root: Path, cwd: Path) -> dict:
    report = json.loads(_run([str(python), "-c", CHECK], cwd=cwd).strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(expected_root), report["package"]
    assert report["variants"] == available_variants()
    listed = _run([str(python.parent / "narrative-grounding"), "variants"], cwd=cwd)
    assert [line.split()[0] for line in listed.splitlines()] == available_variants()
    return report


@pytest.mark.slow  # builds and installs the package twice: about a minute
def test_wheel_install_finds_every_variant(source_copy: Path, tmp_path: Path) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            ".",
        ],
        cwd=source_copy,
    )
    (wheel,) = (tmp_path / "dist").glob("narrative_grounding-*.whl")
    python = _fresh_environment(tmp_path / "venv")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", str(wheel)], cwd=tmp_path)
    report = _check_installed(python, tmp_path / "venv", cwd=tmp_path)
    # the folders travel inside the package, with every file (tokenizer and model card included)
    installed = Path(report["hub_configs"])
    assert installed == Path(report["package"]).parent / "hub_configs"
    for folder in (REPO / "hub_configs").iterdir():
        assert sorted(path.name for path in (installed / folder.name).iterdir()) == sorted(
            path.name for path in folder.iterdir()
        )


@pytest.mark.slow
def test_editable_install_finds_every_variant(source_copy: Path, tmp_path: Path) -> None:
    python = _fresh_environment(tmp_path / "venv", system_pth_files=False)
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--ignore-installed",
            "--no-build-isolation",
            "-e",
            str(source_copy),
        ],
        cwd=tmp_path,
    )
    report = _check_installed(python, source_copy, cwd=tmp_path)
    assert Path(report["hub_configs"]) == source_copy / "hub_configs"
