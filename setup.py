"""Packaging that pyproject.toml cannot declare: the repository's top-level `hub_configs/` (one folder per
model variant) ships inside the package as `narrative_grounding/hub_configs/`, so that a wheel install finds
every variant by name. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    # namespace packages too: modeling/ has no __init__.py (it is copied whole for trust_remote_code)
    packages=[
        *find_namespace_packages("src", include=["narrative_grounding*"], exclude=["*.__pycache__"]),
        "narrative_grounding.hub_configs",
    ],
    package_dir={"": "src", "narrative_grounding.hub_configs": "hub_configs"},
    package_data={
        "narrative_grounding": ["metrics/**/*.md"],
        "narrative_grounding.hub_configs": ["*/*"],
    },
)
