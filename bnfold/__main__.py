"""``python -m bnfold`` runs the command-line interface."""

from bnfold.cli.main import main

if __name__ == "__main__":
    main()
