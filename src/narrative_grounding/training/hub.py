"""Pushing a saved model folder to the Hub without ever stopping training.

Only the files of the saved model (weights, config, processor, model card, remote-code modules) are
uploaded: the accelerate state folders and tracker logs are left out by pattern, whatever the layout of
the output directory.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

#: Never uploaded: accelerate checkpoints (optimizer/RNG state), tracker logs, evaluation leftovers.
IGNORE_PATTERNS = [
    "checkpoints/**",
    "checkpoint*/**",
    "step_*/**",
    "epoch_*/**",
    "logs/**",
    "runs/**",
    "*.tmp",
]


class HubPusher:
    """Creates the repo once and uploads a folder on demand, retrying; failures are logged, never raised.

    Args:
        repo_id: "namespace/name" of the model repository.
        token: a Hub token (default: the logged-in one / HF_TOKEN).
        private: create the repository private.
        retries: attempts per push (>= 1).
        retry_wait: seconds before the first retry, doubled at each further retry.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = False,
        retries: int = 3,
        retry_wait: float = 2.0,
        api: HfApi | None = None,
    ) -> None:
        if repo_id.count("/") > 1 or not repo_id.strip("/"):
            raise ValueError(f"--hub_model_id must look like 'namespace/name' or 'name', got {repo_id!r}")
        self.repo_id = repo_id
        self.private = private
        if int(retries) < 1:
            raise ValueError(f"hub push retries must be at least 1, got {retries}")
        if not math.isfinite(float(retry_wait)) or float(retry_wait) < 0:
            # checked here, not at the first failure: time.sleep(-1) would raise out of a pusher that must not
            raise ValueError(f"hub retry wait must be 0 or a positive number of seconds, got {retry_wait}")
        self.retries = int(retries)
        self.retry_wait = float(retry_wait)
        self.api = api or HfApi(token=token)
        self.repo_created = False
        self.failures: list[str] = []  # one line per push that failed after every retry
        self.pushed_commits: list[str] = []

    def _with_retries(self, what: str, action) -> object | None:
        wait = self.retry_wait
        for attempt in range(1, self.retries + 1):
            try:
                return action()
            except Exception as error:  # network, auth, server errors: training must go on
                logger.warning(
                    "%s to %s failed (attempt %d/%d): %s", what, self.repo_id, attempt, self.retries, error
                )
                if attempt < self.retries:
                    time.sleep(wait)
                    wait *= 2
        self.failures.append(what)
        logger.warning(
            "giving up on %s to %s after %d attempts; training continues and the local copy is kept",
            what,
            self.repo_id,
            self.retries,
        )
        return None

    def push(self, folder: str | Path, commit_message: str) -> str | None:
        """Uploads `folder` (minus IGNORE_PATTERNS) as one commit; returns the commit id, or None on failure."""
        if not self.repo_created:
            created = self._with_retries(
                "create_repo",
                lambda: self.api.create_repo(self.repo_id, private=self.private, exist_ok=True),
            )
            if created is None:
                return None
            self.repo_id = created.repo_id  # "name" alone resolves to the user's namespace
            self.repo_created = True
        info = self._with_retries(
            f"push ({commit_message})",
            lambda: self.api.upload_folder(
                repo_id=self.repo_id,
                folder_path=str(folder),
                commit_message=commit_message,
                ignore_patterns=IGNORE_PATTERNS,
            ),
        )
        if info is None:
            return None
        commit = getattr(info, "oid", None) or str(info)
        self.pushed_commits.append(commit)
        logger.info("pushed %s to %s (%s)", folder, self.repo_id, commit_message)
        return commit
