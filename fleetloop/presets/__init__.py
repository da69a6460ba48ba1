"""The preset configurations fleetloop ships (``--config NAME``): YAML files, no code."""
