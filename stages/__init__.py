"""The stage recipes, one per DVC stage: `python stages/<name>.py` runs one, tests import `stages.<name>.main`."""
