"""Switchyard's wire contracts: events, request/reply messages, subjects and codecs."""
