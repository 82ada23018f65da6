"""Tests against a real llama.cpp `llama-server` running a tiny model the tests write themselves."""
