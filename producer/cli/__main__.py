"""``python -m producer.cli``: the ``segq`` command without its console script."""

from producer.cli import main

if __name__ == "__main__":
    main()
