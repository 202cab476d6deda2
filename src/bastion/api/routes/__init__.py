"""Thin HTTP routes: parse, call the service, return."""
