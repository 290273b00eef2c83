"""The docs site (issue 26, point 4): `mkdocs build --strict` passes with every internal link and anchor checked
(mkdocs.yml's validation), the API reference comes from the docstrings, and the README's links lead somewhere."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

from conftest import REPO_ROOT

MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def _build(config: pathlib.Path, site: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MKDOCS, "-f", str(config), "--site-dir", str(site)], cwd=REPO_ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    done = _build(REPO_ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_model" in api and "the vocabulary's own" in api  # docstrings, rendered


def test_a_broken_internal_link_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(REPO_ROOT / "docs", docs)
    (docs / "quickstart.md").write_text((docs / "quickstart.md").read_text() + "\n[gone](no-such-page.md)\n")
    config = (REPO_ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (tmp_path / "mkdocs.yml").write_text(config)
    done = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stderr


def test_every_relative_link_in_the_readme_exists():
    readme = (REPO_ROOT / "README.md").read_text()
    links = [m for m in re.findall(r"\]\(([^)#\s]+)", readme) if "://" not in m]
    assert links, "the README links to the docs"
    missing = [link for link in links if not (REPO_ROOT / link).exists()]
    assert not missing, missing
