"""``python -m imagewise`` runs the command line (also under ``torchrun``)."""

from imagewise.cli import main

raise SystemExit(main())
