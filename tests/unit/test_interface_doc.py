"""README's gRPC interface section is generated from the configs and must match them."""
from contract import REPO_ROOT, load_all
from serving import interface_doc


def test_readme_interface_section_matches_configs():
    text = (REPO_ROOT / "README.md").read_text()
    _, _, rest = text.partition(interface_doc.BEGIN)
    section, found, _ = rest.partition(interface_doc.END)
    assert found, "README.md lacks the generated interface markers"
    assert section.strip() == interface_doc.render().strip(), \
        "README interface section is stale: run `python -m serving.interface_doc --write`"


def test_every_model_is_documented():
    rendered = interface_doc.render()
    for name in load_all():
        assert f"**`{name}`**" in rendered
