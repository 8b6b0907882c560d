"""Shared test setup: real data from ../shared/data (or $JAXMI_DATA_DIR), a per-session cache."""

import os
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests use the real datasets kept beside the repo; CI exports the same directory.
os.environ.setdefault("JAXMI_DATA_DIR", str(REPO.parent / "shared" / "data"))
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def data_root() -> Path:
  root = Path(os.environ["JAXMI_DATA_DIR"])
  if not (root / "mnist").is_dir():
    pytest.fail(f"real test data not found in {root}; set JAXMI_DATA_DIR to a directory with mnist/ and att_faces/")
  return root


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
  """One prepared-dataset cache per test session, so no test depends on ~/.cache state."""
  path = Path(os.environ.get("JAXMI_TEST_CACHE_DIR") or tmp_path_factory.mktemp("jaxmi_cache"))
  os.environ["JAXMI_CACHE_DIR"] = str(path)
  return path
