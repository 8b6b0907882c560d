"""Downloads that never leave a half-written or unverified file behind."""

import contextlib
import http.client
import logging
import os
from pathlib import Path
import shutil
import tempfile
from typing import Callable, Sequence
import urllib.error
import urllib.request

from jaxmi.errors import DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0
# Set (to anything but "" or "1") by the command line's --no-progress: TFDS's preparation bars stay off.
PROGRESS_ENV = "JAXMI_PROGRESS"

# Returns None when the downloaded file is good, else why it is not.
Check = Callable[[Path], str | None]


def one_line(text: object) -> str:
  """Collapses a message to one line, as every JaxmiError message must be."""
  return " ".join(str(text).split())


def is_writable_dir(path: Path) -> bool:
  """Whether files can be created in `path` or, if missing, where it would be.

  Tries a real file, because os.access says yes to root even on read-only
  mounts. Creates nothing that stays.
  """
  while not path.exists():
    if path.parent == path:
      return False
    path = path.parent
  try:
    with tempfile.TemporaryFile(dir=path):
      pass
    return True
  except OSError:
    return False


def fetch(urls: Sequence[str], dest: Path, check: Check, *, timeout: float = TIMEOUT_S) -> None:
  """Downloads the first of `urls` that passes `check` to `dest`.

  Each try goes to a temp file beside `dest` that is renamed only once it
  passed `check`, so an interrupted or rejected download leaves nothing that
  looks finished. `file://` URLs work too. Raises DataError naming every
  URL's failure.
  """
  created_folder = not dest.parent.exists()
  dest.parent.mkdir(parents=True, exist_ok=True)
  failures = []
  for url in urls:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
      with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        shutil.copyfileobj(response, out, 1 << 20)
      problem = check(tmp)
      if problem is None:
        os.replace(tmp, dest)
        return
      failures.append(f"{url}: {problem} (download removed)")
    except (OSError, ValueError, http.client.HTTPException) as e:
      # URLError and timeouts are OSErrors; ValueError is a malformed URL.
      reason = getattr(e, "reason", None) or e
      failures.append(f"{url}: {one_line(reason)}")
    finally:
      tmp.unlink(missing_ok=True)
  if created_folder:
    with contextlib.suppress(OSError):  # Only if empty: never loses files.
      dest.parent.rmdir()
  tried = "; ".join(failures) if failures else "no URLs to try"
  raise DataError(f"could not download {dest.name} into {dest.parent}: {tried}")


def note(text: str) -> None:
  """One warning line (stderr under the CLI) for something the user should know but that is not an error."""
  log.warning(f"jaxmi: note: {one_line(text)}")
