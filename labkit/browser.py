"""Where this machine's Chromium or Chrome is: the one home of the lookup `labkit.e2e` drives and scripts/bootstrap.sh
asks about before the virtual environment exists (standard library only, so it runs under any Python 3):

    python3 -c 'import runpy; runpy.run_path("labkit/browser.py", run_name="__main__")'   exit 0 and the path, or 1
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, what `make install` installs as root
# Elsewhere (Ubuntu has no `chromium` package, macOS none at all) the browser a user already has, by its usual names.
BROWSER_NAMES = ("chromium", "google-chrome-stable", "google-chrome", "chromium-browser")
MACOS_BROWSERS = tuple(Path(f"/Applications/{app}.app/Contents/MacOS/{app}") for app in ("Google Chrome", "Chromium"))
BROWSER_ENV = "LABKIT_CHROMIUM"


def chromium_path() -> Path | None:
    """The browser to drive: $LABKIT_CHROMIUM if set, else /usr/bin/chromium, else the first BROWSER_NAMES on PATH,
    else macOS's Google Chrome or Chromium app."""
    if chosen := os.environ.get(BROWSER_ENV):
        return Path(chosen)
    if CHROMIUM.is_file():
        return CHROMIUM
    found = (shutil.which(name) for name in BROWSER_NAMES)
    return next((Path(path) for path in found if path), None) or next((p for p in MACOS_BROWSERS if p.is_file()), None)


if __name__ == "__main__":
    browser = chromium_path()
    print(browser or "no Chromium or Chrome found")
    sys.exit(0 if browser else 1)
