"""End-to-end tests of the local Hub (tests/hub_server.py) with the real huggingface_hub, transformers
and datasets clients: every call below goes over HTTP to the server started by the `local_hub` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def _repo_id(hub, stem: str) -> str:
    # The server lives for the whole session: names must not collide between tests.
    return f"{hub.namespace}/{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def api(local_hub) -> HfApi:
    return HfApi(endpoint=local_hub.endpoint, token=local_hub.token)


def test_environment_points_at_local_hub(local_hub):
    from huggingface_hub import constants

    assert constants.ENDPOINT == local_hub.endpoint == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_DISABLE_XET
    assert os.environ["HF_TOKEN"] == local_hub.token
    # The cache lives in a temporary HF_HOME, never in the user's.
    assert Path(constants.HF_HUB_CACHE).is_relative_to(Path(os.environ["HF_HOME"]))
    assert HfApi().whoami()["name"] == local_hub.namespace


def test_create_repo_model_and_dataset(api, local_hub):
    model_id = _repo_id(local_hub, "model")
    url = api.create_repo(model_id)
    assert url.repo_id == model_id and url.repo_type == "model"
    assert url == f"{local_hub.endpoint}/{model_id}"
    # exist_ok: same repo again is fine, without it the Hub's 409 surfaces.
    assert api.create_repo(model_id, exist_ok=True).repo_id == model_id
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(model_id)
    assert err.value.response.status_code == 409

    dataset_id = _repo_id(local_hub, "data")
    url = api.create_repo(dataset_id, repo_type="dataset", private=True)
    assert url.repo_type == "dataset" and url == f"{local_hub.endpoint}/datasets/{dataset_id}"
    info = api.dataset_info(dataset_id)
    assert info.private is True and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit
    assert api.repo_exists(dataset_id, repo_type="dataset")
    assert not api.repo_exists(dataset_id)  # a dataset is not a model
    # A private repo is invisible without the token.
    assert not HfApi(endpoint=local_hub.endpoint, token=False).repo_exists(dataset_id, repo_type="dataset")
    api.delete_repo(dataset_id, repo_type="dataset")
    assert not api.repo_exists(dataset_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(dataset_id, repo_type="dataset")
    api.delete_repo(dataset_id, repo_type="dataset", missing_ok=True)


def test_writes_need_the_token_and_own_namespace(local_hub):
    anonymous = HfApi(endpoint=local_hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.create_repo(_repo_id(local_hub, "anon"))
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=local_hub.endpoint, token="hf_wrong").whoami()
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=local_hub.endpoint, token=local_hub.token).create_repo("someone-else/repo")
    assert err.value.response.status_code == 403


def _write_folder(root: Path, weights: bytes, text: str) -> None:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text(text)
    (root / "sub" / "weights.safetensors").write_bytes(weights)


def test_upload_folder_lfs_and_downloads_are_identical(api, local_hub, tmp_path):
    repo_id = _repo_id(local_hub, "upload")
    api.create_repo(repo_id)
    src = tmp_path / "src"
    weights = np.random.default_rng(0).bytes(50_000)
    _write_folder(src, weights, "hello hub\n")
    (src / "binary.dat").write_bytes(b"\x00\x01" * 300)  # binary content: the Hub routes it to LFS too

    n_before = len(local_hub.requests)
    commit = api.upload_folder(repo_id=repo_id, folder_path=src, commit_message="first upload")
    log = [f"{m} {p.split('?')[0]}" for m, p, _ in local_hub.requests[n_before:]]
    assert f"POST /api/models/{repo_id}/preupload/main" in log
    assert f"POST /{repo_id}.git/info/lfs/objects/batch" in log
    assert sum(line.startswith("PUT /lfs-objects/") for line in log) == 2  # weights + binary.dat
    assert f"POST /api/models/{repo_id}/commit/main" in log

    info = api.model_info(repo_id, files_metadata=True)
    assert info.sha == commit.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "notes.txt", "sub/weights.safetensors", "binary.dat"}
    assert siblings["notes.txt"].lfs is None and siblings["notes.txt"].size == len("hello hub\n")
    assert siblings["sub/weights.safetensors"].lfs is not None
    assert siblings["sub/weights.safetensors"].lfs.size == len(weights)
    assert siblings["binary.dat"].lfs is not None
    assert sorted(api.list_repo_files(repo_id)) == sorted(siblings)

    path = hf_hub_download(repo_id, "sub/weights.safetensors", cache_dir=tmp_path / "c1")
    assert Path(path).read_bytes() == weights
    snap = Path(snapshot_download(repo_id, cache_dir=tmp_path / "c2"))
    assert (snap / "sub" / "weights.safetensors").read_bytes() == weights
    assert (snap / "notes.txt").read_text() == "hello hub\n"
    assert (snap / "binary.dat").read_bytes() == b"\x00\x01" * 300

    # Uploading the same content again is a no-op: preupload reports the remote oids.
    again = api.upload_folder(repo_id=repo_id, folder_path=src)
    assert again.oid == commit.oid


def test_preupload_decides_lfs_like_the_hub(api, local_hub):
    """The upload mode comes from the repo's .gitattributes, the 10 MiB limit and binary samples."""
    import base64

    from huggingface_hub.utils import get_session

    repo_id = _repo_id(local_hub, "preupload")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"old", path_in_repo="kept.txt", repo_id=repo_id)

    def entry(path: str, size: int, sample: bytes) -> dict:
        return {"path": path, "size": size, "sample": base64.b64encode(sample).decode()}

    response = get_session().post(
        f"{local_hub.endpoint}/api/models/{repo_id}/preupload/main",
        json={
            "files": [
                entry("small.txt", 5, b"hello"),
                entry("big.txt", 11 * 1024 * 1024, b"a" * 512),  # over 10 MiB: LFS whatever the name
                entry("deep/dir/w.safetensors", 8, b"12345678"),  # *.safetensors in .gitattributes
                entry("raw.dat", 4, b"\x00\x01\x02\x03"),  # binary sample
                entry("logs/run.txt", 3, b"log"),
                entry("kept.txt", 3, b"old"),
            ],
            "gitIgnore": "logs/\n",
        },
        headers={"authorization": f"Bearer {local_hub.token}"},
    )
    response.raise_for_status()
    modes = {f["path"]: f for f in response.json()["files"]}
    assert {p: f["uploadMode"] for p, f in modes.items()} == {
        "small.txt": "regular",
        "big.txt": "lfs",
        "deep/dir/w.safetensors": "lfs",
        "raw.dat": "lfs",
        "logs/run.txt": "regular",
        "kept.txt": "regular",
    }
    assert modes["logs/run.txt"]["shouldIgnore"] and not modes["small.txt"]["shouldIgnore"]
    # The remote oid of an existing file lets clients skip unchanged files (git blob sha1 here).
    assert modes["kept.txt"]["oid"] == api.get_paths_info(repo_id, ["kept.txt"])[0].blob_id
    assert modes["small.txt"]["oid"] is None


def test_revision_by_sha_branches_and_tags(api, local_hub, tmp_path):
    repo_id = _repo_id(local_hub, "revs")
    api.create_repo(repo_id)
    v1 = api.upload_file(path_or_fileobj=b"version 1", path_in_repo="v.txt", repo_id=repo_id).oid
    api.create_tag(repo_id, tag="v1.0")
    v2 = api.upload_file(path_or_fileobj=b"version 2", path_in_repo="v.txt", repo_id=repo_id).oid
    assert v1 != v2

    def read(revision: str) -> bytes:
        return Path(hf_hub_download(repo_id, "v.txt", revision=revision, cache_dir=tmp_path)).read_bytes()

    assert read("main") == b"version 2"
    assert read(v1) == b"version 1"
    assert read("v1.0") == b"version 1"
    assert api.model_info(repo_id, revision=v1).sha == v1
    snap = Path(snapshot_download(repo_id, revision=v1, cache_dir=tmp_path / "snap"))
    assert (snap / "v.txt").read_bytes() == b"version 1"

    commits = api.list_repo_commits(repo_id)
    assert [c.commit_id for c in commits[:2]] == [v2, v1] and commits[-1].title == "initial commit"
    api.create_branch(repo_id, branch="dev", revision=v1)
    api.create_branch(repo_id, branch="dev", exist_ok=True)
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="v.txt", repo_id=repo_id, revision="dev")
    assert read("dev") == b"dev" and read("main") == b"version 2"
    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1.0"]
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="no-such-branch")


def test_commit_operations_deletes_conflicts_and_pr(api, local_hub):
    repo_id = _repo_id(local_hub, "ops")
    api.create_repo(repo_id, repo_type="dataset")
    base = api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[
            CommitOperationAdd("a/x.txt", b"x"),
            CommitOperationAdd("a/b/y.txt", b"y"),
            CommitOperationAdd("z.parquet", b"PAR1 not really parquet"),  # *.parquet -> LFS on a dataset
        ],
        commit_message="add",
    )
    tree = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)}
    assert {"a", "a/b", "a/x.txt", "a/b/y.txt", "z.parquet"} <= set(tree)
    assert tree["z.parquet"].lfs is not None and tree["a/x.txt"].lfs is None
    top = [f.path for f in api.list_repo_tree(repo_id, repo_type="dataset")]
    assert sorted(top) == [".gitattributes", "a", "z.parquet"]
    infos = api.get_paths_info(repo_id, ["a", "a/x.txt", "missing"], repo_type="dataset")
    assert [type(i).__name__ for i in infos] == ["RepoFolder", "RepoFile"]

    api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[CommitOperationDelete("a/b/"), CommitOperationDelete("z.parquet")],
        commit_message="delete",
        parent_commit=base.oid,
    )
    assert sorted(api.list_repo_files(repo_id, repo_type="dataset")) == [".gitattributes", "a/x.txt"]
    # A stale parent commit is refused (412), as on the Hub.
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            repo_id,
            repo_type="dataset",
            operations=[CommitOperationAdd("late.txt", b"late")],
            commit_message="late",
            parent_commit=base.oid,
        )
    assert err.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.delete_file("not-there.txt", repo_id, repo_type="dataset")

    pr = api.upload_file(
        path_or_fileobj=b"proposal",
        path_in_repo="pr.txt",
        repo_id=repo_id,
        repo_type="dataset",
        create_pr=True,
    )
    assert pr.pr_revision == "refs/pr/1"
    assert "pr.txt" in api.list_repo_files(repo_id, repo_type="dataset", revision="refs/pr/1")
    assert "pr.txt" not in api.list_repo_files(repo_id, repo_type="dataset")


def test_range_reads_through_hf_file_system(api, local_hub):
    repo_id = _repo_id(local_hub, "fs")
    api.create_repo(repo_id)
    payload = bytes(range(256)) * 40
    api.upload_file(path_or_fileobj=payload, path_in_repo="data/blob.bin", repo_id=repo_id)
    fs = HfFileSystem(endpoint=local_hub.endpoint, token=local_hub.token, block_size=1000)
    assert fs.ls(f"{repo_id}/data", detail=False) == [f"{repo_id}/data/blob.bin"]
    assert fs.info(f"{repo_id}/data/blob.bin")["size"] == len(payload)
    with fs.open(f"{repo_id}/data/blob.bin", "rb") as f:
        f.seek(3000)
        assert f.read(700) == payload[3000:3700]
    assert any("resolve" in p for p in local_hub.request_log()) and any(
        s == 206 for _, p, s in local_hub.requests if "data/blob.bin" in p
    )


def test_injected_failures_have_no_side_effect(api, local_hub):
    repo_id = _repo_id(local_hub, "faults")
    api.create_repo(repo_id)
    head = api.model_info(repo_id).sha
    local_hub.fail_requests(1, 500, method="POST", contains=f"/{repo_id}/commit/")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert err.value.response.status_code == 500 and "injected failure" in str(err.value)
    assert api.model_info(repo_id).sha == head  # nothing was committed
    # The fault is used up: the retry goes through.
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert "x.txt" in api.list_repo_files(repo_id)
    with pytest.raises(ValueError, match="4xx/5xx"):
        local_hub.fail_requests(1, 200)


def test_missing_repo_file_and_revision_errors(api, local_hub, tmp_path):
    missing = f"{local_hub.namespace}/does-not-exist-{uuid.uuid4().hex[:6]}"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(missing)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(missing, "config.json", cache_dir=tmp_path)
    repo_id = _repo_id(local_hub, "errors")
    api.create_repo(repo_id)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "nope.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="nope", cache_dir=tmp_path)
    assert not api.file_exists(repo_id, "nope.json")
    assert api.file_exists(repo_id, ".gitattributes")


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99
    )
    return BertModel(config).eval()


def test_transformers_push_to_hub_and_from_pretrained(local_hub, tmp_path):
    from transformers import AutoModel, BertModel

    repo_id = _repo_id(local_hub, "tiny-bert")
    model = _tiny_bert()
    model.push_to_hub(repo_id)
    files = HfApi().list_repo_files(repo_id)
    assert {"config.json", "model.safetensors"} <= set(files)

    loaded = BertModel.from_pretrained(repo_id, cache_dir=tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    auto = AutoModel.from_pretrained(repo_id, cache_dir=tmp_path)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).last_hidden_state, model(ids).last_hidden_state)

    # A fresh interpreter inherits HF_ENDPOINT/HF_TOKEN from the environment set by conftest.
    out = tmp_path / "child.pt"
    code = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({repo_id!r}, cache_dir={str(tmp_path / "child_cache")!r})
        torch.save(model.state_dict(), {str(out)!r})
        """
    )
    n_before = len(local_hub.requests)
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(), timeout=300)
    child = torch.load(out)
    assert all(torch.equal(child[k], v) for k, v in model.state_dict().items())
    assert any("model.safetensors" in p and m == "GET" for m, p, _ in local_hub.requests[n_before:])


_CUSTOM_MODULE = """
import torch
from transformers import PreTrainedConfig, PreTrainedModel


class HubProbeConfig(PreTrainedConfig):
    model_type = "hub-probe"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class HubProbeModel(PreTrainedModel):
    config_class = HubProbeConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x):
        return self.proj(x)
"""


def test_trust_remote_code_in_fresh_process(local_hub, tmp_path):
    """Custom code pushed with the weights loads with AutoModel(trust_remote_code=True) in a new process."""
    import importlib.util

    module_path = tmp_path / "hub_probe_modeling.py"
    module_path.write_text(_CUSTOM_MODULE)
    spec = importlib.util.spec_from_file_location("hub_probe_modeling", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hub_probe_modeling"] = module
    try:
        spec.loader.exec_module(module)
        module.HubProbeConfig.register_for_auto_class()
        module.HubProbeModel.register_for_auto_class("AutoModel")
        torch.manual_seed(0)
        model = module.HubProbeModel(module.HubProbeConfig(width=4))
        repo_id = _repo_id(local_hub, "remote-code")
        model.push_to_hub(repo_id)
    finally:
        sys.modules.pop("hub_probe_modeling", None)
    assert "hub_probe_modeling.py" in HfApi().list_repo_files(repo_id)

    out = tmp_path / "out.pt"
    code = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({repo_id!r}, trust_remote_code=True,
                                          cache_dir={str(tmp_path / "cache")!r})
        assert type(model).__name__ == "HubProbeModel", type(model)
        torch.save(model(torch.ones(2, 4)).detach(), {str(out)!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(), timeout=300)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(out), model(torch.ones(2, 4)))


def test_datasets_push_to_hub_and_load_dataset(local_hub):
    import datasets
    from PIL import Image

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "phrases": datasets.List(
                {"text": datasets.Value("string"), "tokens": datasets.List(datasets.Value("int32"))}
            ),
        }
    )

    def split(n: int, seed: int) -> datasets.Dataset:
        rng = np.random.default_rng(seed)
        return datasets.Dataset.from_dict(
            {
                "image": [Image.fromarray(rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)) for _ in range(n)],
                "image_id": list(range(seed, seed + n)),
                "phrases": [
                    [{"text": f"a dog {i}", "tokens": [1, i]}, {"text": "the grass", "tokens": [4, 5, 6]}]
                    for i in range(n)
                ],
            },
            features=features,
        )

    pushed = datasets.DatasetDict({"train": split(3, 0), "validation": split(2, 100)})
    repo_id = _repo_id(local_hub, "tiny-ds")
    pushed.push_to_hub(repo_id)
    files = HfApi().list_repo_files(repo_id, repo_type="dataset")
    assert "README.md" in files and any(f.endswith(".parquet") for f in files)

    # datasets may probe the parquet-conversion ref; the local Hub has none, like a fresh Hub repo.
    with pytest.raises(RevisionNotFoundError):
        HfApi().dataset_info(repo_id, revision="refs/convert/parquet")

    loaded = datasets.load_dataset(repo_id)
    assert set(loaded) == {"train", "validation"}
    for name in pushed:
        assert loaded[name].features == features
        assert len(loaded[name]) == len(pushed[name])
        for got, want in zip(loaded[name], pushed[name], strict=True):
            assert got["image_id"] == want["image_id"] and got["phrases"] == want["phrases"]
            assert np.array_equal(np.asarray(got["image"]), np.asarray(want["image"]))
