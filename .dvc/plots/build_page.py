"""Rebuild ``page.html``, the offline page template of ``dvc plots show`` (``.dvc/config``).

DVC's default page loads Vega from a CDN, so offline it is blank. This page carries the three
minified builds inline instead, taken from the npm registry's tarballs (``npm pack``; each
tarball's integrity is checked against the registry's ``dist.integrity``). Usage, from the
project root (needs ``npm`` and the network, only when upgrading)::

    python .dvc/plots/build_page.py
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {  # npm package -> (version, minified build inside the tarball)
    "vega": ("5.33.1", "package/build/vega.min.js"),
    "vega-lite": ("5.23.0", "package/build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "package/build/vega-embed.min.js"),
}
LICENCE = "BSD-3-Clause, Copyright (c) 2015, University of Washington Interactive Data Lab"
HERE = Path(__file__).resolve().parent

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>Risk models: test-split curves (dvc plots)</title>
    <!-- Vega, Vega-Lite and Vega-Embed inline (no network needed): see VENDORED.md -->
{scripts}
    <style>
        body {{ font-family: sans-serif; margin: 1em 2em; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    <h1>Risk models: test-split curves</h1>
    <p>Grey dashed line: chance (ROC) or perfect calibration. Written by <code>dvc plots show</code>
    from <code>metrics/&lt;target&gt;/plots/*.csv</code>.</p>
    {{plot_divs}}
</body>
</html>
"""


def fetch(name: str, version: str, folder: Path) -> Path:
    """``npm pack name@version`` into ``folder``, checked against the registry's integrity."""
    spec = f"{name}@{version}"
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    packed = json.loads(out.stdout)[0]
    tarball = folder / packed["filename"]
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if packed["integrity"] != f"sha512-{digest}":
        sys.exit(f"{spec}: tarball does not match the registry's integrity")
    return tarball


def script_tag(name: str, version: str, member: str, tarball: Path) -> str:
    """The minified build as an inline ``<script>``, headed by its provenance and licence."""
    with tarfile.open(tarball) as archive:
        extracted = archive.extractfile(member)
        if extracted is None:
            sys.exit(f"{tarball}: no {member}")
        code = extracted.read().decode("utf-8")
    if "</script" in code or "{plot_divs}" in code:
        sys.exit(f"{name}: cannot be inlined (contains a closing script tag or a placeholder)")
    header = f"/* {name}@{version} ({member}), npm registry; {LICENCE} */"
    return f"    <script>{header}\n{code}\n    </script>"


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        tags = [
            script_tag(name, version, member, fetch(name, version, Path(scratch)))
            for name, (version, member) in PACKAGES.items()
        ]
    (HERE / "page.html").write_text(PAGE.format(scripts="\n".join(tags)), encoding="utf-8")


if __name__ == "__main__":
    main()
