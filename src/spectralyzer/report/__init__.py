"""Reports people look at: ESD plots and a self-contained HTML / Markdown model report.

Needs matplotlib (the ``plots`` extra); the core analysis does not.
"""
