"""MJCF models of the simulated environments: XML files, no code."""
