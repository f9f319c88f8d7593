"""mkdocs hook: the reference pages are rendered from the code at build time (nanolab/reference.py), never kept as
copies in docs/."""

import os

from mkdocs.structure.files import File

PAGES = {"reference/keys.md": "keys_markdown", "reference/components.md": "components_markdown",
         "reference/cli.md": "cli_markdown"}


def on_files(files, config):
    os.environ["COLUMNS"] = "110"  # argparse wraps --help at the terminal's width: one width for every build
    from nanolab import reference
    from nanolab.cli import build_parser

    for path, name in PAGES.items():
        render = getattr(reference, name)
        content = render(build_parser()) if name == "cli_markdown" else render()
        files.append(File.generated(config, path, content=content))
    return files
