"""Train a multimodal process reward model (PRM) with a recipe.

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml \
        recipes/train.py --config recipes/qwen2_5_vl_7b/bis10.yaml

Every key of the YAML file can be overridden on the command line (`--learning_rate 2e-5`). The run itself is
`bis_prm.training.script.main`, which the quickstart calls in-process.
"""

from trl import ModelConfig, TrlParser

from bis_prm.training.prm_config import PRMConfig
from bis_prm.training.script import ScriptArguments, main

if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, PRMConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
