"""Folders that index themselves: `imgrag watch PHOTOS…` and `imgrag serve --watch` both run
a `Watcher` (watcher.py), which hears of changes from the system (observe.py, watchdog),
waits for them to settle (changes.py), and then runs the pipeline the CLI runs."""
