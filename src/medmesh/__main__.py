"""``python -m medmesh`` runs the CLI (the devnet starts nodes this way)."""

from medmesh.cli.app import main

main()
