"""Example mechaway plugin: importing ``nodes`` registers ``ScaleNode``."""
