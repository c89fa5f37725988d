"""The commands of ``minirccn`` (:mod:`minirccn.app.cli` is the entry point): argparse lives
here and nowhere else, and nothing in the package imports this layer."""
