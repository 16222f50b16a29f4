"""``python -m flatlab.studies <name or file.py> [--scale ...]``: run one study."""

import sys

from flatlab.errors import FlatlabError
from flatlab.studies import STUDIES, load, main


def _cli(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")  # an entry point may choose the backend; the library does not
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m flatlab.studies NAME [options]; NAME is one of "
              f"{', '.join(STUDIES)} or a .py file that defines STUDY; NAME --help for options")
        return 0 if argv else 2
    try:
        study = load(argv[0])
        return main(study, argv[1:])
    except FlatlabError as e:  # bad input, a run folder that cannot be used: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: finished runs are kept, the same command resumes
        print("\ninterrupted (Ctrl-C); what finished is kept and the same command resumes the "
              "rest from its last checkpoint", file=sys.stderr)
        return 130
    except OSError as e:  # a folder that cannot be written, a full disk: one line
        where = f"{e.filename} " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
