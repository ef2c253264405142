"""Imports every loss family module beyond the core ones so they register.

Each family lives in its own module; add a new module's import here.
"""
