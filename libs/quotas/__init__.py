"""The quota kit shared by the gateway and the quota service: key layout, periods, limits, Lua scripts, estimates."""
