"""fleetloop: continual actor-learner training of VLA models on robot fleets."""
