"""The registry's state as a fold of registry events; the registry decides with it, the gateway routes with it."""
