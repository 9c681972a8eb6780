"""Adaptive gradual stacking (`laggrow stack`): grow depth in stages, LAG choosing what to copy at
every growth, against gradual stacking, MIDAS and scratch at equal compute.

`plan.py` is the config, the stage schedule and the compute by arithmetic (no jax);
`growth_choice.py` one growth and LAG's choice; `method.py` one method of one seed, stage by stage,
resumable; `driver.py` the stacking directory: checks, the runs in order, stack.json and the report.
"""
