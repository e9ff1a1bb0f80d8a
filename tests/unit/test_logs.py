"""One log: the library is quiet when imported, the CLI shows it, the application silences it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.core, pytest.mark.slow]  # subprocesses


def _stderr(code: str) -> str:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r.stderr


REPORT = """
    from quadmix_stream.progress import Progress
    p = Progress("job", 2, every_s=0)
    p.update(2)
    p.close()
"""


def test_quiet_when_imported():
    assert _stderr("import quadmix_stream\n" + textwrap.dedent(REPORT)) == ""


def test_shown_by_the_cli_setup_and_silenced_by_the_application():
    shown = _stderr("from quadmix_stream.logs import show\nshow()\n" + textwrap.dedent(REPORT))
    assert shown.startswith("[job] step 2/2 (100%)") and len(shown.splitlines()) == 1
    silenced = _stderr(
        "import logging\nfrom quadmix_stream.logs import show\nshow()\n"
        'logging.getLogger("quadmix_stream").setLevel(logging.WARNING)\n' + textwrap.dedent(REPORT)
    )
    assert silenced == ""
