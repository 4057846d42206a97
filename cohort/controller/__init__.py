"""The controller: the reconciler that converges desired state through the drivers, the amphora
cluster manager, failover and the health manager. Only the controller calls drivers."""
