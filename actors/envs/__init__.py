"""Simulated environments: PettingZoo ParallelEnvs over MuJoCo."""
