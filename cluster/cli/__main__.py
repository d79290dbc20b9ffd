"""``python -m cluster.cli`` runs ``avatarctl`` (for machines where it is not installed)."""

from cluster.cli import main

main()
