"""The front door: what `pip install` gets, and what a source release carries.

The wheel and the sdist are built offline (no build isolation, no index) from a copy of the files git
would commit, then installed with `pip --no-deps --no-index` into throwaway virtual environments that
see this interpreter's packages (torch and the rest), so nothing is downloaded. The console scripts run
from a working directory outside the repository, with `HF_HUB_OFFLINE=1`.

Building needs a git checkout (git decides which files are the repository's), so outside one, e.g. in an
unpacked sdist, the tests that build are skipped; the LICENSE test runs everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = "orthrus_min/assets/orthrus-stdlib-tiny"
SHIPPED_MODEL = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "heldout_prompts.jsonl", "README.md"]
NOTEBOOKS = ["01_qwen3_from_scratch", "02_one_cache_two_views", "03_consensus_decoding",
             "04_triton_block_attention", "05_training_the_diffusion_view", "06_the_engine"]
# sha256 of the Apache License 2.0 as the ASF publishes it (LICENSE-2.0.txt)
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def _git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def _in_git_checkout() -> bool:
    try:
        top = _git("rev-parse", "--show-toplevel")
    except FileNotFoundError:  # no git at all
        return False
    return top.returncode == 0 and Path(top.stdout.strip()).resolve() == ROOT


needs_git = pytest.mark.skipif(not _in_git_checkout(), reason="needs the git checkout (git lists the repository's files)")


def clean_env(**extra: str) -> dict:
    """The environment for a child process: no PYTHONPATH (the repository must not leak in), offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.update(extra)
    return env


def run(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_all([cmd], cwd, env, timeout)[0]


def run_all(cmds: list[list], cwd: Path, env: dict | None = None, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Run commands side by side (most of each is importing torch) and return them, finished, in order."""
    procs = [subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=clean_env() if env is None else env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in cmds]
    done = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def check(proc: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert proc.returncode == code, (f"{' '.join(proc.args)} exited {proc.returncode}, expected {code}\n"
                                     f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    return proc


def tracked_files() -> list[str]:
    return check(_git("ls-files", "-z")).stdout.split("\0")[:-1]


def venv_bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def make_venv(path: Path) -> Path:
    """A venv that sees this interpreter's packages (so installing with --no-deps downloads nothing).

    `--system-site-packages` covers a base interpreter; when pytest itself runs in a venv, its
    site-packages are added with a .pth file, after the new venv's own (which therefore win).
    """
    check(run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path], cwd=path.parent))
    if sys.prefix != sys.base_prefix:
        import site

        purelib = check(run([venv_bin(path, "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                            cwd=path.parent)).stdout.strip()
        lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
        Path(purelib, "_outer_env.pth").write_text("\n".join(lines) + "\n")
    return path


def pip_install(venv: Path, *args) -> None:
    check(run([venv_bin(venv, "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", *args],
              cwd=venv.parent))


# --------------------------------------------------------------------------- fixtures (built once per module)

@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """A copy of the files a clean clone would hold after committing (tracked plus untracked-not-ignored),
    as a fresh git repository with one commit: builds write there, never into the repository itself."""
    src = tmp_path_factory.mktemp("source") / "orthrus_min_src"
    listed = check(_git("ls-files", "-z", "--cached", "--others", "--exclude-standard")).stdout.split("\0")[:-1]
    for rel in listed:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    git = ["-c", "user.name=packaging-test", "-c", "user.email=packaging-test@localhost", "-c", "commit.gpgsign=false"]
    check(_git("init", "-q", ".", cwd=src))
    check(_git("add", "-A", cwd=src))
    check(_git(*git, "commit", "-q", "--no-verify", "-m", "snapshot", cwd=src))
    return src


@pytest.fixture(scope="module")
def dists(source_tree, tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel), built by `python -m build --no-isolation` from the source copy."""
    out = tmp_path_factory.mktemp("dist")
    check(run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", out, "."],
              cwd=source_tree))
    (sdist,), (wheel,) = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    return sdist, wheel


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A working directory outside the repository, for everything that runs an installed copy."""
    cwd = tmp_path_factory.mktemp("cwd")
    assert not cwd.resolve().is_relative_to(ROOT)
    return cwd


@pytest.fixture(scope="module")
def wheel_venv(dists, tmp_path_factory) -> Path:
    venv = make_venv(tmp_path_factory.mktemp("wheel-env") / "venv")
    pip_install(venv, dists[1])
    return venv


def sdist_members(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    top = {n.split("/", 1)[0] for n in names}
    assert len(top) == 1, f"an sdist unpacks into one folder, not {top}"
    return {n.split("/", 1)[1] for n in names}


def wheel_members(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


# Where `import orthrus_min` (and so a console script) takes the package from; finding it imports nothing (no torch).
FIND_ORTHRUS = "import importlib.util; print(importlib.util.find_spec('orthrus_min').origin)"


def installed_copy_runs(venv: Path, cwd: Path, *more: list) -> list[subprocess.CompletedProcess]:
    """Check that the venv's python imports orthrus_min from the venv, and that orthrus-generate decodes with
    the shipped model; `more` commands run beside them, and their results are returned."""
    where, gen, *rest = run_all([[venv_bin(venv, "python"), "-c", FIND_ORTHRUS],
                                 [venv_bin(venv, "orthrus-generate"), "--prompt", "class Stack:", "--max-new-tokens", "8"],
                                 *more], cwd)
    module = Path(check(where).stdout.strip()).resolve()
    assert module.is_relative_to(venv.resolve()) and "site-packages" in module.parts, f"imported {module}, not the venv's copy"
    assert check(gen).stdout.strip(), f"orthrus-generate printed no text; stderr:\n{gen.stderr}"
    return rest


# --------------------------------------------------------------------------- the license

def test_license_is_the_verbatim_apache_2():
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256, "LICENSE is not the verbatim Apache License 2.0"


@needs_git
def test_wheel_declares_apache_2_and_carries_the_license(dists):
    wheel = dists[1]
    with zipfile.ZipFile(wheel) as zf:
        info = next(n.split("/")[0] for n in zf.namelist() if n.split("/")[0].endswith(".dist-info"))
        metadata = zf.read(f"{info}/METADATA").decode()
        license_text = zf.read(f"{info}/licenses/LICENSE")
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert license_text == (ROOT / "LICENSE").read_bytes()


# --------------------------------------------------------------------------- what the archives hold

@needs_git
def test_sdist_carries_what_pytest_needs(dists):
    members = sdist_members(dists[0])
    required = {"LICENSE", "README.md", "pyproject.toml", "tests/conftest.py", "tests/orthrus_helpers.py",
                "tests/data/qwen3_chat_template.jinja", "docs/ARCHITECTURE.md"}
    required |= {f"notebooks/{name}.ipynb" for name in NOTEBOOKS}
    required |= {f"{ASSETS}/{name}" for name in SHIPPED_MODEL}
    # and every tracked file of the package, the tests, the notebooks and the docs
    required |= {f for f in tracked_files() if f.split("/")[0] in ("orthrus_min", "tests", "notebooks", "docs")}
    missing = sorted(required - members)
    assert not missing, f"the sdist lacks {missing}"
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]


@needs_git
def test_wheel_carries_the_package_and_the_shipped_model_but_no_tests(dists):
    members = wheel_members(dists[1])
    package = {f for f in tracked_files() if f.startswith("orthrus_min/")}
    assert {f"{ASSETS}/{name}" for name in SHIPPED_MODEL} <= package
    missing = sorted(package - members)
    assert not missing, f"the wheel lacks {missing}"
    stray = sorted(m for m in members if not (m.startswith("orthrus_min/") or m.split("/")[0].endswith(".dist-info")))
    assert not stray, f"the wheel holds files outside the package: {stray}"  # tests/, notebooks/, docs/ among them


# --------------------------------------------------------------------------- installed copies

@needs_git
def test_console_scripts_from_the_wheel(wheel_venv, outside):
    bench, train = installed_copy_runs(wheel_venv, outside, [venv_bin(wheel_venv, "orthrus-bench"), "--help"],
                                       [venv_bin(wheel_venv, "orthrus-train"), "--help"])
    assert "random-model" in check(bench).stdout  # the bench command line's own help, not some other program's
    assert "distill" in check(train).stdout


@needs_git
def test_console_script_exit_code_is_mains_return_value(wheel_venv, outside):
    # main() *returns* 2 for bad input (an OrthrusError, not an argparse exit): the wrapper must pass it on.
    bad = check(run([venv_bin(wheel_venv, "orthrus-generate"), "--prompt", "x", "--block-size", "0",
                     "--max-new-tokens", "2"], cwd=outside), code=2)
    assert bad.stderr.strip().splitlines()[-1].startswith("error: "), bad.stderr
    assert "usage:" not in bad.stderr


@needs_git
def test_sdist_installs_and_generates(dists, tmp_path_factory, outside):
    venv = make_venv(tmp_path_factory.mktemp("sdist-env") / "venv")
    pip_install(venv, "--no-build-isolation", dists[0])
    installed_copy_runs(venv, outside)


@needs_git
def test_unpacked_sdist_collects_the_test_suite(source_tree, dists, tmp_path_factory):
    dest = tmp_path_factory.mktemp("sdist-unpacked")
    with tarfile.open(dists[0]) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (and 3.10.12)
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    (unpacked,) = dest.iterdir()
    code = ("import sys, pytest, orthrus_min; print('IMPORTED', orthrus_min.__file__, flush=True); "
            "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider']))")
    proc = check(run([sys.executable, "-c", code], cwd=unpacked, env=clean_env(PYTHONPATH=str(unpacked))))
    imported = Path(proc.stdout.split("IMPORTED ", 1)[1].split("\n", 1)[0].strip()).resolve()
    assert imported.is_relative_to(unpacked.resolve()), f"collected against {imported}, not the unpacked package"
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[1-9]\d* tests? collected in .*", summary), summary  # no "errors" in it
    test_files = {p.relative_to(unpacked).as_posix() for p in (unpacked / "tests").glob("test_*.py")}
    assert test_files == {p.relative_to(source_tree).as_posix() for p in (source_tree / "tests").glob("test_*.py")}
    collected = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert collected == test_files, f"no tests collected from {sorted(test_files - collected)}"


# --------------------------------------------------------------------------- the working tree stays clean

@needs_git
def test_build_and_editable_install_leave_git_status_clean(source_tree, dists, tmp_path_factory, outside):
    venv = make_venv(tmp_path_factory.mktemp("editable-env") / "venv")
    pip_install(venv, "--no-build-isolation", "-e", source_tree)
    where = check(run([venv_bin(venv, "python"), "-c", FIND_ORTHRUS], cwd=outside))
    assert Path(where.stdout.strip()).resolve().is_relative_to(source_tree.resolve())
    assert (source_tree / "orthrus_min.egg-info").is_dir() and (source_tree / "build").is_dir()  # the build wrote them
    status = check(_git("status", "--porcelain", "--untracked-files=all", cwd=source_tree)).stdout
    assert status == "", f"a build or an editable install leaves files git does not ignore:\n{status}"


@needs_git
def test_egg_info_is_ignored_and_untracked():
    for path in ("orthrus_min.egg-info/", "build/", "dist/"):
        assert _git("check-ignore", "-q", path).returncode == 0, f".gitignore does not cover {path}"
    under_egg_info = [f for f in tracked_files() if any(part.endswith(".egg-info") for part in f.split("/")[:-1])]
    assert not under_egg_info, f"tracked files under an egg-info folder: {under_egg_info}"


# --------------------------------------------------------------------------- the repository stands alone

# Spelled in pieces so that this file does not contain what it looks for.
OUTSIDE_NAMES = ["../" + "shared", "DESIGN" + " §", "DESIGN" + ".md", "/" + "work" + "/"]
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_texts(path: str, text: str) -> list[str]:
    if path.endswith(".md"):
        return [text]
    if path.endswith(".ipynb"):
        cells = json.loads(text)["cells"]
        return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    return []


@needs_git
def test_no_tracked_file_names_a_file_outside_the_repository():
    offenders, broken = [], []
    for path in tracked_files():
        data = (ROOT / path).read_bytes() if (ROOT / path).is_file() else b""
        if b"\0" in data:
            continue  # binary (the weights)
        text = data.decode("utf-8", errors="replace")
        offenders += [f"{path}: {name!r}" for name in OUTSIDE_NAMES if name in text]
        for md in markdown_texts(path, text):
            for target in MD_LINK.findall(md):
                if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL or an anchor in the same page
                resolved = ((ROOT / path).parent / target.split("#")[0]).resolve()
                if not (resolved.is_relative_to(ROOT) and resolved.exists()):
                    broken.append(f"{path}: ({target})")
    assert not offenders, f"files that name something outside the repository: {offenders}"
    assert not broken, f"Markdown links to nothing inside the repository: {broken}"
