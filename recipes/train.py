"""Train a process reward model (PRM) with a recipe.

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml \
        recipes/train.py --config recipes/qwen2_5_vl_7b/bis10.yaml

Every key of the YAML file can be overridden on the command line (`--learning_rate 2e-5`). The run itself is
`bis_prm.training.script.main`, which `bis-prm train --config RECIPE.yaml` and the quickstart run too.
"""

from bis_prm.training.script import main, parse_recipe

if __name__ == "__main__":
    main(*parse_recipe())
