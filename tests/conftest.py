"""Shared pytest fixtures. Each block below belongs to one part of the project; keep them delimited."""

# =====================================================================================================
# Local Hugging Face Hub (tests/hub_server.py) -- fixture `local_hub`
#
# huggingface_hub, transformers and datasets read HF_ENDPOINT (and the cache / token locations) into
# module constants when they are first imported, so the environment is set HERE, at conftest import,
# before any test module imports them. Every test run therefore talks to a private Hub on 127.0.0.1
# and a temporary HF_HOME: the user's cache and token are never read or written, and nothing goes to
# huggingface.co. Subprocesses started by tests inherit this environment.
# =====================================================================================================
import atexit
import os
import secrets
import shutil
import socket
import sys
import tempfile

if any(name in sys.modules for name in ("huggingface_hub", "transformers", "datasets")):
    # Too late to redirect them: they would talk to huggingface.co with the user's token.
    raise RuntimeError(
        "tests/conftest.py must be imported before huggingface_hub/transformers/datasets "
        "(a pytest plugin or sitecustomize imported them first); the local Hub cannot be used."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOCAL_HUB_PORT = _free_port()
LOCAL_HUB_TOKEN = "hf_local" + secrets.token_hex(16)
LOCAL_HUB_USER = "test-user"
_LOCAL_HF_HOME = tempfile.mkdtemp(prefix="hf_home_tests_")
atexit.register(shutil.rmtree, _LOCAL_HF_HOME, True)

for _var in (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE",
    "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_CACHE",
    "HF_MODULES_CACHE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
):  # fmt: skip
    os.environ.pop(_var, None)
os.environ.update(
    {
        "HF_ENDPOINT": f"http://127.0.0.1:{LOCAL_HUB_PORT}",
        "HF_HUB_DISABLE_XET": "1",  # LFS over plain HTTP: the local Hub does not speak Xet
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": _LOCAL_HF_HOME,
        "HF_TOKEN": LOCAL_HUB_TOKEN,
    }
)

# =====================================================================================================
# Threads under pytest-xdist: the workers share the machine's cores, so each worker (and every process
# its tests start) gets an equal share rather than all of them, which would oversubscribe the cores and
# slow every worker down. Set before torch is imported; an explicit OMP_NUM_THREADS wins.
# =====================================================================================================
_xdist_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _xdist_workers > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _xdist_workers))
# ===================================================================================== end threads

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def local_hub():
    """A running local Hub for the whole session: ``.endpoint``, ``.token``, ``.namespace`` (user name).

    Repository names must be unique per test (the Hub lives for the session); use e.g.
    ``f"{local_hub.namespace}/my-test-{uuid.uuid4().hex[:8]}"``.
    """
    sys.path.insert(0, os.path.dirname(__file__))
    try:
        from hub_server import LocalHub
    finally:
        sys.path.pop(0)
    hub = LocalHub(port=LOCAL_HUB_PORT, token=LOCAL_HUB_TOKEN, user=LOCAL_HUB_USER).start()
    try:
        yield hub
    finally:
        hub.stop()


# ===================================================================================== end local Hub


# =====================================================================================================
# Resolved versions: the libraries our figures depend on, named at the start of every test log, quiet
# runs (CI's `pytest -q`) included: a fresh install resolves whatever the registry offers within
# pyproject.toml's ranges.
# =====================================================================================================
def pytest_sessionstart(session: pytest.Session) -> None:
    from importlib.metadata import PackageNotFoundError, version

    resolved = []
    for package in ("torch", "torchvision", "timm", "transformers", "datasets", "accelerate", "evaluate"):
        try:
            resolved.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            resolved.append(f"{package} not installed")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("resolved versions: " + ", ".join(resolved))
