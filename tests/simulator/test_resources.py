"""Shipped files found from any directory: profiles by lookup order (--profiles, $INFERPLAN_PROFILES,
./hardware_profiles, built-in) with their origin, and examples by name."""

import os
from pathlib import Path

import pytest
import yaml

from core.hardware import PROFILE_DIR, load_profile, profile_origins
from core.resources import shipped as core_shipped
from simulator.cli import main
from simulator.resources import example_names, find_example, shipped

ROOT = Path(__file__).resolve().parents[2]


def _lab_profile(folder: Path, name: str, price: float) -> None:
    """A copy of the L4's profile under another name and price, so that which file was read shows."""
    folder.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((PROFILE_DIR / "l4.yaml").read_text())
    data["name"] = name
    data["price"]["usd_per_hour"] = price
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def test_shipped_folders_are_the_checkouts_own():
    assert core_shipped("hardware_profiles") == ROOT / "hardware_profiles"
    assert core_shipped("catalogue") == ROOT / "core" / "catalogue"
    assert shipped("examples") == ROOT / "examples"
    assert shipped("traces") == ROOT / "simulator" / "traces"


def test_profiles_flag_comes_first_and_gpus_says_where_each_is_from(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INFERPLAN_PROFILES", raising=False)
    _lab_profile(tmp_path / "mine", "l4", 9.99)  # shadows the built-in l4
    _lab_profile(tmp_path / "mine", "lab-gpu", 1.23)
    _lab_profile(tmp_path / "env", "env-gpu", 2.34)
    _lab_profile(tmp_path / "hardware_profiles", "cwd-gpu", 3.45)
    monkeypatch.setenv("INFERPLAN_PROFILES", str(tmp_path / "env"))
    assert main(["--profiles", str(tmp_path / "mine"), "gpus"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert rows["l4"].endswith(str(tmp_path / "mine")) and "9.99" in rows["l4"]
    assert rows["lab-gpu"].endswith(str(tmp_path / "mine"))
    assert rows["env-gpu"].endswith(str(tmp_path / "env"))
    assert rows["cwd-gpu"].endswith("./hardware_profiles")
    assert rows["h100-sxm"].endswith("built-in")
    # the flag lasts one command: afterwards only the environment's folder is searched
    assert os.environ["INFERPLAN_PROFILES"] == str(tmp_path / "env")
    assert profile_origins()["l4"] == "built-in" and "lab-gpu" not in profile_origins()


def test_profiles_flag_after_the_verb_runs_a_users_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INFERPLAN_PROFILES", raising=False)
    _lab_profile(tmp_path / "mine", "lab-gpu", 1.23)
    args = ["run", "--profiles", "mine", "--set", "hardware.gpu=lab-gpu", "--requests", "20", "--out", "o"]
    assert main(args) == 0, capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "o" / "scenario.yaml").read_text())["hardware"]["gpu"] == "lab-gpu"
    with pytest.raises(Exception, match="has no profile"):
        load_profile("lab-gpu")  # not found once the command is over


def test_profiles_flag_refuses_a_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--profiles", str(tmp_path / "nope"), "gpus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "--profiles: " in err and "is not a folder; give a folder of GPU profile .yaml files" in err


def test_examples_run_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("poisson_chat_l4", "poisson_chat_l4.yaml", "examples/poisson_chat_l4.yaml"):
        assert find_example(name) == str(ROOT / "examples" / "poisson_chat_l4.yaml")
    assert find_example("elsewhere/poisson_chat_l4.yaml") == "elsewhere/poisson_chat_l4.yaml"
    (tmp_path / "poisson_chat_l4.yaml").write_text("model: llama-3.1-8b\n")
    assert find_example("poisson_chat_l4.yaml") == "poisson_chat_l4.yaml"  # a user's own file wins
    assert main(["run", "poisson_chat_l4", "--requests", "30", "--out", "o"]) == 0
    summary = (tmp_path / "o" / "summary.json").read_text()
    assert "qwen2.5-7b" in summary.lower()


def test_examples_verb_lists_every_example(capsys):
    assert main(["examples"]) == 0
    out = capsys.readouterr().out
    names = example_names()
    assert names == sorted(p.stem for p in (ROOT / "examples").glob("*.yaml")) and len(names) > 10
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()[1:]}
    assert set(rows) == set(names)
    assert rows["search_chat"] == "search" and rows["poisson_chat_l4"] == "scenario"


@pytest.mark.parametrize("argv", [["run", "no_such_example"], ["search", "nope.yaml"]])
def test_an_unknown_name_is_one_line_listing_the_examples(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{argv[1]!r}: no such file nor shipped example; give a YAML path or an example's name (" in err
    assert "poisson_chat_l4" in err and "search_chat" in err
