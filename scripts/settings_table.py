"""Rewrite the settings table in README.md from segq.settings (the fields are the source)."""

from pathlib import Path

from segq.settings import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
text = README.read_text()
start = text.index("| variable | meaning | default |")
end = text.index("\n\n", start)
README.write_text(text[:start] + markdown_table() + text[end:])
print("README.md settings table rewritten")
