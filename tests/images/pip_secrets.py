"""Write this machine's pip settings as two build secrets: ``python3 pip_secrets.py DIR``.

DIR/pip.conf gets the index, extra index, trusted hosts, proxy, timeouts and retries from
``pip config list`` (which includes PIP_* variables), remote URLs only: a file:// index or find-links
path of this machine does not exist in the container. DIR/pip-cert gets the configured CA bundle, or
stays empty (the image's own CA certificates). Used by lib.sh's tq_pip_secrets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


def pip_settings() -> dict[str, str]:
    """``pip config list`` as a dict; lines look like ``global.index-url='https://…'``, later lines win."""
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        listing = ""
    settings = {}
    for line in listing.splitlines():
        if m := re.match(r"^[^.]*\.([a-z0-9-]+)='(.*)'$", line.strip()):
            settings[m.group(1)] = m.group(2)
    if "timeout" not in settings and "default-timeout" in settings:
        settings["timeout"] = settings["default-timeout"]
    return settings


def remote(value: str) -> str:
    return " ".join(u for u in value.split() if re.match(r"^https?://", u))


def main(out: Path) -> None:
    settings = pip_settings()
    conf = {key: remote(settings[key]) for key in ("index-url", "extra-index-url") if remote(settings.get(key, ""))}
    conf |= {key: settings[key] for key in ("trusted-host", "proxy", "timeout", "retries") if settings.get(key)}
    (out / "pip.conf").write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        shutil.copyfile(cert, out / "pip-cert")
    else:
        (out / "pip-cert").write_text("")  # empty: the image's own CA certificates
    shown = {k: ("(set)" if k == "proxy" else v) for k, v in conf.items()}
    print(
        f"pip settings for the build: {shown or 'PyPI defaults'}; CA bundle: {cert or 'image default'}", file=sys.stderr
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
