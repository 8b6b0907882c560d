"""Shared test setup: real data from ../shared/data (or $JAXMI_DATA_DIR), one prepared-data cache and one set of
tiny trained models per test session.

Two tiers: `python -m pytest -q -n 2 --dist loadfile tests` runs both (CI); `-m "not slow"` runs the fast tier only
(pure functions, one-step smoke tests on synthetic splits, the session's tiny models); the `slow` tier trains real
models on real data end to end. No test depends on another one having run first: whatever several tests share is a
session fixture here, built on first use (under `-n 2`, once per worker process).
"""

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


@pytest.fixture(scope="session", autouse=True)
def cache_root(tmp_path_factory) -> Path:
  """One prepared-dataset cache per test session, so no test depends on ~/.cache state.

  Autouse: $JAXMI_CACHE_DIR is set before the first test, not when some test first asks for this fixture (before,
  a test that prepared data without asking used another cache depending on what ran before it).
  """
  path = Path(os.environ.get("JAXMI_TEST_CACHE_DIR") or tmp_path_factory.mktemp("jaxmi_cache"))
  if os.environ.get("JAXMI_TEST_CACHE_DIR") and os.environ.get("PYTEST_XDIST_WORKER"):
    path = path / os.environ["PYTEST_XDIST_WORKER"]  # `-n 2`: two processes never prepare into one folder at once
  os.environ["JAXMI_CACHE_DIR"] = str(path)
  return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache per test session, in a fresh directory.

  Tests build fresh jitted functions for the same tiny shapes again and again (each training, attack and fixture),
  which jit's in-memory cache does not share across function objects; this cache compiles each program once per
  session (make_tiny_workdirs: 36 s of CPU the first time, 4.5 s the second). A fresh directory, so nothing stale is
  read; this process only, not the CLI subprocesses (a test that kills one could leave a half-written entry).
  jax decides at its first compilation whether the cache is on, hence reset_cache() on the way in and out.
  """
  from jax.experimental.compilation_cache import compilation_cache as cc

  settings = {
    "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
    "jax_persistent_cache_min_compile_time_secs": 0.1,
    "jax_persistent_cache_min_entry_size_bytes": 0,
  }
  before = {k: getattr(jax.config, k) for k in settings}
  cc.reset_cache()
  for k, v in settings.items():
    jax.config.update(k, v)
  yield
  for k, v in before.items():
    jax.config.update(k, v)
  cc.reset_cache()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """(root, splits): target, eval, surrogate and GAN workdirs under root, trained a few steps on sklearn's digits.

  Built once per session (~35 s of CPU, mostly compiling) and shared by every module that attacks them; tests read
  them and write only into their own tmp_path. Not good models: the tests check what the code computes from them,
  not how well.
  """
  from test_attacks import make_tiny_workdirs

  root = tmp_path_factory.mktemp("tiny_models")
  return root, make_tiny_workdirs(root)
