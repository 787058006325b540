"""What a result records of the code that produced it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.environment import code_version, git_commit


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_changed_leaderboard_does_not_make_the_code_dirty(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "model.py").write_text("x = 1\n")
    (repo / "results" / "board.md").write_text("| a |\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = _git(repo, "rev-parse", "HEAD")

    (repo / "results" / "board.md").write_text("| b |\n")  # what every run rewrites
    (repo / "notes.txt").write_text("untracked\n")
    assert git_commit.__wrapped__(repo) == head

    (repo / "model.py").write_text("x = 2\n")
    assert git_commit.__wrapped__(repo) == f"{head}-dirty"


def test_a_commit_of_results_alone_leaves_the_code_version(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results" / "runs").mkdir(parents=True)
    (repo / "model.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    commit = ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm")
    _git(repo, *commit, "code")
    code = _git(repo, "rev-parse", "HEAD")

    (repo / "results" / "runs" / "seed-0.json").write_text("{}\n")
    _git(repo, "add", ".")
    _git(repo, *commit, "results only")
    assert _git(repo, "rev-parse", "HEAD") != code
    assert code_version.__wrapped__(repo) == code  # HEAD moved; the code did not
    assert git_commit.__wrapped__(repo) == _git(repo, "rev-parse", "HEAD")
    for path in ("docs/guide.md", "tests/test_model.py", "README.md", ".ci/run"):
        (repo / path).parent.mkdir(exist_ok=True)
        (repo / path).write_text("edited\n")
        assert code_version.__wrapped__(repo) == code, path  # not dirty either
        _git(repo, "add", ".")
        _git(repo, *commit, f"edit {path}")
        assert code_version.__wrapped__(repo) == code, path

    (repo / "model.py").write_text("x = 2\n")
    assert code_version.__wrapped__(repo) == f"{code}-dirty"
    _git(repo, "add", ".")
    _git(repo, *commit, "more code")
    assert code_version.__wrapped__(repo) == _git(repo, "rev-parse", "HEAD")


def test_a_cpu_is_named_by_its_model_and_the_instruction_set_torch_uses():
    import torch

    from bench.environment import cpu_model, device_name

    model = cpu_model()
    assert model and device_name("cpu").startswith(model)
    assert device_name("cpu").endswith(f"({torch.backends.cpu.get_cpu_capability()})")


def test_the_cpu_model_comes_from_proc_cpuinfo(monkeypatch, tmp_path):
    import builtins

    from bench import environment

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n")
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert environment.cpu_model() == "AMD EPYC 9B14"
