"""Entry point of one training rank: ``accelerate launch -m vpo_core.training --spec F``."""

from vpo_core.training.trainer import main

main()
