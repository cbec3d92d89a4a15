"""The repository's `model_card.md` (a paper-faithful BIS-10 % PRM's card, to fill) against the card PRMTrainer writes:
the same metadata fields, sections and training settings, with the values of recipes/internvl2_5_8b/bis10.yaml."""

import re

import yaml

from bis_prm.training.model_card import training_settings, write_model_card
from bis_prm.training.script import parse_recipe
from tests.utils import REPO_ROOT

RECIPE = REPO_ROOT / "recipes" / "internvl2_5_8b" / "bis10.yaml"


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def sections(card: str) -> list[str]:
    return re.findall(r"^## (.+)$", card, flags=re.MULTILINE)


def settings_table(card: str) -> dict[str, str]:
    table = card.split("## Training procedure\n")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ")]
    return {key.strip(): value.strip() for key, value in rows[1:]}  # without the header row


def test_the_repository_card_has_the_sections_and_fields_of_the_trainer_card(tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    # bf16 needs a GPU to be parsed; the recipe's own value is checked below
    _, args, _ = parse_recipe(["--config", str(RECIPE), "--bf16", "false", "--output_dir", str(tmp_path / "out")])
    settings = training_settings(args)
    facts = {
        "model_id": "<user>/InternVL2_5-8B-PRM-bis10",
        "base_model": "OpenGVLab/InternVL2_5-8B",
        "dataset_name": "<user>/VisualPRM400K-BIS10",
        "selection": {
            "params": {"corpus": "OpenGVLab/VisualPRM400K-v1.1-Raw", **recipe["selection"]},
            "total": {"read": 3, "valid": 2, "kept": 1},
        },
        "training": settings,
        "step_token": args.step_token,
    }
    written = write_model_card(tmp_path / "prm", facts).read_text()
    template = (REPO_ROOT / "model_card.md").read_text()

    assert front_matter(template) == front_matter(written)
    assert sections(template) == sections(written)
    table = settings_table(template)
    assert list(table) == list(settings) == list(settings_table(written))
    # the recipe's values; world size and bf16 are those of the 8-GPU run the recipe is for
    expected = {**settings, "world_size": 8, "bf16": recipe["bf16"]}
    assert table == {key: str(value) for key, value in expected.items()}
    assert expected["prompt_format"] == "bis_reference" and expected["max_tiles"] == 6
    assert expected["per_device_train_batch_size"] * expected["gradient_accumulation_steps"] * 8 == 512
    assert "Selection: method `bis`, ratio `0.1`, alpha\n  `0.2`, tau `0.0`, seed `0`" in template
