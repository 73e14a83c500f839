"""Warehouse: landing tables, a star schema of dimensions and facts, indicators, real-time monitoring."""
