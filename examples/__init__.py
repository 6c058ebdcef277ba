"""Example release specs (package data: the demo reads demo-release.yaml from here)."""
