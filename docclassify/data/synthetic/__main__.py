"""``python -m docclassify.data.synthetic OUT_DIR ...`` (see ``cli.main``)."""

from docclassify.data.synthetic.cli import main

if __name__ == "__main__":
    main()
