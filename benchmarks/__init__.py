"""The benchmark harness: the gateway against the same upstream simulator called directly."""
