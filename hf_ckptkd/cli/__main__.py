"""`python -m hf_ckptkd.cli`, which `accelerate launch -m hf_ckptkd.cli` runs: the `hf-ckptkd` command."""

from .main import console_main

console_main()
